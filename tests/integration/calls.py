"""The call and push services beside a booted cluster: LiveKit and coturn from their real programs,
and recording endpoints where the programs no registry here ships (ntfy, lk-jwt-service) listen.

Only addresses and paths change, as in cluster.py. Three more things a deployment gets from its
platform are given here: public DNS (a hosts file in which every public hostname is loopback,
used by the processes that dial those names), the host's published HTTP port 80 (a relay to the
proxy's 8080), and a loopback address of their own for the services whose port the proxy also
uses (ntfy's and lk-jwt-service's 8080).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from livekit import api

from components.coturn import render as coturn
from components.edge.render import PROXY_HTTP_PORT
from components.element_call import render as ec
from components.ntfy import render as ntfy
from config import images

from .cluster import LOOPBACK, Cluster, Proc, _http_ok, hosts_namespace, synapse_python

PUBLIC_HTTP_PORT = 80
# Services that share the proxy's port 8080 get an address of their own on loopback.
OWN_ADDRESSES = {ntfy.SERVICE: "127.0.0.2", ec.JWT_SERVICE: "127.0.0.3", ec.WEB_SERVICE: "127.0.0.4"}
PUBLIC_NAMES = ("matrix", "call", "jwt", "livekit", "app", "ntfy", "turn")
PARTICIPANT = Path(__file__).with_name("livekit_participant.py")
# What the coturn image does to its binary (setcap ...=+ep), from the image facts.
TURNSERVER_FILE_CAPS = ",".join(
    f"cap_{c.lower()}" for c in images.facts_for(images.COTURN).file_capabilities["/usr/bin/turnserver"]) + "=+ep"


def livekit_binary() -> Path:
    """LiveKit built from its module at the pinned tag (scripts/test installs it when missing)."""
    tag = images.LIVEKIT.rsplit(":", 1)[1]
    default = Path.home() / ".cache" / "matrix-stack" / "go-bin" / f"livekit-{tag}" / "server"
    binary = Path(os.environ.get("LIVEKIT_SERVER_BIN", default))
    if not binary.exists():
        raise RuntimeError(f"LiveKit {tag} is not built at {binary}: scripts/test builds it with "
                           f"go install github.com/livekit/livekit-server/cmd/server@{tag}")
    return binary


def write_hosts(cfg: Any, path: Path) -> Path:
    names = sorted({cfg.server_name, *(cfg.host(n) for n in PUBLIC_NAMES)})
    path.write_text(f"127.0.0.1 localhost\n{LOOPBACK} {' '.join(names)}\n")
    return path


# ---------------------------------------------------------------- recording endpoints


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Recorder:
    """An HTTP endpoint that keeps every request and answers with a fixed JSON document per path."""

    address: str
    port: int
    answers: dict[str, Any] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.received.append(Received(self.command, self.path, dict(self.headers.items()), body,
                                                  time.monotonic()))
                answer = recorder.answers.get(self.path.split("?", 1)[0])
                payload = json.dumps(answer if answer is not None else {}).encode()
                self.send_response(200 if answer is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, match: Any, timeout: float, what: str) -> Received:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for request in list(self.received):
                if match(request):
                    return request
            time.sleep(0.05)
        seen = [f"{r.method} {r.path}" for r in self.received]
        raise AssertionError(f"{what}: nothing arrived at {self.address}:{self.port} within {timeout:.0f}s; saw {seen}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class PortPublisher:
    """The host's published port: TCP relayed from 127.0.0.1:`public` to 127.0.0.1:`target`."""

    def __init__(self, public: int, target: int):
        self.target = target
        self.listener = socket.create_server((LOOPBACK, public), reuse_port=False)
        self.listener.settimeout(0.5)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _addr = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection((LOOPBACK, self.target), timeout=10)
            except OSError:
                client.close()
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.running = False
        self.listener.close()


# ---------------------------------------------------------------- LiveKit


def livekit_credentials(cluster: Cluster) -> tuple[str, str]:
    """The (key, secret) pair from the rendered key file LiveKit reads."""
    [(key, secret)] = yaml.safe_load(cluster.file(ec.LIVEKIT_KEYS).read_text()).items()
    return str(key), str(secret)


def start_livekit(cluster: Cluster) -> Proc:
    service = cluster.services[ec.LIVEKIT_SERVICE]["service"]
    proc = cluster._spawn(ec.LIVEKIT_SERVICE, [str(livekit_binary()), *cluster.reloc.args(service.args)],
                          port=ec.LIVEKIT_PORT, tier=5)

    cluster._wait([proc], lambda _p: _http_ok(f"http://{LOOPBACK}:{ec.LIVEKIT_PORT}/"), "answering HTTP", timeout=60)
    return proc


