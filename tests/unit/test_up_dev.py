"""scripts/up-dev and scripts/down-dev, run with stand-ins for pulumi, docker and curl on PATH
(tests/unit/stand_ins/): small programs that record their arguments and answer as the real CLIs
do for the cases here. They deploy nothing. What these tests observe is the scripts' own
decisions: which backend, which checks, what runs when a check fails, what the end prints.

Each test runs the scripts in a copy of the program's files (the dev stack's HTTP port moved to
a free one), with the test session's virtualenv as its .venv and a HOME of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest

from render import offline
from render.__main__ import stack_config

from ..conftest import ROOT

STAND_INS = Path(__file__).parent / "stand_ins"
COPIED = ["__main__.py", "stack.py", "Pulumi.yaml", "Pulumi.dev.yaml", "requirements.txt",
          "config", "components", "render", "scripts"]
PIN = re.search(r"^pulumi==([0-9.]+)", (ROOT / "requirements.txt").read_text(), re.M)[1]  # type: ignore[index]
SOCKET = "/var/run/docker.sock"
# The user's own login, which the scripts must leave as it is.
CLOUD_LOGIN = {"current": "https://api.pulumi.com", "accessTokens": {"https://api.pulumi.com": "pul-users-own"}}
CONTAINER = "docker:index/container:Container"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DevProgram:
    """What the real program declares for the dev stack on `port`: the stack outputs as
    `pulumi stack output --json` prints them, and the resources a `pulumi stack export` lists."""

    port: int
    outputs: dict[str, Any]
    resources: list[dict[str, str]]


@pytest.fixture(scope="module")
def dev_program() -> DevProgram:
    port = free_port()
    raw = stack_config("dev")[0]
    raw["target"] = {**raw["target"], "http_port": port}
    run = offline.run(raw, stack="dev")
    outputs = {k: "[secret]" if isinstance(v, pulumi.Output) else v for k, v in run.deployment.outputs.items()}
    resources = [{"urn": r.urn, "type": r.type} for r in run.resources]
    return DevProgram(port, outputs, resources)


def _install(source: Path, target: Path) -> None:
    target.write_text(f"#!{sys.executable}\n{source.read_text()}")
    target.chmod(0o755)


class Checkout:
    def __init__(self, base: Path, program: DevProgram):
        self.root = base / "checkout"
        self.root.mkdir()
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, self.root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, self.root / name)
        (self.root / ".venv").symlink_to(sys.prefix)
        dev = (self.root / "Pulumi.dev.yaml").read_text()
        assert "http_port: 8080\n" in dev
        (self.root / "Pulumi.dev.yaml").write_text(dev.replace("http_port: 8080\n", f"http_port: {program.port}\n"))
        self.port = program.port
        self.home = base / "home"
        (self.home / ".pulumi").mkdir(parents=True)
        self.credentials = self.home / ".pulumi" / "credentials.json"
        self.credentials.write_text(json.dumps(CLOUD_LOGIN))
        self.bin = base / "bin"
        self.bin.mkdir()
        _install(STAND_INS / "pulumi_cli.py", self.bin / "pulumi")
        (self.bin / "pulumi-version").write_text(PIN)
        _install(STAND_INS / "docker_cli.py", self.bin / "docker")
        _install(STAND_INS / "curl_cli.py", self.bin / "curl")
        (self.bin / "python3").symlink_to(sys.executable)
        # What the stand-in installer copies into the install root.
        self.released = base / "released-pulumi"
        _install(STAND_INS / "pulumi_cli.py", self.released)
        self.log = base / "calls.jsonl"
        self.log.touch()
        self.installer_args = base / "installer-args"
        self.server_pid = base / "server.pid"
        (base / "outputs.json").write_text(json.dumps(program.outputs))
        (base / "export.json").write_text(json.dumps({"version": 3, "deployment": {"resources": program.resources}}))
        self.env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PULUMI_CONFIG_PASSPHRASE": "a passphrase",
            "STANDIN_LOG": str(self.log),
            "STANDIN_OUTPUTS": str(base / "outputs.json"),
            "STANDIN_EXPORT": str(base / "export.json"),
            "STANDIN_PULUMI": str(self.released),
            "STANDIN_INSTALLER_ARGS": str(self.installer_args),
            "STANDIN_SERVE_PID": str(self.server_pid),
            # A test where the deployment should go ahead says so: elsewhere an `up` the script
            # should not have reached fails at once, instead of waiting for a server.
            "STANDIN_UP_FAILS": "1",
        }

    @property
    def state(self) -> Path:
        return self.root / ".pulumi-state"

    @property
    def backend(self) -> str:
        return f"file://{self.state}"

    def run(self, script: str, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        merged: dict[str, str | None] = {**self.env, **env}
        environ = {k: v for k, v in merged.items() if v is not None}
        return subprocess.run(["bash", str(self.root / "scripts" / script), *args], env=environ, cwd=self.home,
                              capture_output=True, text=True, timeout=300)

    def calls(self, program: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in lines if c["program"] == program]

    def pulumi_commands(self) -> list[list[str]]:
        return [c["argv"] for c in self.calls("pulumi")]

    def stop_server(self) -> None:
        if not self.server_pid.exists():
            return
        pid = int(self.server_pid.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)  # reaps it when this process started it
                except ChildProcessError:
                    pass
                os.killpg(pid, 0)  # ProcessLookupError once it is gone
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        self.server_pid.unlink()


@pytest.fixture
def checkout(tmp_path: Path, dev_program: DevProgram) -> Iterator[Checkout]:
    c = Checkout(tmp_path, dev_program)
    try:
        yield c
    finally:
        c.stop_server()


def _output(run: subprocess.CompletedProcess[str]) -> str:
    return run.stdout + run.stderr


def _created_nothing(c: Checkout) -> None:
    assert [a for a in c.pulumi_commands() if a != ["version"]] == []
    assert not c.state.exists()
    assert json.loads(c.credentials.read_text()) == CLOUD_LOGIN


# ---------------------------------------------------------------- a successful run


@pytest.fixture(scope="module")
def succeeded(tmp_path_factory: pytest.TempPathFactory,
              dev_program: DevProgram) -> tuple[Checkout, subprocess.CompletedProcess[str]]:
    c = Checkout(tmp_path_factory.mktemp("up-dev"), dev_program)
    try:
        # `pulumi up` starts the proxy: here, a stand-in answering as the logged-out server does.
        run = c.run("up-dev", STANDIN_UP_FAILS=None, STANDIN_SERVE=json.dumps([sys.executable, str(STAND_INS / "homeserver.py"), str(c.port)]))
    finally:
        c.stop_server()  # the port is free again for the other tests
    return c, run


def test_up_dev_never_touches_the_users_pulumi_login(succeeded: tuple[Checkout, subprocess.CompletedProcess[str]]) -> None:
    c, run = succeeded
    assert run.returncode == 0, _output(run)
    commands = c.pulumi_commands()
    assert [a for a in commands if a[:1] in (["login"], ["logout"])] == []
    assert {call["backend"] for call in c.calls("pulumi")} == {c.backend}
    assert json.loads(c.credentials.read_text()) == CLOUD_LOGIN
    assert (c.state / ".pulumi" / "stacks" / "matrix-stack" / "dev.json").exists()
    assert ".pulumi-state/" in (ROOT / ".gitignore").read_text().splitlines()


def test_up_dev_creates_the_stack_only_after_the_preflight(succeeded: tuple[Checkout, subprocess.CompletedProcess[str]]) -> None:
    c, run = succeeded
    assert run.returncode == 0, _output(run)
    assert c.pulumi_commands() == [
        ["version"],
        ["stack", "select", "dev", "--create", "--secrets-provider", "passphrase", "--non-interactive"],
        ["up", "--stack", "dev", "--yes"],
        ["stack", "output", "--stack", "dev", "--json"],
    ]
    out = run.stdout
    assert out.index(f"ok    127.0.0.1:{c.port}/tcp free (synapse-proxy)") < out.index("== 4/5 pulumi up")
    assert "ok    Docker Engine 20.10.24+dfsg1 at unix:///var/run/docker.sock" in out
    assert "ok    PULUMI_CONFIG_PASSPHRASE set" in out
    declared = re.search(r"pre-flight passed\. The dev stack declares (\d+) resources: (\d+) images to pull on the "
                         r"first run, (\d+) containers\.", out)
    assert declared is not None, out
    # The program's own count under Pulumi's mocks: the containers and images the render lists.
    raw, secret_keys = stack_config("dev", ROOT)
    rendered = offline.run(raw, stack="dev", secret_keys=secret_keys)
    assert int(declared.group(1)) == len(rendered.resources)
    assert int(declared.group(3)) == len(rendered.of_type("docker:index/container:Container"))
    assert int(declared.group(2)) == len(rendered.of_type("docker:index/remoteImage:RemoteImage"))
    assert [c_["argv"][:3] for c_ in c.calls("docker")] == [
        ["--host", "unix:///var/run/docker.sock", "version"], ["--host", "unix:///var/run/docker.sock", "ps"]]


def test_up_dev_ends_with_the_server_the_first_admin_and_the_client_check(
        succeeded: tuple[Checkout, subprocess.CompletedProcess[str]], dev_program: DevProgram) -> None:
    c, run = succeeded
    assert run.returncode == 0, _output(run)
    url = f"http://localhost:{c.port}"
    end = run.stdout[run.stdout.index("The dev stack is up."):]
    assert f"  server       {url}  (server name localhost)" in end
    assert f"  first admin  {dev_program.outputs['create_admin_command']}\n" in end
    assert dev_program.outputs["create_admin_command"].startswith("docker exec -it synapse-main register_new_matrix_user")
    assert f"  check        python3 -m render.check_clients {url} --user admin\n" in end
    for verdict in ("PASS well-known:", "PASS sliding-sync:", "SKIP sliding-sync-request:", "PASS login:",
                    "PASS rtc-transports:", "SKIP media:", "4 passed, 0 failed, 2 skipped"):
        assert verdict in end, end
    assert "  stop         bash scripts/down-dev " in end
    assert "  tear down    bash scripts/down-dev --delete-data " in end
    assert f"  state        {c.state}" in end


# ---------------------------------------------------------------- pre-flight failures


DOCKER_STOPPED = ("the Docker engine at unix:///var/run/docker.sock is not running: start it "
                  "(sudo systemctl start docker) and rerun")
FAILURES: dict[str, tuple[dict[str, str | None], str]] = {
    "docker stopped": ({"STANDIN_DOCKER": "stopped"}, DOCKER_STOPPED),
    "docker refuses the user": ({"STANDIN_DOCKER": "denied"},
                                f"you may not use the Docker engine's socket {SOCKET}: add yourself to the docker "
                                "group (sudo usermod -aG docker $USER), log in again and rerun"),
    "docker too old": ({"STANDIN_DOCKER_VERSION": "19.03.15"},
                       "Docker Engine 19.03.15 at unix:///var/run/docker.sock is older than 20.10, the oldest the "
                       "dev stack is tested on: upgrade it"),
    "no passphrase": ({"PULUMI_CONFIG_PASSPHRASE": None},
                      "PULUMI_CONFIG_PASSPHRASE is not set: choose a passphrase for the dev stack's secrets, keep it "
                      "for every later run, and rerun as PULUMI_CONFIG_PASSPHRASE=... bash scripts/up-dev"),
    "empty passphrase": ({"PULUMI_CONFIG_PASSPHRASE": ""}, "PULUMI_CONFIG_PASSPHRASE is empty: choose a passphrase"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_preflight_failure_gives_its_line_and_creates_nothing(checkout: Checkout, case: str) -> None:
    env, line = FAILURES[case]
    run = checkout.run("up-dev", **env)
    assert run.returncode == 1, _output(run)
    failed = [x for x in run.stdout.splitlines() if x.startswith("  FAIL  ")]
    assert len(failed) == 1 and failed[0].startswith(f"  FAIL  {line}"), _output(run)
    assert "pre-flight: 1 check(s) failed; nothing was created" in run.stderr
    _created_nothing(checkout)


def test_a_taken_port_gives_its_line_and_creates_nothing(checkout: Checkout) -> None:
    with socket.socket() as listener:
        # As any server does: connections to the port just before may linger in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", checkout.port))
        listener.listen()
        run = checkout.run("up-dev")
    assert run.returncode == 1, _output(run)
    assert (f"  FAIL  127.0.0.1:{checkout.port}/tcp, which the dev stack publishes for synapse-proxy, is already in "
            f"use: stop what listens there (ss -ltnup 'sport = :{checkout.port}' names it), or choose another port "
            "(matrix-stack:target.http_port)\n") in run.stdout
    _created_nothing(checkout)


@pytest.mark.parametrize("listed", ["127.0.0.1:{port}->80/tcp", "0.0.0.0:{below}-{above}->7000-7002/tcp, :::{below}-{above}->7000-7002/tcp"])
def test_a_port_taken_by_another_container_names_it(checkout: Checkout, listed: str) -> None:
    """As `docker ps` lists them: one port, or a range of them (on every address)."""
    ports = listed.format(port=checkout.port, below=checkout.port - 1, above=checkout.port + 1)
    run = checkout.run("up-dev", STANDIN_DOCKER_PS=f"some-web\t{ports}")
    assert run.returncode == 1, _output(run)
    assert (f"  FAIL  127.0.0.1:{checkout.port}/tcp, which the dev stack publishes for synapse-proxy, is taken by "
            "the container some-web: stop it, or choose another port (matrix-stack:target.http_port)\n") in run.stdout
    _created_nothing(checkout)


def test_a_later_run_accepts_the_port_its_own_proxy_holds(checkout: Checkout) -> None:
    """On a second up-dev the stack's proxy already publishes the port: not a failure."""
    server = subprocess.Popen([sys.executable, str(STAND_INS / "homeserver.py"), str(checkout.port)],
                              start_new_session=True)
    checkout.server_pid.write_text(str(server.pid))
    run = checkout.run("up-dev", STANDIN_UP_FAILS=None, STANDIN_DOCKER_PS=f"synapse-proxy\t127.0.0.1:{checkout.port}->8080/tcp\n"
                                                   "synapse-main\t")
    assert run.returncode == 0, _output(run)
    assert (f"  ok    127.0.0.1:{checkout.port}/tcp published by the stack's own synapse-proxy, already running"
            in run.stdout)
    assert "The dev stack is up." in run.stdout


