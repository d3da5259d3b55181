"""A fixed Matrix client workload, driven with matrix-nio through the public proxy.

Shared by the boot test (which asserts on the returned facts) and the benchmark (which only
counts where the proxy sent the requests). Everything goes through http://127.0.0.1:8080 except
user registration, which uses the shared secret on main's own port because the proxy blocks the
admin API by design.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

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
