"""Synapse delegating to MAS, booted from the rendered files: real Synapse (main and a client
reader), PostgreSQL, Redis and nginx. MAS itself, which no registry here ships, is a recording
endpoint at its address: Synapse and nginx are the programs under test on the other side of
that wire, and the recorder only observes what they send.

Not skipped anywhere: in CI this must run; a missing program fails with what installs it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from components.edge.render import PROXY_HTTP_PORT
from components.mas import render as mas
from components.synapse import homeserver as hs

from . import calls
from .cluster import LOOPBACK, Access, Cluster, boot_config, read_access_log, render

MAS_ADDRESS = "127.0.0.5"  # its own loopback address: MAS's 8080 is the proxy's port too
INTROSPECT = "/oauth2/introspect"


def stack_config() -> dict[str, Any]:
    raw = boot_config({"client_reader": 1})
    raw["mas"] = {"enabled": True}
    return raw


@dataclass
class Booted:
    cluster: Cluster
    mas: calls.Recorder

    def log(self) -> list[Access]:
        return read_access_log(self.cluster.access_log)

    def logged(self, wanted: list[tuple[str, str]], timeout: float = 15) -> list[Access]:
        """The access log once it holds every wanted request (nginx logs after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if all(any((a.method, a.path) == w for a in log) for w in wanted) or time.monotonic() > deadline:
                return log
            time.sleep(0.1)


@pytest.fixture(scope="module")
def booted() -> Iterator[Booted]:
    result = render(stack_config())
    addresses = {mas.SERVICE: MAS_ADDRESS}
    recorder = calls.Recorder(MAS_ADDRESS, mas.HTTP_PORT, {INTROSPECT: {"active": False},
                                                           "/_matrix/client/v3/login": {"flows": []}})
    try:
        with Cluster(result, addresses=addresses) as cluster:
            yield Booted(cluster, recorder)
    finally:
        recorder.stop()


def request(method: str, url: str, *, token: str | None = None, body: Any = None,
            host: str = "localhost", text: str | None = None) -> tuple[int, Any]:
    headers = {"Host": host, "Content-Type": "application/json" if text is None else "text/plain"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else text.encode() if text is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


PROXY = f"http://{LOOPBACK}:{PROXY_HTTP_PORT}"


def test_synapse_boots_with_the_mas_section(booted: Booted) -> None:
    cluster = booted.cluster
    shared = cluster.file(hs.SHARED_CONFIG).read_text()
    assert "matrix_authentication_service:" in shared and "msc4108_enabled: true" in shared
    for name in cluster.synapse_names():
        assert cluster.procs[name].popen.poll() is None, cluster.procs[name].tail()
    # The shared secret Synapse reads is the one MAS reads.
    assert cluster.file(mas.SYNAPSE_SECRET_PATH).read_text() == cluster.file(mas.MATRIX_SECRET_FILE).read_text()


def test_login_logout_and_refresh_reach_mas_through_the_proxy(booted: Booted) -> None:
    paths = [("GET", "/_matrix/client/v3/login"), ("POST", "/_matrix/client/v3/login"),
             ("POST", "/_matrix/client/v3/logout"), ("POST", "/_matrix/client/r0/logout/all"),
             ("POST", "/_matrix/client/v3/refresh")]
    for method, path in paths:
        request(method, PROXY + path, body={} if method == "POST" else None)
        booted.mas.wait_for(lambda r, m=method, p=path: (r.method, r.path) == (m, p), 30, f"{method} {path}")
    log = booted.logged(paths)
    for method, path in paths:
        hits = [a for a in log if (a.method, a.path) == (method, path)]
        assert hits, f"{method} {path} is not in the proxy's access log"
        assert all(a.route == "mas" and a.upstreams == (f"{MAS_ADDRESS}:{mas.HTTP_PORT}",) for a in hits), hits
    # What nginx forwarded kept the client's Host (the Matrix host) and named the client.
    login = next(r for r in booted.mas.received if r.path == "/_matrix/client/v3/login")
    assert login.headers["Host"] == "localhost" and login.headers["X-Forwarded-For"] == LOOPBACK


def test_other_client_requests_stay_with_synapse(booted: Booted) -> None:
    status, versions = request("GET", PROXY + "/_matrix/client/versions")
    assert status == 200 and versions["versions"], versions
    hits = [a for a in booted.logged([("GET", "/_matrix/client/versions")]) if a.path == "/_matrix/client/versions"]
    assert hits and all(a.route == "client_reader" for a in hits), hits


def test_synapse_asks_mas_about_tokens_with_the_shared_secret(booted: Booted) -> None:
    status, _body = request("GET", PROXY + "/_matrix/client/v3/account/whoami", token="mas_opaque_token")
    assert status == 401  # the recorder says the token is inactive
    asked = booted.mas.wait_for(lambda r: r.path == INTROSPECT, 30, "token introspection")
    secret = booted.cluster.file(mas.MATRIX_SECRET_FILE).read_text().strip()
    headers = {k.lower(): v for k, v in asked.headers.items()}
    assert asked.method == "POST" and headers["authorization"] == f"Bearer {secret}"
    assert b"token=mas_opaque_token" in asked.body


def test_synapse_serves_mas_its_api_with_the_shared_secret_only(booted: Booted) -> None:
    main = f"http://{LOOPBACK}:{booted.cluster.http_port('synapse-main')}"
    secret = booted.cluster.file(mas.MATRIX_SECRET_FILE).read_text().strip()
    status, body = request("GET", main + "/_synapse/mas/is_localpart_available?localpart=alice", token=secret)
    assert status == 200, body
    status, _body = request("GET", main + "/_synapse/mas/is_localpart_available?localpart=alice", token="wrong")
    assert status in (401, 403)


def test_qr_login_rendezvous_is_served(booted: Booted) -> None:
    # MSC4108: the new device posts its first message, Synapse keeps it and answers where to poll.
    status, body = request("POST", PROXY + "/_matrix/client/unstable/org.matrix.msc4108/rendezvous", text="hello")
    assert status == 201 and body.get("url"), (status, body)
    hits = [a for a in booted.logged([("POST", "/_matrix/client/unstable/org.matrix.msc4108/rendezvous")])
            if "rendezvous" in a.path]
    assert hits and all(a.route == "main" for a in hits), hits