# ---------------------------------------------------------------- the Pulumi CLI


def test_no_network_for_the_installer_gives_one_line(checkout: Checkout) -> None:
    (checkout.bin / "pulumi").unlink()
    run = checkout.run("up-dev", STANDIN_CURL="offline")
    assert run.returncode == 1, _output(run)
    assert run.stderr.splitlines()[-1] == (
        "up-dev: could not download Pulumi's installer from https://get.pulumi.com (curl: (6) Could not resolve "
        "host: get.pulumi.com): check the network and the proxy settings (HTTPS_PROXY), or install the Pulumi CLI "
        f"v{PIN} yourself (https://www.pulumi.com/docs/iac/download-install/), and rerun")
    assert not (checkout.root / ".pulumi-cli").exists()
    _created_nothing(checkout)


@pytest.mark.parametrize("found", ["missing", "3.100.0"])
def test_a_missing_or_old_cli_is_replaced_by_the_pinned_release_in_the_checkout(checkout: Checkout, found: str) -> None:
    if found == "missing":
        (checkout.bin / "pulumi").unlink()
    else:
        (checkout.bin / "pulumi-version").write_text(found)
    run = checkout.run("up-dev", STANDIN_DOCKER="stopped")
    local = checkout.root / ".pulumi-cli"
    assert checkout.installer_args.read_text().split() == ["--version", PIN, "--install-root", str(local),
                                                           "--no-edit-path"]
    assert [c["argv"] for c in checkout.calls("curl")] == [
        ["-fsSL", "--proto", "=https", "--retry", "2", "-o", checkout.calls("curl")[0]["argv"][-2],
         "https://get.pulumi.com"]]
    assert f"up-dev: Pulumi CLI v{PIN} ({local}/bin/pulumi)" in run.stdout
    # Everything after the installation is the pinned CLI's; the user's own stays as it was.
    after = [c["path"] for c in checkout.calls("pulumi")][1 if found != "missing" else 0:]
    assert after and set(after) == {str(local / "bin" / "pulumi")}
    if found != "missing":
        assert (checkout.bin / "pulumi-version").read_text() == found
    assert run.returncode == 1 and f"  FAIL  {DOCKER_STOPPED}" in run.stdout
    _created_nothing(checkout)


