"""What two federated users do, through their own stacks' proxies, and what each side observed.

Shared by the federation test (which asserts on the facts) and the benchmark (which prints the
delivery times and where the proxies sent each request).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nio

from .federation import Pair, Stack, client, fetch_json

PASSWORD = "correct-horse-battery-staple"
HISTORY = 6  # messages A has before B joins: B can only get them by backfill
MESSAGES = 20  # each way
STEP_TIMEOUT_S = float(os.environ.get("FEDERATION_STEP_TIMEOUT", "120"))
# An inbound worker killed while it handles a room's events holds that room's lock in the
# database until the lock times out (Synapse: 2 minutes) and another process's periodic pass
# (every minute) takes the staged events over: delivery may take that long, and no longer.
FAULT_TIMEOUT_S = float(os.environ.get("FEDERATION_FAULT_TIMEOUT", "330"))


def _ok(resp: Any, kind: type, what: str) -> Any:
    if not isinstance(resp, kind):
        raise AssertionError(f"{what} failed: {resp!r}")
    return resp


@dataclass
class Direction:
    """Messages one way: bodies in send order, what the other side saw via /sync, and when."""

    sent: list[str] = field(default_factory=list)
    sent_ids: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    delivery_s: list[float] = field(default_factory=list)  # send call started -> seen in the other's /sync


@dataclass
class FederationFacts:
    room_id: str = ""
    invite_seen: bool = False
    history: list[str] = field(default_factory=list)
    history_ids: list[str] = field(default_factory=list)
    history_on_b_before: int = -1  # rows of A's history in B's database before B paginated
    backfilled: list[str] = field(default_factory=list)  # history bodies B's /messages returned, oldest first
    a_to_b: Direction = field(default_factory=Direction)
    b_to_a: Direction = field(default_factory=Direction)
    typing_b_saw_a: bool = False
    typing_a_saw_b: bool = False
    receipt_a_saw_b: bool = False
    receipt_b_saw_a: bool = False
    presence_b_saw_a: dict[str, Any] = field(default_factory=dict)
    upload_sha: str = ""
    download_sha: str = ""
    media_uri: str = ""
    profile_b_saw_a: str = ""
    profile_a_saw_b: str = ""
    access_marks: dict[str, int] = field(default_factory=dict)  # access-log length before the test's own key fetches
    key_documents: dict[str, Any] = field(default_factory=dict)  # server name -> /_matrix/key/v2/server


async def typing_seen(typist: nio.AsyncClient, watcher: nio.AsyncClient, room_id: str) -> bool:
    """The typist starts typing; the watcher syncs until its server relays that over federation."""
    _ok(await typist.room_typing(room_id, True, timeout=30000), nio.RoomTypingResponse, f"{typist.user_id} typing")
    seen = False

    def sees_typing(resp: nio.SyncResponse) -> bool:
        nonlocal seen
        info = resp.rooms.join.get(room_id)
        seen = seen or bool(info and any(
            isinstance(e, nio.TypingNoticeEvent) and typist.user_id in e.users for e in info.ephemeral))
        return seen

    await sync_until(watcher, sees_typing, f"{watcher.user_id} sees {typist.user_id} typing")
    return seen


async def _sync(c: nio.AsyncClient, what: str, timeout_ms: int = 2000) -> nio.SyncResponse:
    sync_filter = {"room": {"timeline": {"limit": 100}}}
    return _ok(await c.sync(timeout=timeout_ms, sync_filter=sync_filter), nio.SyncResponse, what)


async def sync_until(c: nio.AsyncClient, done: Callable[[nio.SyncResponse], bool], what: str,
                     timeout_s: float = STEP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done(await _sync(c, what)):
            return
    raise AssertionError(f"{what}: not seen via /sync within {timeout_s:.0f}s")


async def exchange(sender: nio.AsyncClient, receiver: nio.AsyncClient, room_id: str, count: int, label: str,
                   way: Direction, *, during: Callable[[int], Any] | None = None,
                   timeout_s: float = STEP_TIMEOUT_S) -> None:
    """`sender` sends `count` messages while `receiver` syncs; records order and delivery times.

    `during(i)` runs before message i is sent (a fault, say)."""
    started: dict[str, float] = {}
    wanted: set[str] = set()

    async def send() -> None:
        for i in range(count):
            if during is not None:
                await during(i)
            body = f"{label} {i:02d} {os.urandom(4).hex()}"
            wanted.add(body)
            started[body] = time.monotonic()
            resp = _ok(await sender.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}),
                       nio.RoomSendResponse, f"{label}: send {i}")
            way.sent.append(body)
            way.sent_ids.append(resp.event_id)

    def collect(resp: nio.SyncResponse) -> bool:
        info = resp.rooms.join.get(room_id)
        now = time.monotonic()
        if info is not None:
            for event in info.timeline.events:
                if isinstance(event, nio.RoomMessageText) and event.body.startswith(label + " "):
                    way.received.append(event.body)
                    if event.body in started:
                        way.delivery_s.append(now - started[event.body])
        return len(way.sent) == count and set(way.sent) <= set(way.received)

    sending = asyncio.ensure_future(send())
    try:
        await sync_until(receiver, collect, f"{label}: every message arrives", timeout_s)
    finally:
        await sending


async def login(pair: Pair, stack: Stack, localpart: str, register: bool) -> nio.AsyncClient:
    if register:
        await asyncio.to_thread(stack.cluster.register, localpart, PASSWORD)
    c = client(pair, stack, localpart)
    _ok(await c.login(PASSWORD, device_name="federation"), nio.LoginResponse, f"{localpart} login")
    return c


async def _run(pair: Pair) -> FederationFacts:
    facts = FederationFacts()
    alice = await login(pair, pair.a, "alice", register=True)
    bob = await login(pair, pair.b, "bob", register=True)
    try:
        _ok(await alice.set_displayname("Alice of A"), nio.ProfileSetDisplayNameResponse, "alice displayname")
        _ok(await bob.set_displayname("Bob of B"), nio.ProfileSetDisplayNameResponse, "bob displayname")
        room = _ok(await alice.room_create(name="federation", preset=nio.RoomPreset.private_chat),
                   nio.RoomCreateResponse, "createRoom")
        facts.room_id = room_id = room.room_id
        for i in range(HISTORY):
            body = f"history {i:02d} {os.urandom(4).hex()}"
            sent = _ok(await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}),
                       nio.RoomSendResponse, f"history {i}")
            facts.history.append(body)
            facts.history_ids.append(sent.event_id)

        _ok(await bob.sync(timeout=0), nio.SyncResponse, "bob initial sync")
        _ok(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse, "invite over federation")

        def invited(resp: nio.SyncResponse) -> bool:
            facts.invite_seen = facts.invite_seen or room_id in resp.rooms.invite
            return facts.invite_seen

        await sync_until(bob, invited, "bob sees the invite")
        _ok(await bob.join(room_id), nio.JoinResponse, "bob joins over federation")
        ids = ",".join(f"'{e}'" for e in facts.history_ids)
        facts.history_on_b_before = int(pair.b.sql(f"SELECT count(*) FROM events WHERE event_id IN ({ids})")[0])

        # Back-pagination: B has only the state it joined with; /messages makes it backfill from A.
        token: str | None = None
        newest_first: list[str] = []
        for _ in range(30):
            page = _ok(await bob.room_messages(room_id, start=token, limit=5), nio.RoomMessagesResponse, "/messages")
            newest_first += [e.body for e in page.chunk if isinstance(e, nio.RoomMessageText)]
            if set(facts.history) <= set(newest_first) or not page.end or page.end == token:
                break
            token = page.end
        facts.backfilled = [b for b in reversed(newest_first) if b in set(facts.history)]

        _ok(await alice.sync(timeout=0), nio.SyncResponse, "alice initial sync")
        _ok(await bob.sync(timeout=0), nio.SyncResponse, "bob sync after join")
        await exchange(alice, bob, room_id, MESSAGES, "a-to-b", facts.a_to_b)
        await exchange(bob, alice, room_id, MESSAGES, "b-to-a", facts.b_to_a)

        # Typing, both ways.
        facts.typing_b_saw_a = await typing_seen(alice, bob, room_id)
        facts.typing_a_saw_b = await typing_seen(bob, alice, room_id)

        # Read receipts, both ways.
        last_a, last_b = facts.a_to_b.sent_ids[-1], facts.b_to_a.sent_ids[-1]
        _ok(await bob.update_receipt_marker(room_id, last_a), nio.UpdateReceiptMarkerResponse, "bob receipt")
        _ok(await alice.update_receipt_marker(room_id, last_b), nio.UpdateReceiptMarkerResponse, "alice receipt")

        def receipt_from(user: str, event_id: str) -> Callable[[nio.SyncResponse], bool]:
            def seen(resp: nio.SyncResponse) -> bool:
                info = resp.rooms.join.get(room_id)
                return bool(info and any(isinstance(e, nio.ReceiptEvent) and any(
                    r.user_id == user and r.event_id == event_id for r in e.receipts) for e in info.ephemeral))
            return seen

        await sync_until(alice, receipt_from(bob.user_id, last_a), "alice sees bob's receipt")
        facts.receipt_a_saw_b = True
        await sync_until(bob, receipt_from(alice.user_id, last_b), "bob sees alice's receipt")
        facts.receipt_b_saw_a = True

        # Presence (on by default in Synapse, and the stack does not turn it off).
        status = f"at A {os.urandom(3).hex()}"
        _ok(await alice.set_presence("online", status), nio.PresenceSetResponse, "alice presence")

        def presence(resp: nio.SyncResponse) -> bool:
            for e in resp.presence_events:
                if e.user_id == alice.user_id and e.status_msg == status:
                    facts.presence_b_saw_a = {"presence": e.presence, "status_msg": e.status_msg}
            return bool(facts.presence_b_saw_a)

        await sync_until(bob, presence, "bob sees alice's presence")

        # Media uploaded on A, downloaded by B's client from B's media repository.
        blob = os.urandom(300 * 1024)
        facts.upload_sha = hashlib.sha256(blob).hexdigest()
        upload, _keys = await alice.upload(io.BytesIO(blob), content_type="application/octet-stream",
                                           filename="blob.bin", filesize=len(blob))
        facts.media_uri = _ok(upload, nio.UploadResponse, "upload on A").content_uri
        download = _ok(await bob.download(mxc=facts.media_uri), nio.MemoryDownloadResponse, "download on B")
        facts.download_sha = hashlib.sha256(download.body).hexdigest()

        # Remote profiles, both ways.
        facts.profile_b_saw_a = _ok(await bob.get_profile(alice.user_id), nio.ProfileGetResponse,
                                    "bob looks up alice").displayname or ""
        facts.profile_a_saw_b = _ok(await alice.get_profile(bob.user_id), nio.ProfileGetResponse,
                                    "alice looks up bob").displayname or ""
    finally:
        await alice.close()
        await bob.close()

    # Each server's published keys, read through its proxy (after marking the access logs, so the
    # servers' own fetches are told apart from this one).
    for stack in pair.stacks():
        facts.access_marks[stack.spec.server_name] = len(stack.cluster.access_log.read_text().splitlines())
    for stack in pair.stacks():
        facts.key_documents[stack.spec.server_name] = await fetch_json(pair, f"{stack.url}/_matrix/key/v2/server")
    return facts


def run_federation(pair: Pair) -> FederationFacts:
    return asyncio.run(_run(pair))


# ---------------------------------------------------------------- faults


@dataclass
class FaultFacts:
    victim: str = ""
    killed_at: float = 0.0
    restarted_at: float = 0.0  # healthy again
    way: Direction = field(default_factory=Direction)
    first_after_kill_s: float = -1.0  # kill -> first message sent after the kill seen by the other side
    gap_s: float = -1.0  # longest silence at the receiver between consecutive arrivals, around the fault


async def _fault(pair: Pair, sender_stack: Stack, receiver_stack: Stack, victim: str, room_id: str,
                 sender_user: str, receiver_user: str, label: str, count: int = 10, kill_before: int = 3,
                 down_s: float = 3.0, after_restart: int = 2) -> FaultFacts:
    """`sender_user` keeps sending `count` messages; before message `kill_before`, `victim` (a
    process of either stack) gets SIGKILL, and `down_s` seconds later it is started again with the
    same command. The last `after_restart` messages are sent once it is back: traffic goes on.

    (A federation sender that comes back resumes from its stored stream position when the next
    event reaches it: Synapse pokes the sender on new events, not at start-up.)"""
    facts = FaultFacts(victim=victim)
    owner = sender_stack if victim in sender_stack.cluster.procs else receiver_stack
    sender = await login(pair, sender_stack, sender_user, register=False)
    receiver = await login(pair, receiver_stack, receiver_user, register=False)
    arrivals: list[float] = []
    restart: asyncio.Future[None] | None = None

    async def during(i: int) -> None:
        nonlocal restart
        if i == kill_before:
            proc = owner.cluster.procs[victim]
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
            facts.killed_at = time.monotonic()

            async def later() -> None:
                await asyncio.sleep(down_s)
                await asyncio.to_thread(owner.cluster.restart_synapse, victim)
                facts.restarted_at = time.monotonic()

            restart = asyncio.ensure_future(later())
        if i == count - after_restart and restart is not None:
            await restart

    try:
        _ok(await receiver.sync(timeout=0), nio.SyncResponse, "receiver sync")
        original = receiver.sync

        async def timed_sync(*args: Any, **kwargs: Any) -> Any:
            resp = await original(*args, **kwargs)
            if isinstance(resp, nio.SyncResponse) and room_id in resp.rooms.join:
                n = sum(isinstance(e, nio.RoomMessageText) and e.body.startswith(label + " ")
                        for e in resp.rooms.join[room_id].timeline.events)
                arrivals.extend([time.monotonic()] * n)
            return resp

        receiver.sync = timed_sync  # type: ignore[method-assign]
        await exchange(sender, receiver, room_id, count, label, facts.way, during=during, timeout_s=FAULT_TIMEOUT_S)
        if restart is not None:
            await restart
    finally:
        await sender.close()
        await receiver.close()
    after_kill = [t for t in arrivals if t > facts.killed_at]
    facts.first_after_kill_s = (after_kill[0] - facts.killed_at) if after_kill else -1.0
    points = sorted([facts.killed_at, *arrivals])
    facts.gap_s = max((b - a for a, b in zip(points, points[1:], strict=False)), default=0.0)
    return facts


def run_fault(pair: Pair, sender_stack: Stack, receiver_stack: Stack, victim: str, room_id: str,
              sender_user: str, receiver_user: str, label: str) -> FaultFacts:
    return asyncio.run(_fault(pair, sender_stack, receiver_stack, victim, room_id, sender_user, receiver_user, label))
