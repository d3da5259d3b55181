"""The worker table: the single source of truth for Synapse's worker roles.

Every fact about a role lives in its `Role` entry: the listener resources it needs, the streams
it writes, the shared key that hands it a duty, whether it may scale out, and which request
classes (route groups) it serves. The shared homeserver keys, each worker's file, the proxy's
routes and the services are all derived from this table (homeserver.py, routing.py,
services.py). Adding a role is its entry here plus, when it serves requests no role serves yet,
their route group (the path patterns in routing.py's ROUTE_GROUPS).

Facts follow element-hq/synapse docs/workers.md and synapse/config/workers.py for the pinned
version.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

Balance = Literal["round_robin", "user", "room", "source_ip"]
DutyKind = Literal["list", "single"]

GENERIC_APP = "synapse.app.generic_worker"
# Synapse makes federation requests from whichever process serves the request that needs them
# (a remote join, a profile or key query), not only from the federation senders.
SERVING_QUERIES = "federation queries while serving requests"


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    port_base: int
    resources: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    # The shared key that names this role's instances, and whether it takes a list or one name.
    duty: str | None = None
    duty_kind: DutyKind = "list"
    single: bool = False
    # Media workers must re-enable the media repository in their own file (the one intended
    # per-worker override of a shared key; synapse/config/repository.py).
    media: bool = False
    # Route groups (routing.ROUTE_GROUPS) this role can serve. A group goes to the most dedicated
    # role present (fewest groups); `fallback` roles (generic) only take what no dedicated role has.
    routes: tuple[str, ...] = ()
    fallback: bool = False
    # Works only for federation: idle on a stack that federates with nobody.
    federation_only: bool = False
    # Why its instances dial the internet, besides the federation queries (joins, profiles,
    # server keys) every process serving client or federation requests makes: see
    # `egress_internet`, which the services carry to the targets that restrict egress.
    dials_out: tuple[str, ...] = ()

    @property
    def egress_internet(self) -> tuple[str, ...]:
        reasons = list(self.dials_out)
        if {"client", "federation"} & set(self.resources):
            reasons.append(SERVING_QUERIES)
        return tuple(reasons)

    @property
    def interchangeable(self) -> bool:
        """Two processes of one instance may run at once for a moment: it writes no stream (a
        stream's positions belong to one writer process) and holds no duty only one process may
        run, so a target may start an instance's replacement before it stops the old one."""
        return not (self.streams or self.duty or self.single)

    @property
    def writer(self) -> bool:
        """Stream writers need a replication listener and an instance_map entry."""
        return bool(self.streams)

    def listener_resources(self) -> tuple[str, ...]:
        names = list(self.resources)
        if self.writer:
            names.append("replication")
        return tuple(names) or ("health",)


ROLES: tuple[Role, ...] = (
    Role("generic", "generic worker: client and federation reads, sync, event sending", 9101,
         resources=("client", "federation"), fallback=True,
         routes=("sync", "client_reader", "messages", "event_creator", "federation_reader",
                 "federation_inbound", "server_keys", "user_directory", "device_lists", "reads")),
    Role("sync", "sync and initial sync, sticky by user", 9801, resources=("client",), routes=("sync",)),
    Role("client_reader", "client read endpoints, login and registration", 9901, resources=("client",),
         routes=("client_reader", "messages", "user_directory", "device_lists", "reads")),
    Role("event_creator", "event sending, sticky by room", 10001, resources=("client",),
         routes=("event_creator",)),
    Role("federation_reader", "federation requests other than inbound transactions", 9601,
         resources=("federation",), routes=("federation_reader", "federation_inbound", "server_keys"),
         federation_only=True),
    Role("federation_inbound", "inbound federation transactions, sticky by origin", 10101,
         resources=("federation",), routes=("federation_inbound", "server_keys"), federation_only=True),
    Role("federation_sender", "outbound federation", 9401, duty="federation_sender_instances",
         federation_only=True, dials_out=("outbound federation transactions",)),
    Role("event_persister", "persists events, sharded by room", 9201, streams=("events",)),
    Role("media_repository", "media upload, download, thumbnails and media admin", 9301,
         resources=("media", "client"), streams=("quarantined_media_changes",),
         duty="media_instance_running_background_jobs", duty_kind="single", media=True,
         routes=("media",), dials_out=("remote media", "URL previews")),
    Role("pusher", "sends push notifications", 9501, duty="pusher_instances", dials_out=("push gateways",)),
    Role("appservice", "notifies application services", 10201,
         duty="notify_appservices_from_worker", duty_kind="single", single=True,
         dials_out=("application services",)),
    Role("user_directory", "maintains and searches the user directory", 10301, resources=("client",),
         duty="update_user_directory_from_worker", duty_kind="single", single=True,
         routes=("user_directory",)),
    Role("background", "background tasks", 10401, duty="run_background_tasks_on", duty_kind="single",
         single=True),
    Role("typing", "typing stream writer", 9701, resources=("client",), streams=("typing",), single=True,
         routes=("typing",)),
    Role("to_device", "to-device stream writer", 10501, resources=("client",), streams=("to_device",),
         single=True, routes=("to_device",)),
    Role("account_data", "account data stream writer", 10601, resources=("client",),
         streams=("account_data",), single=True, routes=("account_data",)),
    Role("receipts", "receipts stream writer", 10701, resources=("client",), streams=("receipts",),
         routes=("receipts",)),
    Role("presence", "presence stream writer", 10801, resources=("client",), streams=("presence",),
         single=True, routes=("presence",)),
    Role("push_rules", "push rules stream writer", 10901, resources=("client",), streams=("push_rules",),
         single=True, routes=("push_rules",)),
    Role("device_lists", "device lists stream writer", 11001, resources=("client",),
         streams=("device_lists",), routes=("device_lists",)),
    Role("thread_subscriptions", "thread subscriptions stream writer (MSC4306)", 11101,
         resources=("client",), streams=("thread_subscriptions",), single=True,
         routes=("thread_subscriptions",)),
)

ROLE_BY_NAME = {role.name: role for role in ROLES}
# Every stream some role writes, in the table's order: derived, so a role's stream can never drop
# out of stream_writers.
STREAMS = tuple(dict.fromkeys(stream for role in ROLES for stream in role.streams))
MAX_PER_ROLE = 64

PRESETS: dict[str, dict[str, int]] = {
    "monolith": {},
    # Seed 000's drawing (6 generic, 3 federation readers, 3 senders, 2 persisters, 3 media,
    # 1 pusher and 1 typing writer), plus the receipts and to-device writers it lacks: without
    # them Synapse lets only main serve read receipts and to-device messages, which were 3.8 to
    # 7 % of all requests under the load benchmark (docs/capacity.md).
    "seed-000": {"generic": 6, "federation_reader": 3, "federation_sender": 3, "event_persister": 2,
                 "media_repository": 3, "pusher": 1, "typing": 1, "receipts": 1, "to_device": 1},
}

# Main's own ports. Workers take role.port_base + index; metrics listen 10000 above.
MAIN_HTTP_PORT = 8008
MAIN_REPLICATION_PORT = 9093
MAIN_METRICS_PORT = 19090
METRICS_OFFSET = 10000


@dataclass(frozen=True)
class Process:
    """One Synapse process: main or a worker instance."""

    name: str  # worker_name, container name and instance_map key
    role: Role | None  # None for main
    index: int = 0

    @property
    def is_main(self) -> bool:
        return self.role is None

    @property
    def port(self) -> int:
        return MAIN_HTTP_PORT if self.role is None else self.role.port_base + self.index

    @property
    def replication_port(self) -> int:
        return MAIN_REPLICATION_PORT if self.role is None else self.port

    @property
    def metrics_port(self) -> int:
        return MAIN_METRICS_PORT if self.role is None else self.port + METRICS_OFFSET

    @property
    def egress_internet(self) -> tuple[str, ...]:
        """Why this process dials the internet. Main serves what no worker serves and holds every
        duty no worker holds (sending federation, push, remote media): it always may."""
        if self.role is None:
            return tuple(dict.fromkeys((SERVING_QUERIES, *(r for role in ROLES for r in role.dials_out))))
        return self.role.egress_internet


def counts_for(preset: str, overrides: dict[str, int]) -> dict[str, int]:
    counts = dict(PRESETS[preset])
    counts.update(overrides)
    return {name: counts.get(name, 0) for name in ROLE_BY_NAME if counts.get(name, 0) > 0}


def worker_name(role: Role, index: int) -> str:
    return f"synapse-{role.name.replace('_', '-')}-{index + 1}"


MAIN = Process("synapse-main", None)


@dataclass(frozen=True)
class Topology:
    """Main plus every worker, in table order. Derived from counts only."""

    counts: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, counts: dict[str, int]) -> Topology:
        return cls(tuple((role.name, counts.get(role.name, 0)) for role in ROLES if counts.get(role.name, 0)))

    @functools.cached_property
    def workers(self) -> tuple[Process, ...]:
        # Asked for by every route, file and check that looks at the topology: built once.
        return tuple(
            Process(worker_name(ROLE_BY_NAME[name], i), ROLE_BY_NAME[name], i)
            for name, count in self.counts
            for i in range(count)
        )

    @property
    def processes(self) -> tuple[Process, ...]:
        return (MAIN, *self.workers)

    def instances(self, role_name: str) -> tuple[Process, ...]:
        return tuple(p for p in self.workers if p.role and p.role.name == role_name)

    def writers(self, stream: str) -> tuple[Process, ...]:
        return tuple(p for p in self.workers if p.role and stream in p.role.streams)

    def has(self, role_name: str) -> bool:
        return bool(self.instances(role_name))


def check_counts(preset: str, counts: dict[str, int]) -> list[tuple[str, object, str]]:
    """Impossible topologies, as (key path, value, what is allowed)."""
    return check_preset(preset) + check_role_counts(counts)


def check_preset(preset: str) -> list[tuple[str, object, str]]:
    if preset not in PRESETS:
        return [("synapse.workers.preset", preset, "must be one of: " + ", ".join(repr(p) for p in PRESETS))]
    return []


def check_role_counts(counts: dict[str, int]) -> list[tuple[str, object, str]]:
    """Each role's count on its own: a known role, within its limit."""
    problems: list[tuple[str, object, str]] = []
    for name, count in sorted(counts.items()):
        path = f"synapse.workers.counts.{name}"
        role = ROLE_BY_NAME.get(name)
        if role is None:
            problems.append((path, name, "unknown worker role; roles are: " + ", ".join(ROLE_BY_NAME)))
        elif role.single and count > 1:
            problems.append((path, count, f"at most 1: Synapse allows a single {name} instance"))
        elif count > MAX_PER_ROLE:
            problems.append((path, count, f"at most {MAX_PER_ROLE}"))
    return problems
