"""The dev stack's checks and messages, for scripts/up-dev and scripts/down-dev.

  preflight     before anything is created, in turn: the Docker engine of each of the stack's
                hosts on this machine (reachable, its version, the user's permission on its
                socket), the ports the program publishes (free on their bind address) and the
                secrets passphrase. One line per failure, saying what to do; exit 1 when any fails.
  summary       after `pulumi up`: waits for the server to answer, runs the client check, then
                prints where the server is, the first admin's command (from `pulumi stack
                output`), the client check and its result, and how to stop and tear down.
  stop-targets  reads `pulumi stack export` on stdin and prints the URNs scripts/down-dev removes
                when the data stays: the containers (volumes and generated secrets stay).

The checks read their facts from the program itself, run under Pulumi's mocks as `python -m
render` runs it: the Docker hosts, their bind addresses and every published port. Only the
preflight needs the program's packages; the rest is standard library.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The oldest engine the dev stack is proved on: tests/integration/test_docker_engine.py runs it
# on Debian 12's docker.io.
MIN_ENGINE = (20, 10)
CONTAINER = "docker:index/container:Container"
DOCKER_PROVIDER = "pulumi:providers:docker"
# Synapse creates its database schema on the first start, after `pulumi up` has returned.
SERVER_WAIT_S = 300.0
PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: str


@dataclass(frozen=True)
class Published:
    """A port a container publishes on its host."""

    container: str
    address: str
    port: int
    protocol: str
    engine: str  # the Docker URL of the host

    def __str__(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Plan:
    """What the program declares for the stack, as far as the pre-flight needs it."""

    stack: str
    engines: list[str]  # Docker URLs of the stack's hosts on this machine
    published: list[Published]
    port_keys: dict[int, str]  # published port -> the config key that sets it
    resources: int
    containers: int
    images: int


def is_local_engine(url: str) -> bool:
    return url.startswith("unix://")


def plan(stack: str) -> Plan:
    """The program's declarations for Pulumi.<stack>.yaml, under Pulumi's mocks."""
    from render import offline
    from render.__main__ import stack_config

    raw, secret_keys = stack_config(stack, ROOT)
    run = offline.run(raw, stack=stack, secret_keys=secret_keys)
    # A resource names its provider as "<provider URN>::<provider id>".
    hosts = {r.urn: str(r.plain_inputs().get("host", "")) for r in run.of_type(DOCKER_PROVIDER)}
    published = []
    for r in run.of_type(CONTAINER):
        inputs = r.plain_inputs()
        engine = hosts.get(r.provider.rsplit("::", 1)[0], "")
        for p in inputs.get("ports") or []:
            published.append(Published(str(inputs["name"]), str(p.get("ip") or "0.0.0.0"),
                                       int(p.get("external") or p["internal"]), str(p.get("protocol") or "tcp"),
                                       engine))
    target = run.cfg.target
    port_keys = {}
    for key in ("http_port", "https_port"):
        if isinstance(getattr(target, key, None), int):
            port_keys[getattr(target, key)] = f"matrix-stack:target.{key}"
    return Plan(stack=stack, engines=sorted({url for url in hosts.values() if is_local_engine(url)}),
                published=published, port_keys=port_keys, resources=len(run.resources),
                containers=len(run.of_type(CONTAINER)),
                images=len(run.of_type("docker:index/remoteImage:RemoteImage")))


# ---------------------------------------------------------------- the Docker engine


def docker_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The docker CLI against the engine at `url`, whatever context the user has selected."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_HOST")}
    return subprocess.run(["docker", "--host", url, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def _version(text: str) -> tuple[int, ...]:
    """(major, minor) of a version such as 20.10.24+dfsg1 or 28.2.2."""
    match = re.match(r"v?(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else ()


def check_docker(url: str) -> Verdict:
    """The engine at `url`: reachable through the docker CLI, recent enough, and usable by this
    user (the CLI's own answer; for a local socket, also the socket's permissions)."""
    if shutil.which("docker") is None:
        return Verdict(False, "the docker CLI is not installed: install Docker Engine "
                              "(https://docs.docker.com/engine/install/, or Debian's docker.io), start it and rerun")
    path = url.removeprefix("unix://") if is_local_engine(url) else ""
    try:
        answer = docker_cli(url, "version", "--format", "{{json .}}")
    except subprocess.TimeoutExpired:
        return Verdict(False, f"the Docker engine at {url} did not answer within 60s: restart it "
                              "(sudo systemctl restart docker) and rerun")
    if answer.returncode != 0:
        said = " ".join(answer.stderr.split())
        denied = "permission denied" in said.lower() or (
            bool(path) and os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK))
        if denied:
            return Verdict(False, f"you may not use the Docker engine's socket {path or url}: add yourself to the "
                                  "docker group (sudo usermod -aG docker $USER), log in again and rerun")
        if "cannot connect" in said.lower() or "daemon running" in said.lower() or (path and not os.path.exists(path)):
            return Verdict(False, f"the Docker engine at {url} is not running: start it "
                                  "(sudo systemctl start docker) and rerun")
        return Verdict(False, f"the Docker engine at {url} did not answer `docker version` ({said}): "
                              "check that it runs and rerun")
    try:
        version = str((json.loads(answer.stdout).get("Server") or {}).get("Version") or "")
    except ValueError:
        version = ""
    if not version:
        return Verdict(False, f"the Docker engine at {url} did not report its version: check that it runs and rerun")
    if _version(version) < MIN_ENGINE:
        return Verdict(False, f"Docker Engine {version} at {url} is older than "
                              f"{'.'.join(map(str, MIN_ENGINE))}, the oldest the dev stack is tested on: upgrade it")
    return Verdict(True, f"Docker Engine {version} at {url}")


# ---------------------------------------------------------------- published ports


# `docker ps` lists a published port as 127.0.0.1:8080->8080/tcp, and consecutive ones as a
# range, 0.0.0.0:50000-50100->50000-50100/udp.
_PUBLISHED = re.compile(r"^(?P<ip>.*):(?P<first>\d+)(?:-(?P<last>\d+))?->[\d-]+/(?P<proto>\w+)$")


def ports_held_by_containers(url: str) -> dict[tuple[str, int, str], str]:
    """(address, port, protocol) -> the container publishing it, on the engine at `url`."""
    answer = docker_cli(url, "ps", "--format", "{{.Names}}\t{{.Ports}}")
    held: dict[tuple[str, int, str], str] = {}
    for line in answer.stdout.splitlines() if answer.returncode == 0 else ():
        name, _, ports = line.partition("\t")
        for item in ports.split(","):
            match = _PUBLISHED.match(item.strip())
            if match:
                address = match["ip"].strip("[]") or "0.0.0.0"
                for port in range(int(match["first"]), int(match["last"] or match["first"]) + 1):
                    held[(address, port, match["proto"])] = name
    return held


def _holder(p: Published, held: Mapping[tuple[str, int, str], str]) -> str | None:
    for address in (p.address, "0.0.0.0", "::"):
        if (address, p.port, p.protocol) in held:
            return held[(address, p.port, p.protocol)]
    return None


def bind_error(address: str, port: int, protocol: str) -> int | None:
    """The errno binding (address, port) gives, or None when it is free. SO_REUSEADDR: a port
    only lingering in TIME_WAIT is free for a new listener."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc.errno
    return None


