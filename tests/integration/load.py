"""A seeded load of simulated Matrix users on a booted cluster, with the figures it produces.

Shared by the load benchmark (scripts/bench_cluster.py, several levels, several topologies) and
its short CI mode (test_synapse_boot.py, one level on the booted cluster). Every request of the
load goes through the proxy on loopback; only the set-up the proxy refuses by design (shared-secret
registration, the admin join that seats users in their rooms without the join rate limits) goes
to main's own port, before any level is measured.

The users: one room of everyone, team rooms of mixed sizes, small rooms of two or three, and lobby
rooms nobody is in at first, for the joins. The first N users are the active ones at a level of N.
Each active user keeps one sync going (classic /sync long-polls or simplified sliding sync, half
each) and, at random intervals drawn from the seed, sends messages, typing notices, read
receipts, to-device messages, uploads and downloads media, or joins a lobby room. Requests are
bounded: each has a timeout, each user acts at a fixed mean rate, and each level is held for a
fixed time, then drained.

Figures per level: sustained room events per second, send latency and delivery latency (from the
start of the send to the first sync of another active member that carries the event; an event not
seen by the end of the drain counts as infinitely late), errors, CPU seconds and peak memory per
role (from /proc), main's share of the proxied requests (the access log), and PostgreSQL
connections (pg_stat_activity).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from components.synapse.services import ROLE_LABEL

from .cluster import Cluster, _proc_kib, _tree_pids, read_access_log

PASSWORD = "load-correct-horse-battery"
MAIN_PORT = 8008
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
# Mean actions per active user per second, and their mix (weights).
ACTIONS_PER_USER_S = 0.5
ACTION_WEIGHTS: dict[str, float] = {"message": 50, "typing": 12, "receipt": 15, "to_device": 8,
                                    "upload": 3, "download": 5, "join": 3}
# A user joins at most one lobby room per this many seconds: Synapse's default local join limit
# (0.1/s, burst 10 per user; 1/s, burst 10 per room) is the stack's own and stays untouched.
JOIN_COOLDOWN_S = 20.0
LONG_POLL_MS = 10_000
REQUEST_TIMEOUT_S = 60.0
# Set-up is not measured; registration hashes each password with bcrypt on main, which on a busy
# machine takes long, so its requests wait longer and fewer go at once.
SETUP_TIMEOUT_S = 600.0
DRAIN_S = 10.0
TIMELINE_LIMIT = 20
MEDIA_BYTES = 64 * 1024
SETUP_CONCURRENCY = 4


# ---------------------------------------------------------------- the population


@dataclass
class User:
    index: int
    localpart: str
    sync_mode: str  # "classic" or "sliding"
    rooms: list[str] = field(default_factory=list)  # room keys
    user_id: str = ""
    token: str = ""
    device_id: str = ""
    since: str | None = None  # classic next_batch, or sliding pos
    to_device_since: str | None = None
    last_event: dict[str, str] = field(default_factory=dict)  # room id -> newest event id seen
    last_join: float = -math.inf


@dataclass
class Room:
    key: str
    kind: str  # everyone, team, small, lobby
    members: list[int]
    room_id: str = ""


@dataclass
class Population:
    users: list[User]
    rooms: dict[str, Room]

    def room_by_id(self) -> dict[str, Room]:
        return {r.room_id: r for r in self.rooms.values()}


def plan_population(n_users: int, seed: int) -> Population:
    """Who is in which room: a pure function of the user count and the seed."""
    rng = random.Random(f"population:{seed}")
    users = [User(i, f"load{i:04d}", "sliding" if rng.random() < 0.5 else "classic") for i in range(n_users)]
    rooms: dict[str, Room] = {"everyone": Room("everyone", "everyone", list(range(n_users)))}
    order = list(range(n_users))
    rng.shuffle(order)
    i = t = 0
    while i < n_users:  # teams of 4 to 20
        size = rng.randint(4, 20)
        rooms[f"team{t}"] = Room(f"team{t}", "team", sorted(order[i:i + size]))
        i += size
        t += 1
    for s in range(max(1, n_users // 2)):  # one small room per user, on average
        size = rng.choice((2, 2, 3))
        rooms[f"small{s}"] = Room(f"small{s}", "small", sorted(rng.sample(range(n_users), min(size, n_users))))
    for lob in range(max(2, n_users // 5)):
        rooms[f"lobby{lob}"] = Room(f"lobby{lob}", "lobby", [rng.randrange(n_users)])
    for room in rooms.values():
        for m in room.members:
            users[m].rooms.append(room.key)
    return Population(users, rooms)


# ---------------------------------------------------------------- figures


@dataclass
class Stats:
    sends: list[float] = field(default_factory=list)  # send latencies, s
    deliveries: list[float] = field(default_factory=list)  # delivery latencies, s (inf: never seen)
    by_mode: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # the same, per sync kind
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    events: int = 0  # room events accepted (messages and joins)
    to_device_seen: int = 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; inf where an undelivered event reaches it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class LevelFigures:
    users: int
    hold_s: float
    events_per_s: float
    requests: int
    errors: int
    error_kinds: dict[str, int]
    error_samples: list[str]
    send_ms: dict[str, float]
    delivery_ms: dict[str, float]
    delivery_ms_by_sync: dict[str, dict[str, float]]  # classic /sync, sliding sync: seen deliveries only
    setup_s: float
    deliveries: int
    undelivered: int
    to_device_seen: int
    cpu_s: dict[str, float]
    peak_mib: dict[str, float]
    proxied: int
    on_main: int
    main_share: float
    main_paths: dict[str, int]
    pg_open_peak: int
    pg_busy_peak: int
    pg_max_connections: int


def _ms(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(1000 * percentile(values, q), 1) for q in (50, 95, 99)}


# ---------------------------------------------------------------- /proc and pg_stat_activity


def _cpu_ticks(pid: int) -> int:
    """utime+stime, and those of reaped children, of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def role_of(cluster: Cluster, name: str) -> str:
    entry = cluster.services.get(name)
    if entry is not None and ROLE_LABEL in entry["service"].labels:
        return str(entry["service"].labels[ROLE_LABEL])
    return {"synapse-postgres": "postgres", "synapse-redis": "redis", "synapse-proxy": "nginx"}.get(name, name)


