"""Debian's Docker engine, started for the test on its own socket with its data and exec roots
under a temporary directory, so it never touches an engine the machine already runs.

Its network setup stays out of the host's way: no default bridge, no iptables rules (published
ports go through docker-proxy), user networks from a private address pool.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import docker

START_TIMEOUT_S = 90.0
ADDRESS_POOL = "base=10.213.0.0/16,size=24"


class EngineError(RuntimeError):
    pass


class Engine:
    def __init__(self, root: Path):
        self.root = root
        self.socket = root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "--host", self.url,
            "--bridge", "none",
            "--iptables=false",
            "--ip6tables=false",
            "--default-address-pool", ADDRESS_POOL,
            "--log-level", "warn",
        ]

    def start(self) -> docker.DockerClient:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as exc:
            raise EngineError(f"dockerd could not start: {exc}") from exc
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    client = self.client()
                    client.ping()
                    return client
                except Exception:  # noqa: BLE001 - not answering yet
                    pass
            time.sleep(0.3)
        raise EngineError(f"dockerd did not answer within {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")

    def client(self, timeout: int = 300) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def stop(self) -> None:
        """A clean shutdown, as on a host reboot: dockerd stops its containers first."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None
        # Network namespaces the engine mounted outlive it; unmount them so the directory can go.
        netns = self.root / "exec" / "netns"
        for path in netns.iterdir() if netns.is_dir() else ():
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
