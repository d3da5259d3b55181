"""The routing proxy hardened by default, observed on the real nginx: the rendered nginx.conf is
started on loopback ports (only its listen ports, upstream addresses and paths rewritten) in
front of a stand-in upstream, and each site's responses are read with curl (SNI and Host as a
client sends them): the security headers on proxied pages, on nginx's own 404 and on the
well-known JSON; the call site framed only by Element Web's origin; the client address taken
from X-Forwarded-For only from a trusted front."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.edge import render as edge_render
from components.synapse import services
from config import ConfigError
from config.model import DockerTarget, KubernetesTarget
from stack import parse
from tests.unit.test_worker_table import NGINX, relocate_certificates, render

HSTS = "max-age=63072000"
DENY_FRAMES = "frame-ancestors 'none'"
SPOOFED = "203.0.113.7"

# A Docker stack whose proxy terminates TLS (ACME), with Element Web and Element Call.
DOCKER_TLS = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
              "element_web": {"enabled": True}, "ntfy": {"enabled": True}}
# The dev stack: plain HTTP on localhost.
LOCAL = {"server_name": "localhost", "element_web": {"enabled": True}}
# Behind a Kubernetes Ingress (TLS ends there), without Element Web, trusting the loopback
# addresses as the Ingress controller's.
KUBERNETES = {"server_name": "example.org", "element_web": {"enabled": False},
              "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt",
                         "trusted_proxies": ["127.0.0.0/8"]}}


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Every service the proxy dials: answers 200 with the X-Forwarded-For it received."""

    def do_GET(self) -> None:
        body = json.dumps({"x_forwarded_for": self.headers.get("X-Forwarded-For")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _private_address() -> str | None:
    """An address of this machine in a private range (a pod network's, as far as the proxy can
    tell), to connect from as an untrusted pod would; None when it has none."""
    ranges = [ipaddress.ip_network(r) for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
    try:
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except OSError:
        return None
    for text in listed:
        address = ipaddress.ip_address(text.split("%")[0])
        if any(address.version == r.version and address in r for r in ranges):
            return str(address)
    return None


PRIVATE = _private_address()


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: str

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


@dataclass
class Proxy:
    http_port: int
    https_port: int
    tls: bool

    def get(self, host: str, path: str = "/", *, plain: bool = False, forwarded_for: str | None = None,
            via: str = "127.0.0.1") -> Response:
        """A request to `host` as a client makes it (SNI and Host), on the HTTPS listener when the
        proxy terminates TLS (or on the plain HTTP one with `plain`), to (and so from) `via`."""
        scheme, port = ("https", self.https_port) if self.tls and not plain else ("http", self.http_port)
        command = ["curl", "-sk", "--http1.1", "-i", "--max-time", "10",
                   "--resolve", f"{host}:{port}:{_bracketed(via)}", f"{scheme}://{host}:{port}{path}"]
        if forwarded_for:
            command += ["-H", f"X-Forwarded-For: {forwarded_for}"]
        out = subprocess.run(command, capture_output=True, timeout=30, check=True).stdout.decode()
        head, _, body = out.partition("\r\n\r\n")
        status_line, *lines = head.split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return Response(int(status_line.split()[1]), headers, body)


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _boot(raw: dict[str, Any], upstream: int, tmp_path: Path) -> Iterator[Proxy]:
    cfg = parse(raw)
    conf = render(cfg, {n: "127.0.0.1" for n in services.addresses(cfg)})
    ports = {edge_render.PROXY_HTTP_PORT: _free_port(), edge_render.PROXY_HTTPS_PORT: _free_port(),
             edge_render.PROXY_STATUS_PORT: _free_port()}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    text = conf.replace("/tmp/", f"{scratch}/")
    # Every service the proxy dials is the stand-in upstream.
    text = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{upstream}", text)
    # On loopback, and on the machine's private address when it has one.
    addresses = ["127.0.0.1", *([_bracketed(PRIVATE)] if PRIVATE else [])]
    text = re.sub(r"listen (\d+)([^;]*);", lambda m: " ".join(
        f"listen {a}:{ports[int(m.group(1))]}{m.group(2)};" for a in addresses), text)
    text = relocate_certificates(conf, text, tmp_path)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    log = (tmp_path / "nginx.log").open("w")
    nginx = subprocess.Popen([str(NGINX), "-c", str(path), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"),
                              "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert nginx.poll() is None, (tmp_path / "nginx.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{ports[edge_render.PROXY_STATUS_PORT]}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not answer"
                time.sleep(0.1)
        yield Proxy(ports[edge_render.PROXY_HTTP_PORT], ports[edge_render.PROXY_HTTPS_PORT],
                    tls=f"listen {edge_render.PROXY_HTTPS_PORT} " in conf)
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def docker_tls(upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _boot(DOCKER_TLS, upstream, tmp_path_factory.mktemp("docker-tls"))


@pytest.fixture(scope="module")
def local(upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _boot(LOCAL, upstream, tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def kubernetes(upstream: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _boot(KUBERNETES, upstream, tmp_path_factory.mktemp("kubernetes"))


def _assert_hardened(response: Response, *, hsts: bool, framed_by: str | None = None) -> None:
    """The security headers, each exactly once; `framed_by`: the site's frame-ancestors sources
    (None: no page may frame it)."""
    assert response.header("Strict-Transport-Security") == ([HSTS] if hsts else [])
    assert response.header("X-Content-Type-Options") == ["nosniff"]
    assert response.header("Referrer-Policy") == ["strict-origin-when-cross-origin"]
    if framed_by is None:
        assert response.header("X-Frame-Options") == ["DENY"]
        assert response.header("Content-Security-Policy") == [DENY_FRAMES]
    else:
        assert response.header("X-Frame-Options") == []
        assert response.header("Content-Security-Policy") == [f"frame-ancestors {framed_by}"]


def test_every_site_of_a_tls_stack_is_hardened(docker_tls: Proxy) -> None:
    missing = docker_tls.get("example.org", "/no/such/path")
    assert missing.status == 404  # nginx's own error response carries them too
    _assert_hardened(missing, hsts=True)
    client = docker_tls.get("example.org", "/.well-known/matrix/client")
    assert client.status == 200 and json.loads(client.body)["m.homeserver"]["base_url"] == "https://example.org"
    _assert_hardened(client, hsts=True)  # despite the location's own (CORS) headers
    assert client.header("Access-Control-Allow-Origin") == ["*"]
    _assert_hardened(docker_tls.get("example.org", "/.well-known/matrix/server"), hsts=True)
    synapse = docker_tls.get("example.org", "/_matrix/client/versions")
    assert synapse.status == 200
    _assert_hardened(synapse, hsts=True)
    for host in ("app.example.org", "ntfy.example.org", "jwt.example.org", "livekit.example.org"):
        page = docker_tls.get(host)
        assert page.status == 200, host
        _assert_hardened(page, hsts=True)


def test_only_element_web_may_frame_element_call(docker_tls: Proxy) -> None:
    call = docker_tls.get("call.example.org", "/room/#/abc")
    assert call.status == 200
    _assert_hardened(call, hsts=True, framed_by="'self' https://app.example.org")


def test_the_plain_http_redirect_is_hardened_without_hsts(docker_tls: Proxy) -> None:
    redirect = docker_tls.get("example.org", "/_matrix/client/versions", plain=True)
    assert redirect.status == 301
    _assert_hardened(redirect, hsts=False)  # browsers ignore HSTS over plain HTTP


def test_a_plain_http_stack_sends_no_hsts(local: Proxy) -> None:
    missing = local.get("localhost", "/no/such/path")
    assert missing.status == 404
    _assert_hardened(missing, hsts=False)
    _assert_hardened(local.get("localhost", "/.well-known/matrix/client"), hsts=False)
    _assert_hardened(local.get("app.localhost"), hsts=False)


def test_behind_an_ingress_hsts_reaches_the_client_and_call_is_framed_only_by_itself(kubernetes: Proxy) -> None:
    # TLS ends at the Ingress, which passes nginx's headers on.
    missing = kubernetes.get("example.org", "/no/such/path")
    assert missing.status == 404
    _assert_hardened(missing, hsts=True)
    # No Element Web in this stack: only Element Call's own pages may frame it.
    _assert_hardened(kubernetes.get("call.example.org"), hsts=True, framed_by="'self'")


def test_the_tls_listener_speaks_only_modern_tls(docker_tls: Proxy) -> None:
    def handshake(*options: str) -> int:
        return subprocess.run(["curl", "-sk", "-o", "/dev/null", "--max-time", "10", *options,
                               "--resolve", f"example.org:{docker_tls.https_port}:127.0.0.1",
                               f"https://example.org:{docker_tls.https_port}/.well-known/matrix/server"],
                              capture_output=True, timeout=30).returncode
    aead = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    assert handshake("--tlsv1.2", "--tls-max", "1.2", "--ciphers", aead) == 0
    assert handshake("--tlsv1.3") == 0
    # CBC suites, which nginx's default list (HIGH:!aNULL:!MD5) allows, are refused.
    cbc = "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:AES128-SHA256:AES256-SHA"
    assert handshake("--tlsv1.2", "--tls-max", "1.2", "--ciphers", cbc) != 0


def _seen_forwarded_for(proxy: Proxy, host: str, path: str = "/", via: str = "127.0.0.1") -> str:
    response = proxy.get(host, path, forwarded_for=SPOOFED, via=via)
    assert response.status == 200
    return str(json.loads(response.body)["x_forwarded_for"])


def test_a_spoofed_client_address_is_ignored_from_an_untrusted_source(docker_tls: Proxy, upstream: int,
                                                                      tmp_path: Path) -> None:
    # Clients connect to a Docker proxy directly: X-Forwarded-For is theirs to invent, and the
    # upstream sees the connecting address.
    assert _seen_forwarded_for(docker_tls, "call.example.org") == "127.0.0.1"
    assert _seen_forwarded_for(docker_tls, "example.org", "/_matrix/client/versions") == "127.0.0.1"  # Synapse
    assert PRIVATE is not None, "this machine has no address in a private range to connect from"
    assert _seen_forwarded_for(docker_tls, "call.example.org", via=PRIVATE) == PRIVATE
    # On Kubernetes without target.trusted_proxies no one is trusted either, not even a
    # connection from a private address (as every pod's is).
    raw = {**KUBERNETES, "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}}
    with contextlib.contextmanager(_boot)(raw, upstream, tmp_path) as proxy:
        assert _seen_forwarded_for(proxy, "call.example.org") == "127.0.0.1"
        assert _seen_forwarded_for(proxy, "call.example.org", via=PRIVATE) == PRIVATE


def test_the_client_address_comes_from_a_trusted_front(kubernetes: Proxy) -> None:
    # The loopback addresses are configured as the Ingress controller's: its header is believed.
    assert _seen_forwarded_for(kubernetes, "call.example.org") == SPOOFED


def test_trusted_proxies_are_cidrs() -> None:
    target = {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}
    cfg = parse({**KUBERNETES, "target": {**target, "trusted_proxies": ["10.244.0.0/16", "fd00:10:244::/56"]}})
    assert isinstance(cfg.target, KubernetesTarget)
    assert cfg.target.trusted_proxies == ["10.244.0.0/16", "fd00:10:244::/56"]
    with pytest.raises(ConfigError, match="trusted_proxies.*CIDR"):
        parse({**KUBERNETES, "target": {**target, "trusted_proxies": ["ingress-nginx"]}})
    # The Docker target's front proxy, the same way; every bad entry is named at once.
    docker = {"kind": "docker", "trusted_proxies": ["192.0.2.10", "2001:db8::/64"]}
    cfg = parse({**DOCKER_TLS, "target": docker})
    assert isinstance(cfg.target, DockerTarget)
    assert cfg.target.trusted_proxies == ["192.0.2.10", "2001:db8::/64"]
    with pytest.raises(ConfigError) as bad:
        parse({**DOCKER_TLS, "target": {**docker, "trusted_proxies": ["lb.example.org", "10.0.0.0/33"]}})
    assert "target.trusted_proxies[0]: must be an IP address or CIDR such as 10.0.0.0/8 (got 'lb.example.org')" \
        in str(bad.value)
    assert "target.trusted_proxies[1]: must be an IP address or CIDR" in str(bad.value)