class Sampler:
    """Once a second: memory per role, and PostgreSQL's client connections. CPU at the edges."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.roles: dict[str, list[int]] = defaultdict(list)
        for name, proc in cluster.procs.items():
            if not name.startswith("publish-"):
                self.roles[role_of(cluster, name)].append(proc.popen.pid)
        self.peak_kib: dict[str, int] = {}
        self.pg_open = self.pg_busy = 0
        self.pg_max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pg: Any = None

    def cpu(self) -> dict[str, float]:
        out = {}
        for role, pids in self.roles.items():
            ticks = sum(_cpu_ticks(p) for root in pids for p in _tree_pids(root))
            out[role] = ticks / CLK_TCK
        return out

    def _memory(self) -> dict[str, int]:
        out = {}
        for role, pids in self.roles.items():
            # Synapse and Valkey: resident memory of the process. PostgreSQL and nginx: the
            # proportional memory of the whole tree, since their children share pages.
            if role in {"postgres", "nginx"}:
                out[role] = sum(_proc_kib(p, "smaps_rollup", "Pss:") for root in pids for p in _tree_pids(root))
            else:
                out[role] = sum(_proc_kib(p, "status", "VmRSS:") for root in pids for p in _tree_pids(root))
        return out

    def _connect(self) -> Any:
        import psycopg2

        port = self.cluster.services["synapse-postgres"]["service"].ports[0].port
        conn = psycopg2.connect(host=str(self.cluster.base / "pg-socket"), port=port, user="postgres",
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SHOW max_connections")
            self.pg_max = int(cur.fetchone()[0])
        return conn

    def _pg_sample(self) -> tuple[int, int]:
        with self._pg.cursor() as cur:
            cur.execute("SELECT count(*), count(*) FILTER (WHERE state IS DISTINCT FROM 'idle') "
                        "FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
            n_open, n_busy = cur.fetchone()
        return int(n_open), int(n_busy)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def sample(self) -> None:
        for role, kib in self._memory().items():
            self.peak_kib[role] = max(self.peak_kib.get(role, 0), kib)
        n_open, n_busy = self._pg_sample()
        self.pg_open, self.pg_busy = max(self.pg_open, n_open), max(self.pg_busy, n_busy)

    def start(self) -> None:
        self._pg = self._pg or self._connect()
        self.peak_kib, self.pg_open, self.pg_busy = {}, 0, 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()


def path_class(path: str) -> str:
    """A request path with its identifiers (room, user and event ids, transaction ids) blanked,
    to group what reached main."""
    def blank(part: str) -> bool:
        return part[:1] in {"!", "@", "$", "#"} or "%" in part or (len(part) >= 12 and "." not in part and any(c.isdigit() for c in part))

    return "/".join("*" if blank(p) else p for p in path.split("/"))


# ---------------------------------------------------------------- the driver


class Load:
    """Set up the population on a booted cluster, then run levels and return their figures."""

    def __init__(self, cluster: Cluster, n_users: int, seed: int, proxy: str | None = None,
                 drain_s: float = DRAIN_S):
        self.cluster = cluster
        self.seed = seed
        self.proxy = proxy or f"http://{cluster.address}:8080"
        self.main = f"http://{cluster.address}:{cluster.http_port('synapse-main')}"
        self.pop = plan_population(n_users, seed)
        self.uploaded: list[str] = []
        self.sent_at: dict[str, tuple[float, int]] = {}  # bench id -> (monotonic send start, level no.)
        self.expected: dict[int, int] = Counter()  # level -> deliveries expected
        self.seen: set[tuple[str, int]] = set()
        self.stats: dict[int, Stats] = defaultdict(Stats)
        self.level_no = 0
        self.tag = uuid.uuid4().hex[:6]
        self.session: aiohttp.ClientSession | None = None
        self.drain_s = drain_s
        self.setup_s = 0.0

    # ------------------------------------------------------------ HTTP

    async def request(self, user: User | None, op: str, method: str, url: str, *, body: Any = None,
                      data: bytes | None = None, headers: dict[str, str] | None = None,
                      timeout: float = REQUEST_TIMEOUT_S, count: bool = True) -> Any:
        """One request; a non-2xx answer or a failure is an error of `op` (returns None)."""
        assert self.session is not None
        hdrs = dict(headers or {})
        if not count:
            timeout = max(timeout, SETUP_TIMEOUT_S)
        if user is not None:
            hdrs["Authorization"] = f"Bearer {user.token}"
        stats = self.stats[self.level_no]
        if count:
            stats.ops[op] += 1
        try:
            async with self.session.request(method, url, json=body, data=data, headers=hdrs,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    self._error(op, f"{op}: {resp.status} {raw[:200]!r}", count)
                    return None
                if resp.content_type == "application/json":
                    return json.loads(raw)
                return raw
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeouts, resets: the load's errors, never the driver's
            self._error(op, f"{op}: {type(exc).__name__} {exc}", count)
            return None

    def _error(self, op: str, text: str, count: bool) -> None:
        if not count:
            raise RuntimeError(f"set-up request failed: {text}")
        stats = self.stats[self.level_no]
        stats.errors[op] += 1
        if len(stats.error_samples) < 10:
            stats.error_samples.append(text)

    # ------------------------------------------------------------ set-up

    def _shared_secret(self) -> str:
        hs = yaml.safe_load(self.cluster.file("/conf/homeserver.yaml").read_text())
        if hs.get("registration_shared_secret"):
            return str(hs["registration_shared_secret"])
        return Path(hs["registration_shared_secret_path"]).read_text().strip()

    async def _register(self, localpart: str, admin: bool = False) -> dict[str, Any]:
        """Shared-secret registration, as register_new_matrix_user does it, on main's port."""
        url = f"{self.main}/_synapse/admin/v1/register"
        nonce = (await self.request(None, "setup", "GET", url, count=False))["nonce"]
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, localpart, PASSWORD):
            mac.update(part.encode() + b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body = {"nonce": nonce, "username": localpart, "password": PASSWORD, "admin": admin, "mac": mac.hexdigest()}
        return dict(await self.request(None, "setup", "POST", url, body=body, count=False))

    async def _bounded(self, coros: Iterable[Any]) -> list[Any]:
        sem = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(c: Any) -> Any:
            async with sem:
                return await c

        return await asyncio.gather(*(one(c) for c in coros))

    async def setup(self) -> None:
        """Register the users, create the rooms through the proxy, seat the members, first syncs."""
        self.secret = self._shared_secret()
        admin = await self._register(f"loadadmin{self.tag}", admin=True)
        admin_hdr = {"Authorization": f"Bearer {admin['access_token']}"}
        for user in self.pop.users:
            user.localpart = f"{user.localpart}{self.tag}"
        regs = await self._bounded(self._register(u.localpart) for u in self.pop.users)
        for user, reg in zip(self.pop.users, regs, strict=True):
            user.user_id, user.token, user.device_id = reg["user_id"], reg["access_token"], reg["device_id"]
        users = self.pop.users

        async def create(room: Room) -> None:
            # The first member creates it (spreading Synapse's per-user room creation limit).
            body = {"preset": "public_chat", "name": f"{room.key}", "visibility": "private"}
            made = await self.request(users[room.members[0]], "setup", "POST",
                                      f"{self.proxy}/_matrix/client/v3/createRoom", body=body, count=False)
            room.room_id = made["room_id"]

        await self._bounded(create(r) for r in self.pop.rooms.values())
        seats = [(r, m) for r in self.pop.rooms.values() for m in r.members[1:]]
        await self._bounded(
            self.request(None, "setup", "POST", f"{self.main}/_synapse/admin/v1/join/{quote(r.room_id)}",
                         body={"user_id": users[m].user_id}, headers=admin_hdr, count=False)
            for r, m in seats)
        # Each user's first sync sets its position; what it returns is history, not measured.
        await self._bounded(self._sync_once(u, first=True) for u in users)

    # ------------------------------------------------------------ syncing

    async def _sync_once(self, user: User, first: bool = False) -> None:
        if user.sync_mode == "classic":
            await self._classic(user, first)
        else:
            await self._sliding(user, first)

    async def _classic(self, user: User, first: bool) -> None:
        params = {"timeout": "0" if first else str(LONG_POLL_MS),
                  "filter": json.dumps({"room": {"timeline": {"limit": TIMELINE_LIMIT}}})}
        if user.since:
            params["since"] = user.since
        url = f"{self.proxy}/_matrix/client/v3/sync?" + "&".join(f"{k}={quote(v)}" for k, v in params.items())
        got = await self.request(user, "sync", "GET", url, timeout=LONG_POLL_MS / 1000 + REQUEST_TIMEOUT_S,
                                 count=not first)
        if got is None:
            await asyncio.sleep(1)
            return
        user.since = got["next_batch"]
        for room_id, info in got.get("rooms", {}).get("join", {}).items():
            self._saw(user, room_id, info.get("timeline", {}).get("events", []), first)
        self.stats[self.level_no].to_device_seen += len(got.get("to_device", {}).get("events", [])) if not first else 0

    async def _sliding(self, user: User, first: bool) -> None:
        body: dict[str, Any] = {
            "lists": {"all": {"ranges": [[0, 49]], "required_state": [["m.room.create", ""]],
                              "timeline_limit": TIMELINE_LIMIT}},
            "extensions": {"to_device": {"enabled": True}, "typing": {"enabled": True},
                           "receipts": {"enabled": True}},
        }
        if user.to_device_since:
            body["extensions"]["to_device"]["since"] = user.to_device_since
        query = f"?timeout={0 if first else LONG_POLL_MS}" + (f"&pos={quote(user.since)}" if user.since else "")
        got = await self.request(user, "sliding_sync", "POST", f"{self.proxy}{SLIDING_SYNC}{query}", body=body,
                                 timeout=LONG_POLL_MS / 1000 + REQUEST_TIMEOUT_S, count=not first)
        if got is None:
            await asyncio.sleep(1)
            return
        user.since = got["pos"]
        to_device = got.get("extensions", {}).get("to_device", {})
        if to_device.get("next_batch"):
            user.to_device_since = to_device["next_batch"]
        if not first:
            self.stats[self.level_no].to_device_seen += len(to_device.get("events", []))
        for room_id, info in got.get("rooms", {}).items():
            self._saw(user, room_id, info.get("timeline", []), first)

    def _saw(self, user: User, room_id: str, events: list[dict[str, Any]], first: bool) -> None:
        now = time.monotonic()
        for event in events:
            if event.get("event_id"):
                user.last_event[room_id] = event["event_id"]
            bench_id = event.get("content", {}).get("load_id") if isinstance(event.get("content"), dict) else None
            if first or bench_id not in self.sent_at or event.get("sender") == user.user_id:
                continue
            if (bench_id, user.index) in self.seen:
                continue
            self.seen.add((bench_id, user.index))
            started, level = self.sent_at[bench_id]
            self.stats[level].deliveries.append(now - started)
            self.stats[level].by_mode[user.sync_mode].append(now - started)

    async def _sync_loop(self, user: User, until: float) -> None:
        while time.monotonic() < until:
            await self._sync_once(user)

    # ------------------------------------------------------------ acting

    async def _act(self, user: User, rng: random.Random, active: int) -> None:
        actions, weights = zip(*ACTION_WEIGHTS.items(), strict=True)
        action = rng.choices(actions, weights)[0]
        rooms = [self.pop.rooms[k] for k in user.rooms]
        # Conversation happens mostly in small rooms and teams, some in the room of everyone.
        room = rng.choices(rooms, [{"small": 5, "team": 3, "everyone": 1, "lobby": 1}[r.kind] for r in rooms])[0]
        stats = self.stats[self.level_no]
        c = f"{self.proxy}/_matrix/client/v3"
        if action == "typing":
            await self.request(user, "typing", "PUT", f"{c}/rooms/{quote(room.room_id)}/typing/{quote(user.user_id)}",
                               body={"typing": True, "timeout": 5000})
            action = "message"  # someone typing goes on to say it
        if action == "message":
            bench_id = f"{user.index}.{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
            content = {"msgtype": "m.text", "body": f"load message {bench_id}", "load_id": bench_id}
            started = time.monotonic()
            self.sent_at[bench_id] = (started, self.level_no)
            got = await self.request(user, "send", "PUT",
                                     f"{c}/rooms/{quote(room.room_id)}/send/m.room.message/{bench_id}",
                                     body=content)
            if got is not None:
                stats.sends.append(time.monotonic() - started)
                stats.events += 1
                self.expected[self.level_no] += sum(1 for m in room.members if m < active and m != user.index)
            else:
                del self.sent_at[bench_id]
        elif action == "receipt":
            event_id = user.last_event.get(room.room_id)
            if event_id:
                await self.request(user, "receipt", "POST",
                                   f"{c}/rooms/{quote(room.room_id)}/receipt/m.read/{quote(event_id)}", body={})
        elif action == "to_device":
            peer = self.pop.users[rng.randrange(active)]
            txn = uuid.UUID(int=rng.getrandbits(128)).hex
            body = {"messages": {peer.user_id: {peer.device_id: {"load": txn}}}}
            await self.request(user, "to_device", "PUT", f"{c}/sendToDevice/org.example.load/{txn}", body=body)
        elif action == "upload":
            blob = rng.randbytes(MEDIA_BYTES)
            got = await self.request(user, "upload", "POST", f"{self.proxy}/_matrix/media/v3/upload?filename=load.bin",
                                     data=blob, headers={"Content-Type": "application/octet-stream"})
            if got is not None:
                self.uploaded.append(got["content_uri"])
        elif action == "download" and self.uploaded:
            server, media_id = self.uploaded[rng.randrange(len(self.uploaded))][len("mxc://"):].split("/", 1)
            await self.request(user, "download", "GET",
                               f"{self.proxy}/_matrix/client/v1/media/download/{server}/{media_id}")
        elif action == "join":
            now = time.monotonic()
            lobbies = [r for r in self.pop.rooms.values() if r.kind == "lobby" and user.index not in r.members]
            if lobbies and now - user.last_join >= JOIN_COOLDOWN_S:
                lobby = lobbies[rng.randrange(len(lobbies))]
                user.last_join = now
                if await self.request(user, "join", "POST", f"{c}/join/{quote(lobby.room_id)}", body={}) is not None:
                    lobby.members.append(user.index)
                    user.rooms.append(lobby.key)
                    stats.events += 1

    async def _act_loop(self, user: User, until: float, active: int) -> None:
        rng = random.Random(f"acts:{self.seed}:{user.index}:{self.level_no}")
        while True:
            await asyncio.sleep(rng.expovariate(ACTIONS_PER_USER_S))
            if time.monotonic() >= until:
                return
            await self._act(user, rng, active)

    # ------------------------------------------------------------ a level

    async def level(self, active: int, hold_s: float, sampler: Sampler) -> LevelFigures:
        self.level_no += 1
        log_from = self.cluster.access_log.stat().st_size
        sampler.start()
        cpu0 = sampler.cpu()
        t0 = time.monotonic()
        until = t0 + hold_s
        users = self.pop.users[:active]
        syncs = [asyncio.create_task(self._sync_loop(u, until + self.drain_s)) for u in users]
        await asyncio.gather(*(self._act_loop(u, until, active) for u in users))
        await asyncio.sleep(max(0.0, until + self.drain_s - time.monotonic()))
        for task in syncs:
            task.cancel()
        await asyncio.gather(*syncs, return_exceptions=True)
        cpu1 = sampler.cpu()
        sampler.stop()
        stats = self.stats[self.level_no]
        undelivered = max(0, self.expected[self.level_no] - len(stats.deliveries))
        deliveries = stats.deliveries + [math.inf] * undelivered
        log = self._log_since(log_from)
        proxied = [a for a in log if a.upstreams]
        on_main = [a for a in proxied if a.ports and a.ports[-1] == MAIN_PORT]
        return LevelFigures(
            users=active, hold_s=hold_s, events_per_s=round(stats.events / hold_s, 2),
            requests=sum(stats.ops.values()), errors=sum(stats.errors.values()), error_kinds=dict(stats.errors),
            error_samples=stats.error_samples, send_ms=_ms(stats.sends), delivery_ms=_ms(deliveries),
            delivery_ms_by_sync={mode: _ms(v) for mode, v in sorted(stats.by_mode.items())}, setup_s=self.setup_s,
            deliveries=len(stats.deliveries), undelivered=undelivered, to_device_seen=stats.to_device_seen,
            cpu_s={r: round(cpu1[r] - cpu0.get(r, 0.0), 1) for r in sorted(cpu1)},
            peak_mib={r: round(k / 1024, 1) for r, k in sorted(sampler.peak_kib.items())},
            proxied=len(proxied), on_main=len(on_main),
            main_share=round(len(on_main) / max(1, len(proxied)), 4),
            main_paths=dict(Counter(f"{a.method} {path_class(a.path)}" for a in on_main).most_common(8)),
            pg_open_peak=sampler.pg_open, pg_busy_peak=sampler.pg_busy, pg_max_connections=sampler.pg_max,
        )

    def _log_since(self, offset: int) -> list[Any]:
        # The access log holds whole lines; parse only what this level appended.
        tail = self.cluster.base / "logs" / f"access-{self.level_no}.log"
        with open(self.cluster.access_log, "rb") as f:
            f.seek(offset)
            data = f.read()
        tail.write_bytes(data[: data.rfind(b"\n") + 1])
        try:
            return read_access_log(tail)
        finally:
            tail.unlink()

    async def run(self, levels: Iterable[int], hold_s: float) -> list[LevelFigures]:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        sampler = Sampler(self.cluster)
        async with aiohttp.ClientSession(connector=connector) as self.session:
            t0 = time.monotonic()
            await self.setup()
            self.setup_s = round(time.monotonic() - t0, 1)
            try:
                return [await self.level(n, hold_s, sampler) for n in levels]
            finally:
                sampler.close()


def run_load(cluster: Cluster, levels: Iterable[int], hold_s: float, seed: int,
             drain_s: float = DRAIN_S) -> list[LevelFigures]:
    """Set up max(levels) users on the booted cluster and hold each level for hold_s seconds."""
    levels = list(levels)
    return asyncio.run(Load(cluster, max(levels), seed, drain_s=drain_s).run(levels, hold_s))


def knee(figures: list[LevelFigures], limit_ms: float = 1000.0) -> int | None:
    """The first level whose p95 delivery latency exceeds the limit."""
    return next((f.users for f in figures if f.delivery_ms["p95"] > limit_ms), None)


# The short mode, which CI runs on the booted every-role cluster (test_synapse_boot.py).
SHORT_LEVELS: tuple[int, ...] = (10,)
SHORT_HOLD_S = 60.0
SHORT_DRAIN_S = 5.0
# The guard the short mode holds a worker topology to: main keeps (almost) nothing but its own.
MAIN_SHARE_LIMIT = 0.05


def guard_problems(figures: list[LevelFigures], worker_topology: bool) -> list[str]:
    """What the short mode fails on: any error, or main's share above the limit on a worker
    topology. Timing is never judged here (machines differ; the benchmark prints it)."""
    problems = []
    for f in figures:
        if f.errors:
            problems.append(f"{f.users} users: {f.errors} errors {f.error_kinds}: " + "; ".join(f.error_samples))
        if worker_topology and f.main_share > MAIN_SHARE_LIMIT:
            problems.append(f"{f.users} users: main served {f.on_main} of {f.proxied} proxied requests "
                            f"({100 * f.main_share:.1f} % > {100 * MAIN_SHARE_LIMIT:.0f} %): {f.main_paths}")
    return problems


def as_dict(figures: list[LevelFigures]) -> list[dict[str, Any]]:
    return [asdict(f) for f in figures]
