"""A fixed Matrix client workload, driven with matrix-nio through the public proxy.

Shared by the boot test (which asserts on the returned facts) and the benchmark (which only
counts where the proxy sent the requests). Everything goes through http://127.0.0.1:8080 except
user registration, which uses the shared secret on main's own port because the proxy blocks the
admin API by design.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nio

from .cluster import PROXY_URL, Cluster

MESSAGES = 24
PASSWORD = "correct-horse-battery-staple"
STEP_TIMEOUT_S = 30.0


@dataclass
class Facts:
    room_id: str = ""
    sent: list[str] = field(default_factory=list)  # bodies, in send order
    sent_ids: list[str] = field(default_factory=list)
    synced: list[str] = field(default_factory=list)  # bodies user2 saw via /sync, in timeline order
    typing_seen: bool = False
    receipt_seen: bool = False
    upload_sha: str = ""
    download_sha: str = ""
    paginated: list[str] = field(default_factory=list)  # bodies from /messages, oldest first
    pages: int = 0
    well_known: dict[str, tuple[Any, str | None]] = field(default_factory=dict)  # path -> (json, CORS header)
    server_keys: Any = None  # GET /_matrix/key/v2/server, as a remote server fetches it


def _ok(resp: Any, kind: type, what: str) -> Any:
    if not isinstance(resp, kind):
        raise AssertionError(f"{what} failed: {resp!r}")
    return resp


def _client(user: str) -> nio.AsyncClient:
    # Bounded retries: a misrouted request must fail the test, not retry forever.
    config = nio.AsyncClientConfig(max_limit_exceeded=3, max_timeouts=2, request_timeout=60)
    return nio.AsyncClient(PROXY_URL, f"@{user}:localhost", config=config)


async def _sync_until(client: nio.AsyncClient, room_id: str, done: Any, what: str) -> None:
    """Incremental /sync until done(join_info) is true, within a bounded time."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    sync_filter = {"room": {"timeline": {"limit": 100}}}
    while time.monotonic() < deadline:
        resp = _ok(await client.sync(timeout=2000, sync_filter=sync_filter), nio.SyncResponse, f"{what}: sync")
        info = resp.rooms.join.get(room_id)
        if info is not None and done(info):
            return
    raise AssertionError(f"{what}: not seen via /sync within {STEP_TIMEOUT_S:.0f}s")


def well_known(path: str) -> tuple[Any, str | None]:
    with urllib.request.urlopen(PROXY_URL + path, timeout=10) as resp:
        return json.loads(resp.read()), resp.headers.get("Access-Control-Allow-Origin")