def _unpadded_sha256(parts: list[str]) -> str:
    # Go's json.Marshal of a []string: compact, HTML characters escaped.
    text = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(raw, escaped)
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")


def livekit_room_alias(matrix_room: str, slot: str = "m.call#ROOM") -> str:
    """lk-jwt-service's LiveKit room name for a Matrix room and MatrixRTC slot."""
    return _unpadded_sha256([matrix_room, slot])


def livekit_identity(user_id: str, device_id: str, member_id: str) -> str:
    """lk-jwt-service's LiveKit identity for a Matrix user, device and MatrixRTC member."""
    return _unpadded_sha256([user_id, device_id, member_id])


def join_token(key: str, secret: str, room: str, identity: str) -> str:
    """A join token with the grants lk-jwt-service gives (its getJoinToken), valid for an hour."""
    grants = api.VideoGrants(room_join=True, room_create=False, can_publish=True, can_subscribe=True,
                             can_update_own_metadata=True, room=room)
    return (api.AccessToken(key, secret).with_identity(identity).with_grants(grants)
            .with_ttl(timedelta(hours=1)).to_jwt())


def create_room(key: str, secret: str, room: str, livekit_host: str) -> dict[str, Any]:
    """CreateRoom as lk-jwt-service asks for it for a full-access user, through the proxy's LiveKit
    site (its LIVEKIT_URL): a five-minute empty timeout, twenty seconds after the last one leaves."""
    token = api.AccessToken(key, secret).with_grants(api.VideoGrants(room_create=True)).to_jwt()
    body = json.dumps({"name": room, "empty_timeout": 300, "departure_timeout": 20}).encode()
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{PROXY_HTTP_PORT}/twirp/livekit.RoomService/CreateRoom", data=body, method="POST",
        headers={"Host": livekit_host, "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        created: dict[str, Any] = json.loads(resp.read())
    return created


def participate(hosts_file: Path, url: str, token: str, stay_s: float) -> dict[str, Any]:
    """Run one participant in a process that resolves the public hostnames to loopback."""
    cmd = hosts_namespace(hosts_file, [synapse_python(), str(PARTICIPANT), url, token, str(stay_s)])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"participant failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------- coturn


def _user(service: Any) -> tuple[str, str]:
    uid, gid = str(service.user).split(":")
    return uid, gid


def declared_bounding_set(service: Any) -> list[str]:
    """The capabilities a container of this service may hold: every target drops all but these."""
    if not service.drop_capabilities:
        raise AssertionError(f"{service.name} keeps the runtime's default capabilities; expected a dropped set")
    return sorted(c.lower() for c in service.capabilities_add)


_CONTAINER_PATH = re.compile(r"(?<![\w/.-])/[\w./-]+")


def start_coturn(cluster: Cluster, file_caps: str) -> Proc:
    """coturn's rendered entrypoint as its image runs it: as the image's user, with only the
    capabilities the service declares, no_new_privs (both targets set it), and a turnserver
    carrying the image's file capability `file_caps`."""
    for exe in ("turnserver", "setcap", "setpriv"):
        if shutil.which(exe) is None:
            raise RuntimeError(f"{exe} is missing: scripts/test installs coturn and libcap2-bin")
    service = cluster.services[coturn.SERVICE]["service"]
    uid, gid = _user(service)
    # Docker uploads secret files owned by the service's user; tmpfs scratch is world-writable.
    for f in service.files:
        if f.secret:
            os.chown(cluster.file(f.path), int(uid), int(gid))
    for scratch in service.writable_paths:
        os.chmod(cluster.file(scratch), 0o1777)
    bindir = cluster.base / "coturn-bin"
    bindir.mkdir(exist_ok=True)
    os.chmod(bindir, 0o755)
    binary = bindir / "turnserver"
    shutil.copy(shutil.which("turnserver") or "", binary)
    os.chmod(binary, 0o755)
    subprocess.run(["setcap", file_caps, str(binary)], check=True)
    entry = [_CONTAINER_PATH.sub(lambda m: cluster.reloc.path(m.group(0)), part) for part in service.entrypoint]
    bounding = ",".join(["-all", *(f"+{c}" for c in declared_bounding_set(service))])
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", f"--bounding-set={bounding}",
           "--inh-caps=-all", "--no-new-privs", *entry]
    proc = cluster._spawn(coturn.SERVICE, cmd, env={"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
                          port=coturn.PORT, tier=5)

    def ready(_p: Proc) -> bool:
        from .turn_client import TurnClient

        client = TurnClient((LOOPBACK, coturn.PORT), "", "", timeout=0.5)
        try:
            client.binding()
            return True
        except (OSError, TimeoutError):
            return False
        finally:
            client.close()

    cluster._wait([proc], ready, "answering STUN", timeout=60)
    return proc