def check_ports(p: Plan, engines_up: Iterable[str]) -> list[Verdict]:
    """Each port the stack publishes on this machine is free on its bind address, or published
    already by the stack's own container of that name (a later run of up-dev)."""
    up = set(engines_up)
    held = {url: ports_held_by_containers(url) for url in p.engines if url in up}
    verdicts = []
    for pub in p.published:
        if pub.engine not in p.engines:
            continue  # a host elsewhere: its ports are not this machine's
        holder = _holder(pub, held.get(pub.engine, {}))
        if holder == pub.container:
            verdicts.append(Verdict(True, f"{pub} published by the stack's own {holder}, already running"))
            continue
        key = p.port_keys.get(pub.port, f"its key in Pulumi.{p.stack}.yaml")
        change = f"or choose another port ({key})"
        if holder is not None:
            verdicts.append(Verdict(False, f"{pub}, which the {p.stack} stack publishes for {pub.container}, is "
                                           f"taken by the container {holder}: stop it, {change}"))
            continue
        error = bind_error(pub.address, pub.port, pub.protocol)
        if error == errno.EADDRINUSE:
            verdicts.append(Verdict(False, f"{pub}, which the {p.stack} stack publishes for {pub.container}, is "
                                           f"already in use: stop what listens there (ss -ltnup 'sport = :{pub.port}' "
                                           f"names it), {change}"))
        elif error == errno.EADDRNOTAVAIL:
            verdicts.append(Verdict(False, f"{pub.address}, where the {p.stack} stack publishes {pub.container}'s "
                                           f"port {pub.port}, is no address of this machine: set the host's "
                                           f"bind_address in Pulumi.{p.stack}.yaml"))
        else:
            # EACCES for a privileged port: Docker binds it as root, so only a listener matters.
            verdicts.append(Verdict(True, f"{pub} free ({pub.container})"))
    return verdicts


# ---------------------------------------------------------------- the passphrase


def check_passphrase(environ: Mapping[str, str]) -> Verdict:
    if environ.get("PULUMI_CONFIG_PASSPHRASE"):
        return Verdict(True, "PULUMI_CONFIG_PASSPHRASE set")
    path = environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if path:
        if os.access(path, os.R_OK):
            return Verdict(True, f"PULUMI_CONFIG_PASSPHRASE_FILE {path}")
        return Verdict(False, f"PULUMI_CONFIG_PASSPHRASE_FILE names {path}, which cannot be read: fix the path and rerun")
    said = "is empty" if "PULUMI_CONFIG_PASSPHRASE" in environ else "is not set"
    return Verdict(False, f"PULUMI_CONFIG_PASSPHRASE {said}: choose a passphrase for the dev stack's secrets, keep it "
                          "for every later run, and rerun as PULUMI_CONFIG_PASSPHRASE=... bash scripts/up-dev")