# ---------------------------------------------------------------- scripts/down-dev


@pytest.fixture
def deployed(checkout: Checkout) -> Checkout:
    """The dev stack's state as `pulumi up` left it (through the stand-in)."""
    env = {**checkout.env, "PULUMI_BACKEND_URL": checkout.backend}
    del env["STANDIN_UP_FAILS"]
    for args in (["stack", "select", "dev", "--create"], ["up", "--stack", "dev", "--yes"]):
        subprocess.run([str(checkout.bin / "pulumi"), *args], env=env, check=True, capture_output=True)
    checkout.log.write_text("")
    return checkout


def _state(c: Checkout) -> list[dict[str, str]]:
    data = json.loads((c.state / ".pulumi" / "stacks" / "matrix-stack" / "dev.json").read_text())
    return list(data["deployment"]["resources"])


def test_down_dev_removes_the_containers_and_keeps_the_data(deployed: Checkout, dev_program: DevProgram) -> None:
    run = deployed.run("down-dev")
    assert run.returncode == 0, _output(run)
    destroys = [a for a in deployed.pulumi_commands() if a[:1] == ["destroy"]]
    assert len(destroys) == 1
    targets = {destroys[0][i + 1] for i, a in enumerate(destroys[0]) if a == "--target"}
    containers = {r["urn"] for r in dev_program.resources if r["type"] == CONTAINER}
    # With ntfy's two volume owners (it runs as nobody) and ten file holders (a service with files
    # reads them from its holder's volumes, which go with it: nothing but copies of rendered files),
    # PostgreSQL's file holder, its pooler and the pooler's file holder, and the proxy's live
    # files: their holder, the owner of its live volume and their publisher.
    assert targets == containers and len(containers) == 30
    kept = {r["type"] for r in _state(deployed)}
    assert {"docker:index/volume:Volume", "random:index/randomPassword:RandomPassword"} <= kept
    assert CONTAINER not in kept
    assert "down-dev: stopped: 30 containers removed; the volumes and the stack's secrets stay" in run.stdout
    assert {call["backend"] for call in deployed.calls("pulumi")} == {deployed.backend}
    assert [a for a in deployed.pulumi_commands() if a[:1] == ["login"]] == []


def test_down_dev_deletes_the_data_only_when_asked(deployed: Checkout) -> None:
    run = deployed.run("down-dev", "--delete-data")
    assert run.returncode == 0, _output(run)
    destroys = [a for a in deployed.pulumi_commands() if a[:1] == ["destroy"]]
    assert destroys == [["destroy", "--stack", "dev", "--yes"]]
    assert _state(deployed) == []
    assert json.loads(deployed.credentials.read_text()) == CLOUD_LOGIN


def test_down_dev_without_a_stack_destroys_nothing(checkout: Checkout) -> None:
    run = checkout.run("down-dev")
    assert run.returncode == 0, _output(run)
    assert f"down-dev: no dev stack in {checkout.state}: nothing to stop" in run.stdout
    assert [a for a in checkout.pulumi_commands() if a[:1] == ["destroy"]] == []