async def _run(cluster: Cluster, tag: str) -> Facts:
    facts = Facts()
    names = (f"alice{tag}", f"bob{tag}")
    for name in names:
        # register_new_matrix_user blocks; keep the event loop free.
        await asyncio.to_thread(cluster.register, name, PASSWORD)
    alice, bob = _client(names[0]), _client(names[1])
    try:
        _ok(await alice.login(PASSWORD, device_name="integration"), nio.LoginResponse, "alice login")
        _ok(await bob.login(PASSWORD, device_name="integration"), nio.LoginResponse, "bob login")

        room = _ok(await alice.room_create(name="boot test"), nio.RoomCreateResponse, "createRoom")
        facts.room_id = room_id = room.room_id
        _ok(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse, "invite")
        _ok(await bob.join(room_id), nio.JoinResponse, "bob join")
        # Establish bob's sync position after the join, so later syncs are incremental.
        _ok(await bob.sync(timeout=0), nio.SyncResponse, "bob initial sync")
        _ok(await alice.sync(timeout=0), nio.SyncResponse, "alice initial sync")

        for i in range(MESSAGES):
            body = f"message {i:02d} {os.urandom(4).hex()}"
            sent = _ok(await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}),
                       nio.RoomSendResponse, f"send {i}")
            facts.sent.append(body)
            facts.sent_ids.append(sent.event_id)

        wanted = set(facts.sent)

        def collect(info: Any) -> bool:
            facts.synced += [e.body for e in info.timeline.events
                             if isinstance(e, nio.RoomMessageText) and e.body in wanted]
            return wanted <= set(facts.synced)

        await _sync_until(bob, room_id, collect, "bob sees every message")

        _ok(await bob.room_typing(room_id, True, timeout=20000), nio.RoomTypingResponse, "typing")
        _ok(await bob.update_receipt_marker(room_id, facts.sent_ids[-1]), nio.UpdateReceiptMarkerResponse,
            "read receipt")
        _ok(await bob.room_read_markers(room_id, facts.sent_ids[-1], facts.sent_ids[-1]),
            nio.RoomReadMarkersResponse, "read markers")

        # Typing and receipts are written by their stream writers; alice's sync worker must learn
        # of them over replication.
        def ephemeral(info: Any) -> bool:
            for event in info.ephemeral:
                if isinstance(event, nio.TypingNoticeEvent) and bob.user_id in event.users:
                    facts.typing_seen = True
                if isinstance(event, nio.ReceiptEvent) and any(
                        r.user_id == bob.user_id and r.event_id == facts.sent_ids[-1] for r in event.receipts):
                    facts.receipt_seen = True
            return facts.typing_seen and facts.receipt_seen

        await _sync_until(alice, room_id, ephemeral, "alice sees bob's typing and receipt")

        blob = os.urandom(256 * 1024)  # larger than nginx's in-memory body buffer
        facts.upload_sha = hashlib.sha256(blob).hexdigest()
        upload, _keys = await alice.upload(io.BytesIO(blob), content_type="application/octet-stream",
                                           filename="blob.bin", filesize=len(blob))
        upload = _ok(upload, nio.UploadResponse, "media upload")
        download = _ok(await bob.download(mxc=upload.content_uri), nio.MemoryDownloadResponse, "media download")
        facts.download_sha = hashlib.sha256(download.body).hexdigest()

        # Page back through the room 10 events at a time until every message has been seen.
        token: str | None = None
        newest_first: list[str] = []
        for _ in range(20):
            page = _ok(await bob.room_messages(room_id, start=token, limit=10), nio.RoomMessagesResponse,
                       "/messages")
            facts.pages += 1
            newest_first += [e.body for e in page.chunk if isinstance(e, nio.RoomMessageText)]
            if not page.chunk or not page.end or wanted <= set(newest_first):
                break
            token = page.end
        facts.paginated = list(reversed(newest_first))
        # Logout is one of the few client endpoints only main may serve: it keeps the
        # "main serves only main routes" check from passing vacuously.
        _ok(await bob.logout(), nio.LogoutResponse, "logout")
    finally:
        await alice.close()
        await bob.close()

    for path in ("/.well-known/matrix/client", "/.well-known/matrix/server"):
        facts.well_known[path] = await asyncio.to_thread(well_known, path)
    facts.server_keys, _cors = await asyncio.to_thread(well_known, "/_matrix/key/v2/server")
    return facts


def run_workload(cluster: Cluster, tag: str = "") -> Facts:
    return asyncio.run(_run(cluster, tag))


# ---------------------------------------------------------------- a steady workload


@dataclass(frozen=True)
class Outcome:
    """One request of the steady workload: when it was sent (time.monotonic()), what it was, and
    its error (an HTTP status other than 2xx, or the exception), None when it succeeded."""

    sent: float
    what: str
    error: str | None