def preflight(stack: str, environ: Mapping[str, str]) -> int:
    p = plan(stack)
    verdicts: list[Verdict] = []
    engines_up = []
    for url in p.engines:
        verdict = check_docker(url)
        verdicts.append(verdict)
        if verdict.ok:
            engines_up.append(url)
    verdicts += check_ports(p, engines_up)
    verdicts.append(check_passphrase(environ))
    for v in verdicts:
        print(f"  ok    {v.line}" if v.ok else f"  FAIL  {v.line}")
    failed = [v for v in verdicts if not v.ok]
    if failed:
        print(f"pre-flight: {len(failed)} check(s) failed; nothing was created", file=sys.stderr)
        return 1
    print(f"pre-flight passed. The {stack} stack declares {p.resources} resources: {p.images} images to "
          f"pull on the first run, {p.containers} containers.")
    return 0


# ---------------------------------------------------------------- after `pulumi up`


def stack_outputs(stack: str) -> dict[str, Any]:
    answer = subprocess.run(["pulumi", "stack", "output", "--stack", stack, "--json"], capture_output=True,
                            text=True, check=False)
    if answer.returncode != 0:
        raise SystemExit(f"`pulumi stack output --stack {stack} --json` failed: {answer.stderr.strip()}")
    outputs: dict[str, Any] = json.loads(answer.stdout)
    return outputs


def server_url(outputs: Mapping[str, Any]) -> str:
    """The server name's URL (where clients look for .well-known): the homeserver's scheme and
    port on the server name."""
    homeserver = urllib.parse.urlsplit(str(outputs["homeserver_url"]))
    port = f":{homeserver.port}" if homeserver.port else ""
    return f"{homeserver.scheme}://{outputs['server_name']}{port}"


def wait_for_server(url: str, timeout: float = SERVER_WAIT_S,
                    say: Callable[[str], None] = print) -> bool:
    """Until /_matrix/client/versions answers 200, saying every few seconds how long it has been."""
    started = last = time.monotonic()
    say(f"waiting for {url} to answer (on the first start Synapse creates its database)")
    while True:
        try:
            with urllib.request.urlopen(url + "/_matrix/client/versions", timeout=5) as response:
                if response.status == 200:
                    say(f"{url} answers, {time.monotonic() - started:.0f}s after `pulumi up` ended")
                    return True
        except (urllib.error.URLError, OSError):
            pass
        now = time.monotonic()
        if now - started > timeout:
            return False
        if now - last >= PROGRESS_EVERY_S:
            say(f"  still waiting for {url}: {now - started:.0f}s of at most {timeout:.0f}s")
            last = now
        time.sleep(1)


def summary(stack: str) -> int:
    outputs = stack_outputs(stack)
    url = server_url(outputs)
    check = ["-m", "render.check_clients", url]
    result: list[str]
    code = 1
    if wait_for_server(url):
        answer = subprocess.run([sys.executable, *check], cwd=ROOT, capture_output=True, text=True, check=False)
        result = (answer.stdout + answer.stderr).splitlines()
        code = answer.returncode
    else:
        result = [f"{url} did not answer within {SERVER_WAIT_S:.0f}s: see `docker logs synapse-main`"]
    lines = [
        "",
        f"The {stack} stack is up.",
        f"  server       {url}  (server name {outputs['server_name']})",
    ]
    if outputs.get("element_web_url"):
        lines.append(f"  Element Web  {outputs['element_web_url']}")
    admin = outputs.get("mas_create_admin_command") or outputs.get("create_admin_command")
    lines += [
        f"  first admin  {admin}",
        "               (asks for the new admin's password)",
        f"  check        python3 -m render.check_clients {url} --user admin",
        "               (logs in with $MATRIX_PASSWORD, else asks). Logged out, just now:",
        *[f"                 {line}" for line in result],
        "  stop         bash scripts/down-dev   (removes the containers; data and secrets stay for the next up-dev)",
        "  tear down    bash scripts/down-dev --delete-data   (destroys everything, the database and media too)",
        f"  state        {ROOT / '.pulumi-state'}  (this checkout's file backend)",
    ]
    print("\n".join(lines))
    if code != 0:
        print(f"the {stack} stack is up, but the client check failed (above)", file=sys.stderr)
    return code


def stop_targets(export: Mapping[str, Any]) -> list[str]:
    """The containers of a `pulumi stack export`: what goes when the data stays. Volumes stay,
    and so do the generated secrets, without which the kept database could not be opened."""
    resources = (export.get("deployment") or {}).get("resources") or []
    return [str(r["urn"]) for r in resources if r.get("type") == CONTAINER]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev_stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["preflight", "summary", "stop-targets"])
    parser.add_argument("--stack", default="dev")
    args = parser.parse_args(argv)
    if args.command == "preflight":
        return preflight(args.stack, os.environ)
    if args.command == "summary":
        return summary(args.stack)
    print("\n".join(stop_targets(json.load(sys.stdin))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
