"""The dev stack on the engine: stand-in images, the applier, and what the tests observe."""

from __future__ import annotations

import os
import pty
import select
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from render.offline import Run

from . import images
from .applier import CONTAINER, Applied, Applier

HEALTHY_TIMEOUT_S = 600.0


def declared_containers(run: Run) -> list[dict[str, Any]]:
    return [r.plain_inputs() for r in run.of_type(CONTAINER)]


def service_ports(run: Run) -> dict[str, int]:
    return {s["service"].name: s["service"].ports[0].port for s in run.services if s["service"].ports}


def ensure_images(client: docker.DockerClient, run: Run, say: images.Say = print) -> dict[str, float]:
    return images.ensure(client, images.stand_ins_for(declared_containers(run), service_ports(run)), say)


@dataclass
class Observed:
    """Per long-running container: Docker's restart count and health, as the engine reports."""

    restarts: dict[str, int] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)


def observe(client: docker.DockerClient, names: list[str]) -> Observed:
    seen = Observed()
    for name in names:
        attrs = client.api.inspect_container(name)
        seen.restarts[name] = int(attrs.get("RestartCount", 0))
        state = attrs["State"]
        seen.health[name] = (state.get("Health") or {}).get("Status", "none") if state.get("Running") else "stopped"
        networks = attrs["NetworkSettings"].get("Networks") or {}
        seen.addresses[name] = ",".join(sorted(n.get("IPAddress", "") for n in networks.values()))
    return seen


def wait_healthy(client: docker.DockerClient, names: list[str], timeout: float = HEALTHY_TIMEOUT_S) -> float:
    """Seconds until every container with a health check is healthy (the rest running)."""
    started = time.monotonic()
    last = Observed()
    while time.monotonic() - started < timeout:
        try:
            last = observe(client, names)
        except docker.errors.NotFound:
            time.sleep(1)
            continue
        if all(h in ("healthy", "none") for h in last.health.values()):
            return time.monotonic() - started
        time.sleep(1)
    bad = {n: h for n, h in last.health.items() if h not in ("healthy", "none")}
    logs = "\n".join(f"--- {n}\n{client.api.logs(n, tail=20).decode(errors='replace')}" for n in bad)
    raise AssertionError(f"not healthy within {timeout:.0f}s: {bad}\n{logs}")


def apply(client: docker.DockerClient, run: Run) -> Applied:
    return Applier(client, run).apply()


class EngineCluster:
    """What the shared client workload needs from a cluster: user registration, run inside
    main's container with the shared secret (the proxy blocks the admin API)."""

    def __init__(self, client: docker.DockerClient, main: str, main_port: int, config: str):
        self.client = client
        self.main = main
        self.main_port = main_port
        self.config = config

    def register(self, user: str, password: str, *, admin: bool = False) -> None:
        cmd = ["register_new_matrix_user", "-u", user, "-p", password, "--admin" if admin else "--no-admin",
               "-c", self.config, f"http://localhost:{self.main_port}"]
        code, out = self.client.containers.get(self.main).exec_run(cmd)
        if code != 0:
            raise RuntimeError(f"register_new_matrix_user {user} failed ({code}):\n{out.decode(errors='replace')}")


def run_printed(command: str, docker_host: str, answers: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run a printed shell command in a terminal (it uses `docker exec -it`), typing `answers`
    at each password prompt; DOCKER_HOST points the docker CLI at the test's engine."""
    env = {**os.environ, "DOCKER_HOST": docker_host}
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvpe("/bin/sh", ["/bin/sh", "-c", command], env)
    output = b""
    pending = list(answers)
    answered = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        # One answer per prompt seen, never ahead of it: getpass flushes typed-ahead input.
        while pending and answered < output.lower().count(b"password:"):
            time.sleep(0.3)
            os.write(fd, (pending.pop(0) + "\n").encode())
            answered += 1
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def docker_cli(docker_host: str, *args: str) -> str:
    done = subprocess.run(["docker", *args], env={**os.environ, "DOCKER_HOST": docker_host},
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"docker {shlex.join(args)}: {done.stderr}")
    return done.stdout