class SteadyLoad:
    """Clients that keep using the stack through the proxy while a test breaks something, and
    record every request's outcome.

    Each client loops over requests that reach most of the worker roles and their databases
    (send -> event creator and persister, incremental sync, /messages, typing, receipts, profile,
    media download); the clients run in parallel so that every process uses several of its
    pooled database connections. Runs in a thread of its own: `with SteadyLoad(cluster) as load:`.
    """

    REQUEST_TIMEOUT_S = 60.0  # as the nio clients above: a loaded machine is slow, not broken

    def __init__(self, cluster: Cluster, tag: str = "steady", clients: int = 4):
        self.cluster = cluster
        self.names = [f"{tag}{i}" for i in range(clients)]
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SteadyLoad:
        # register_new_matrix_user starts a Python of its own each time: side by side, not in turn.
        with concurrent.futures.ThreadPoolExecutor(len(self.names)) as pool:
            list(pool.map(lambda name: self.cluster.register(name, PASSWORD), self.names))
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._run(ready))
            except BaseException as exc:  # reported by __enter__ or __exit__
                failure.append(exc)
                ready.set()

        self._failure = failure
        self._thread = threading.Thread(target=run, name="steady-load", daemon=True)
        self._thread.start()
        ready.wait(timeout=120)
        if failure or not ready.is_set():
            self.__exit__(None, None, None)
            raise RuntimeError(f"the steady workload did not start: {failure}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.REQUEST_TIMEOUT_S * 3)
        if self._failure:
            raise RuntimeError("the steady workload failed") from self._failure[0]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No new request is sent inside the block (those in flight finish): a quiet spell."""
        self._paused.set()
        try:
            yield
        finally:
            self._paused.clear()

    def errors(self, since: float = 0.0) -> list[Outcome]:
        """The failed requests sent at or after `since` (time.monotonic())."""
        return [o for o in list(self.outcomes) if o.sent >= since and o.error is not None]

    def count(self, since: float = 0.0) -> int:
        return len([o for o in list(self.outcomes) if o.sent >= since])

    def wait_for(self, requests: int, since: float = 0.0, timeout: float = 600.0) -> None:
        """Until `requests` requests have been answered (well or not) since `since`: a window
        measured in requests, not seconds, so a slow machine observes as much as a fast one."""
        deadline = time.monotonic() + timeout
        while self.count(since) < requests:
            if self._failure or time.monotonic() > deadline:
                raise TimeoutError(f"the steady workload made {self.count(since)} of {requests} requests "
                                   f"within {timeout:.0f}s ({self._failure})")
            time.sleep(0.2)

    async def _run(self, ready: threading.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(PROXY_URL, timeout=timeout) as http:
            tokens = []
            for name in self.names:
                body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
                        "password": PASSWORD}
                async with http.post("/_matrix/client/v3/login", json=body) as resp:
                    resp.raise_for_status()
                    tokens.append((await resp.json())["access_token"])
            auth = [{"Authorization": f"Bearer {t}"} for t in tokens]
            async with http.post("/_matrix/client/v3/createRoom", headers=auth[0],
                                 json={"preset": "public_chat", "name": "steady load"}) as resp:
                resp.raise_for_status()
                room = (await resp.json())["room_id"]
            for headers in auth[1:]:
                async with http.post(f"/_matrix/client/v3/join/{room}", headers=headers) as resp:
                    resp.raise_for_status()
            async with http.post("/_matrix/media/v3/upload", headers=auth[0] | {"Content-Type": "text/plain"},
                                 data=b"steady") as resp:
                resp.raise_for_status()
                media = (await resp.json())["content_uri"].removeprefix("mxc://")
            ready.set()
            await asyncio.gather(*(self._client(http, name, headers, room, media)
                                   for name, headers in zip(self.names, auth, strict=True)))

    async def _client(self, http: aiohttp.ClientSession, name: str, headers: dict[str, str], room: str,
                      media: str) -> None:
        user = f"@{name}:localhost"
        since = ""
        last_event = ""
        n = 0
        while not self._stop.is_set():
            n += 1
            requests: list[tuple[str, str, str, Any]] = [
                ("send", "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{name}-{n}",
                 {"msgtype": "m.text", "body": f"{name} {n}"}),
                ("sync", "GET", "/_matrix/client/v3/sync?timeout=0" + (f"&since={since}" if since else ""), None),
                ("messages", "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5", None),
                ("typing", "PUT", f"/_matrix/client/v3/rooms/{room}/typing/{user}", {"typing": True, "timeout": 5000}),
                ("profile", "GET", f"/_matrix/client/v3/profile/{user}", None),
                ("download", "GET", f"/_matrix/client/v1/media/download/{media}", None),
            ]
            if last_event:
                requests.append(("receipt", "POST", f"/_matrix/client/v3/rooms/{room}/receipt/m.read/{last_event}",
                                 {}))
            for what, method, path, body in requests:
                while self._paused.is_set() and not self._stop.is_set():
                    await asyncio.sleep(0.05)
                if self._stop.is_set():
                    return
                sent = time.monotonic()
                error: str | None = None
                try:
                    async with http.request(method, path, headers=headers, json=body) as resp:
                        payload = await resp.read()
                        if not 200 <= resp.status < 300:
                            error = f"HTTP {resp.status} {payload[:200]!r}"
                        elif what == "send":
                            last_event = json.loads(payload)["event_id"]
                        elif what == "sync":
                            since = json.loads(payload)["next_batch"]
                except (TimeoutError, aiohttp.ClientError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                self.outcomes.append(Outcome(sent, what, error))
                if error is not None:
                    await asyncio.sleep(0.1)  # a broken stack is not hammered


# ---------------------------------------------------------------- a steady client workload


def _call(method: str, path: str, token: str | None = None, body: Any = None, raw: bytes | None = None,
          content_type: str = "application/json", timeout: float = 60.0) -> tuple[int, bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(PROXY_URL + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Written:
    """What a steady client wrote: checked for after a change or an upgrade."""

    user: str = ""
    room_id: str = ""
    event_ids: list[str] = field(default_factory=list)
    media: dict[str, str] = field(default_factory=dict)  # mxc -> sha256
    device_id: str = ""


@dataclass
class Tally:
    """Requests a steady client made, and those that failed (a 5xx, a refused or broken
    connection, a timeout), by kind of request."""

    requests: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the first few, for the report
    seconds: float = 0.0

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    def line(self) -> str:
        kinds = ", ".join(f"{k} {self.failed.get(k, 0)}/{n}" for k, n in sorted(self.requests.items()))
        return f"{self.total_failed} failed of {sum(self.requests.values())} in {self.seconds:.1f}s ({kinds})"


class SteadyClient:
    """One logged-in user through the proxy, sending requests of several kinds back to back
    from a thread, each kind served by another process of the cluster: the server's versions,
    /sync, a message sent, /messages, a media download, and one of main's own routes (the
    user's push rules). `start()` and `stop()` bracket a change; the tally counts what failed."""

    KINDS = ("versions", "sync", "send", "messages", "media", "pushrules")

    def __init__(self, cluster: Cluster, tag: str):
        self.cluster = cluster
        self.written = Written(user=f"steady{tag}")
        self.token = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tally = Tally()

    def prepare(self) -> Written:
        """Register, log in, create a room and upload one file (not counted)."""
        w = self.written
        self.cluster.register(w.user, PASSWORD)
        status, body = _call("POST", "/_matrix/client/v3/login", body={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": w.user}, "password": PASSWORD,
            "initial_device_display_name": "steady"})
        assert status == 200, body
        login = json.loads(body)
        self.token, w.device_id = login["access_token"], login["device_id"]
        status, body = _call("POST", "/_matrix/client/v3/createRoom", self.token, {"name": "steady"})
        assert status == 200, body
        w.room_id = json.loads(body)["room_id"]
        blob = os.urandom(64 * 1024)
        status, body = _call("POST", "/_matrix/media/v3/upload?filename=steady.bin", self.token, raw=blob,
                             content_type="application/octet-stream")
        assert status == 200, body
        w.media[json.loads(body)["content_uri"]] = hashlib.sha256(blob).hexdigest()
        return w

    def _request(self, kind: str, n: int) -> tuple[int, bytes]:
        room = urllib.parse.quote(self.written.room_id)
        if kind == "versions":
            return _call("GET", "/_matrix/client/versions")
        if kind == "sync":
            return _call("GET", "/_matrix/client/v3/sync?timeout=0", self.token)
        if kind == "send":
            txn = f"steady-{os.getpid()}-{time.monotonic_ns()}"
            status, body = _call("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}", self.token,
                                 {"msgtype": "m.text", "body": f"steady {n}"})
            if status == 200:
                self.written.event_ids.append(json.loads(body)["event_id"])
            return status, body
        if kind == "messages":
            return _call("GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5", self.token)
        if kind == "media":
            mxc = next(iter(self.written.media))
            server, media_id = mxc.removeprefix("mxc://").split("/", 1)
            return _call("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", self.token)
        return _call("GET", "/_matrix/client/v3/pushrules/", self.token)

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            for kind in self.KINDS:
                n += 1
                self.tally.requests[kind] = self.tally.requests.get(kind, 0) + 1
                try:
                    status, body = self._request(kind, n)
                    failed = status >= 500
                    why = f"{status} {body[:120]!r}"
                except OSError as exc:  # refused, reset, timed out
                    failed, why = True, repr(exc)
                if failed:
                    self.tally.failed[kind] = self.tally.failed.get(kind, 0) + 1
                    if len(self.tally.errors) < 8:
                        self.tally.errors.append(f"{kind}: {why}")
            time.sleep(0.05)

    def start(self) -> None:
        self.tally = Tally()
        self._stop.clear()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> Tally:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        self.tally.seconds = time.monotonic() - self._started
        return self.tally


def lost(written: Written, token: str) -> list[str]:
    """What a steady client wrote that the server no longer returns: events, media, its device."""
    missing: list[str] = []
    room = urllib.parse.quote(written.room_id)
    for event_id in written.event_ids:
        status, _ = _call("GET", f"/_matrix/client/v3/rooms/{room}/event/{urllib.parse.quote(event_id)}", token)
        if status != 200:
            missing.append(f"event {event_id}: {status}")
    for mxc, sha in written.media.items():
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        status, body = _call("GET", f"/_matrix/client/v1/media/download/{server}/{media_id}", token)
        if status != 200 or hashlib.sha256(body).hexdigest() != sha:
            missing.append(f"media {mxc}: {status}")
    status, body = _call("GET", "/_matrix/client/v3/devices", token)
    if status != 200 or written.device_id not in body.decode(errors="replace"):
        missing.append(f"device {written.device_id}: {status}")
    return missing
