"""Debian's real Alertmanager from the rendered alertmanager.yml, and a recording endpoint at
ntfy's address. ntfy is in no registry here: the endpoint only records what Alertmanager sends it.

Only the test render shortens the timings: group_wait of GROUP_WAIT_SECONDS, and Prometheus
resends firing alerts every second (PROMETHEUS_FLAGS)."""

from __future__ import annotations

import http.server
import shutil
import socketserver
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.monitoring import render as mon
from components.ntfy import render as ntfy_render
from config.model import StackConfig

ALERTMANAGER = "prometheus-alertmanager"
NTFY_PORT = ntfy_render.PORT
PASSWORD = "alerts-publisher-stand-in-password"
GROUP_WAIT_SECONDS = 1
# Prometheus sends a firing alert again every second (its default is a minute).
PROMETHEUS_FLAGS = ("--rules.alert.resend-delay=1s",)


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def serve(port: int, handler: type[http.server.BaseHTTPRequestHandler],
          address: str = "127.0.0.1") -> socketserver.TCPServer:
    server = http.server.ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic() when it arrived
    path: str
    authorization: str
    body: bytes


class NtfyRecorder:
    """A recording endpoint at ntfy's address: every POST it receives, answered 200."""

    def __init__(self, address: str = "127.0.0.1", port: int = NTFY_PORT) -> None:
        self.base = f"http://{address}:{port}"
        self.received: list[Delivery] = []
        received = self.received

        class Handler(Quiet):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(Delivery(time.monotonic(), self.path, self.headers.get("Authorization", ""), body))
                self.send_response(200)
                self.end_headers()

        self.server = serve(port, Handler, address)

    def first(self, alertname: str, text: str = "") -> Delivery | None:
        """The first delivery of `alertname` whose body mentions `text`."""
        return next((d for d in self.received if alertname.encode() in d.body and text.encode() in d.body), None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait(what: str, check: Any, timeout: float = 90) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def alertmanager(cfg: StackConfig, base: Path, ntfy_base: str,
                 address: str = "127.0.0.1") -> Iterator[subprocess.Popen[bytes]]:
    """Alertmanager at its port on `address` from the rendered alertmanager.yml (group_wait
    shortened by the renderer's parameter), delivering to `ntfy_base` with the publisher's
    password from a file."""
    secrets = base / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "ntfy_password").write_text(PASSWORD)
    text = mon.alertmanager_yml(cfg, ntfy_base, group_wait_seconds=GROUP_WAIT_SECONDS)
    (base / "alertmanager.yml").write_text(text.replace(mon.NTFY_PASSWORD_FILE, str(secrets / "ntfy_password")))
    proc = subprocess.Popen([shutil.which(ALERTMANAGER) or ALERTMANAGER, f"--config.file={base / 'alertmanager.yml'}",
                             f"--storage.path={base / 'am'}", "--cluster.listen-address=",
                             f"--web.listen-address={address}:{mon.ALERTMANAGER_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=open(base / "alertmanager.log", "w"))
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"Alertmanager exited: {(base / 'alertmanager.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{address}:{mon.ALERTMANAGER_PORT}/-/ready", timeout=2):
                    return True
            except OSError:
                return False

        wait("Alertmanager ready", ready, timeout=30)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)
