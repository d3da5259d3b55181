"""The proxy's run script (components/edge/render.proxy_run_script) with the real nginx: a new
live nginx.conf is tested and applied by graceful reload (the same master process, the applied
digest answered on the status listener), and a config nginx refuses leaves the old one serving.

The rendered script runs as it is, with only its paths moved under a temporary directory (the
live file, the scratch directory and nginx's pid file), on loopback ports of its own.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.edge import render

PORT, STATUS = 18480, 18481


def _conf(tmp: Path, body: str) -> str:
    return "\n".join([
        "# test config",
        f"{render.UPSTREAM_HOSTS_MARK} localhost",
        "worker_processes 1;",
        # As root, nginx's workers would run as nobody, who cannot read the temporary directory.
        *(["user root root;"] if os.geteuid() == 0 else []),
        f"pid {tmp}/nginx.pid;",
        "error_log /dev/stderr warn;",
        "events { worker_connections 64; }",
        "http {",
        f"    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;",
        f"    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi; access_log off;",
        f"    server {{ listen 127.0.0.1:{PORT}; location / {{ return 200 '{body}'; }} }}",
        f"    server {{ listen 127.0.0.1:{STATUS}; location = /health {{ return 200 'OK'; }}",
        f"        location = {render.APPLIED_PATH} {{ default_type text/plain; alias {tmp}/serving/applied; }} }}",
        "}",
        "",
    ])


def _publish(live: Path, text: str) -> str:
    """Replace the live file as the publisher does (a rename), and return its digest."""
    new = live.with_name(".nginx.conf.new")
    new.write_text(text)
    new.rename(live)
    return hashlib.sha256(text.encode()).hexdigest()


def _get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode()


def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("not within the time allowed")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    live = live_dir / "nginx.conf"
    script = render.proxy_run_script(render.NGINX_CONF, False)
    script = script.replace(render.NGINX_CONF, str(live)).replace(render.SERVING_DIR, str(tmp_path / "serving"))
    script = script.replace(render.NGINX_PID, str(tmp_path / "nginx.pid"))
    script = script.replace(f"http://127.0.0.1:{render.PROXY_STATUS_PORT}/health",
                            f"http://127.0.0.1:{STATUS}/health")
    run = tmp_path / "proxy-run.sh"
    run.write_text(script)
    log = open(tmp_path / "proxy.log", "wb")
    proc = subprocess.Popen(["/bin/sh", str(run)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield tmp_path, live, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_a_new_config_is_applied_by_reload_and_a_refused_one_keeps_the_old(
        proxy: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    tmp, live, proc = proxy
    run = tmp / "proxy-run.sh"
    first = _publish(live, _conf(tmp, "one"))
    _until(lambda: _get(STATUS, render.APPLIED_PATH).strip() == first)
    assert _get(PORT) == "one"
    master = (tmp / "nginx.pid").read_text().strip()
    assert master == str(proc.pid)  # the script execs nginx: the master is the container's process
    assert subprocess.run(["/bin/sh", str(run), "health"], capture_output=True, timeout=30).returncode == 0

    second = _publish(live, _conf(tmp, "two"))
    _until(lambda: _get(STATUS, render.APPLIED_PATH).strip() == second)
    assert _get(PORT) == "two"
    assert (tmp / "nginx.pid").read_text().strip() == master, "nginx was restarted, not reloaded"

    _publish(live, _conf(tmp, "three").replace("worker_processes 1;", "worker_processes 1;\nnot_a_directive on;"))
    _until(lambda: "the new configuration was refused" in (tmp / "proxy.log").read_text())
    time.sleep(2)
    assert _get(PORT) == "two" and _get(STATUS, render.APPLIED_PATH).strip() == second
    assert proc.poll() is None and (tmp / "nginx.pid").read_text().strip() == master
    # Unhealthy while the live file is one it refused: the operator sees it.
    assert subprocess.run(["/bin/sh", str(run), "health"], capture_output=True, timeout=30).returncode != 0

    fixed = _publish(live, _conf(tmp, "four"))
    _until(lambda: _get(STATUS, render.APPLIED_PATH).strip() == fixed)
    assert _get(PORT) == "four" and (tmp / "nginx.pid").read_text().strip() == master
