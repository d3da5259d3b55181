"""The routing proxy's upstream pool and location directives (components/nginx: upstream_block,
proxy_block) with the real nginx: a server of the pool whose address no longer answers (a
replaced worker's, until the proxy reloads) costs a request a short wait, then nginx serves it
from the pool's next server, for a read and for a write alike.

The silent server is a listening socket whose accept queue is full and never drained: the kernel
drops every further SYN, as a vanished container's address drops them (no RST answers either).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import nginx

PORT, LIVE = 18490, 18491
# Well below nginx's default connect timeout (60 s), above CONNECT_TIMEOUT: a request that
# waited for the silent server to the end of the default fails here.
CLIENT_TIMEOUT_S = 20


@pytest.fixture
def silent_address() -> Iterator[str]:
    """An address:port that accepts no further connection and answers no SYN."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    # Linux queues backlog + 1 finished connections; these fill it, and nothing accepts them.
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    time.sleep(0.5)
    probe = socket.socket()
    probe.settimeout(2)
    with pytest.raises(TimeoutError):
        probe.connect(listener.getsockname())
    probe.close()
    try:
        yield address
    finally:
        for s in (*fillers, listener):
            s.close()


@pytest.fixture
def proxy(tmp_path: Path, silent_address: str) -> Iterator[Path]:
    access = tmp_path / "access.log"
    location = nginx.indent(nginx.proxy_block("synapse_generic"), 2)
    conf = "\n".join([
        "worker_processes 1;",
        # As root, nginx's workers would run as nobody, who cannot read the temporary directory.
        *(["user root root;"] if os.geteuid() == 0 else []),
        f"pid {tmp_path}/nginx.pid;",
        "error_log /dev/stderr warn;",
        "events { worker_connections 64; }",
        "http {",
        f"    client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;",
        f"    fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;",
        "    log_format pool '$request_method $status $upstream_addr';",
        "    access_log off;",
        # The silent server first: the pool's first choice is the one that no longer answers.
        *nginx.indent(nginx.upstream_block("synapse_generic", [silent_address, f"127.0.0.1:{LIVE}"])),
        f"    server {{ listen 127.0.0.1:{LIVE}; location / {{ return 200 'served'; }} }}",
        f"    server {{ listen 127.0.0.1:{PORT}; access_log {access} pool;",
        "        location / {",
        *location,
        "        }",
        "    }",
        "}",
        "",
    ])
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    check = subprocess.run(["nginx", "-t", "-c", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(["nginx", "-c", str(path), "-g", "daemon off;"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield access
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _request(method: str) -> int:
    body = b"{}" if method == "PUT" else None
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/_matrix/client/v3/x", data=body, method=method)
    with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as resp:
        return resp.status


def test_a_pool_server_that_answers_nothing_costs_no_request(proxy: Path, silent_address: str) -> None:
    # least_conn with no connection open takes the servers in turn, the next request starting
    # from the other one: two requests of a kind in a row meet the silent server once.
    statuses = [_request(method) for method in ("GET", "GET", "PUT", "PUT") * 2]
    assert statuses == [200] * 8
    time.sleep(0.5)  # nginx writes the access log line when the request ends
    lines = proxy.read_text().splitlines()
    retried = [line for line in lines if silent_address in line]
    # nginx tried the silent server and served the request from the next one: "a, b".
    assert retried and all(line.endswith(f"{silent_address}, 127.0.0.1:{LIVE}") for line in retried), lines
    assert {line.split()[0] for line in retried} == {"GET", "PUT"}, lines
