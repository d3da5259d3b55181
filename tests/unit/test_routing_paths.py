"""Real requests through the routing plan with nginx's semantics (regex locations, first match,
case-insensitive; method maps for read-only groups): each lands where Synapse serves it."""

from __future__ import annotations

import re

import pytest

import stack
from components.synapse import homeserver as hs
from components.synapse import routing
from components.synapse import services as synapse_services
from components.synapse.workers import ROLES

EVERY_ROLE = {role.name: 1 for role in ROLES}


def _route(plan: routing.RoutingPlan, method: str, path: str) -> str:
    """The upstream nginx would pick: first matching regex location, else the catch-alls."""
    for loc in plan.locations:
        if re.search(loc.pattern, path, re.IGNORECASE):
            upstream = loc.upstream
            if upstream in plan.method_maps:
                reads, writes = plan.method_maps[upstream]
                return reads if method in ("GET", "HEAD") else writes
            return upstream
    if re.search(r"^/_synapse/admin/", path, re.IGNORECASE) or re.search(r"^(/_matrix|/_synapse/client)", path, re.I):
        return "synapse_main"
    return "404"


@pytest.fixture(scope="module")
def every_role_plan() -> routing.RoutingPlan:
    cfg = stack.parse({"server_name": "localhost", "synapse": {"workers": {"counts": EVERY_ROLE}}})
    return routing.plan(hs.topology(cfg), synapse_services.addresses(cfg))


C = "/_matrix/client/v3"
CASES = [
    # Servlets registered only on main (synapse/rest/__init__.py).
    ("POST", f"{C}/rooms/!r:x/report/$e", "synapse_main"),
    ("POST", f"{C}/pushers/set", "synapse_main"),
    ("POST", f"{C}/user/@u:x/openid/request_token", "synapse_main"),
    ("POST", f"{C}/account/3pid/add", "synapse_main"),
    ("PUT", f"{C}/directory/list/room/!r:x", "synapse_main"),
    ("POST", "/_matrix/client/v1/login/get_token", "synapse_main"),
    ("POST", f"{C}/logout", "synapse_main"),
    ("POST", f"{C}/rooms/!r:x/upgrade", "synapse_main"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/abc", "synapse_main"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/abc/cancel", "synapse_main"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/abc/send", "synapse_main"),
    ("GET", "/_matrix/federation/v1/openid/userinfo", "synapse_main"),
    ("POST", "/_synapse/admin/v1/register", "synapse_main"),
    # Workers: the dedicated role of each request class.
    ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events", "synapse_client_reader"),
    ("POST", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/abc/restart", "synapse_client_reader"),
    ("GET", f"{C}/sync", "synapse_sync_by_user"),
    # Element X syncs only with simplified sliding sync.
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "synapse_sync_by_user"),
    ("PUT", f"{C}/rooms/!r:x/send/m.room.message/t1", "synapse_event_creator_by_room"),
    ("PUT", f"{C}/rooms/!r:x/state/m.room.name/", "synapse_event_creator_by_room"),
    ("GET", f"{C}/rooms/!r:x/state", "synapse_client_reader"),
    ("GET", f"{C}/rooms/!r:x/event/$e", "synapse_client_reader"),
    ("GET", f"{C}/rooms/!r:x/messages", "synapse_client_reader_by_room"),
    ("PUT", f"{C}/rooms/!r:x/typing/@u:x", "synapse_typing"),
    ("POST", f"{C}/rooms/!r:x/receipt/m.read/$e", "synapse_receipts"),
    ("PUT", f"{C}/user/@u:x/account_data/m.direct", "synapse_account_data"),
    ("PUT", f"{C}/sendToDevice/m.room.encrypted/t2", "synapse_to_device"),
    ("PUT", f"{C}/presence/@u:x/status", "synapse_presence"),
    ("PUT", f"{C}/pushrules/global/override/r1", "synapse_push_rules"),
    ("POST", f"{C}/keys/upload", "synapse_device_lists"),
    ("GET", "/_matrix/client/v1/media/download/x/y", "synapse_media_repository"),
    ("GET", "/_matrix/client/v1/media/config", "synapse_media_repository"),
    ("POST", "/_matrix/media/v3/upload", "synapse_media_repository"),
    ("PUT", "/_matrix/federation/v1/send/txn1", "synapse_federation_inbound_by_source_ip"),
    ("GET", "/_matrix/federation/v1/event/$e", "synapse_federation_reader"),
    # The server's own keys: any process with the federation resource serves them.
    ("GET", "/_matrix/key/v2/server", "synapse_federation_inbound"),
    ("GET", "/_matrix/key/v2/server/ed25519:a_key", "synapse_federation_inbound"),
    ("POST", "/_matrix/key/v2/query", "synapse_federation_reader"),
    ("POST", f"{C}/user_directory/search", "synapse_user_directory"),
    ("POST", f"{C}/login", "synapse_client_reader"),
    ("GET", "/_synapse/admin/v1/rooms/!r:x", "synapse_client_reader"),
    ("GET", "/_matrix/client/unstable/io.element.msc4306/rooms/!r/thread/$e/subscription", "synapse_thread_subscriptions"),
    ("GET", "/not-matrix", "404"),
]


@pytest.mark.parametrize(("method", "path", "expected"), CASES, ids=[f"{m} {p}" for m, p, _e in CASES])
def test_each_request_reaches_the_process_that_serves_it(
    every_role_plan: routing.RoutingPlan, method: str, path: str, expected: str
) -> None:
    assert _route(every_role_plan, method, path) == expected


def test_without_writers_reads_go_to_workers_and_writes_to_main() -> None:
    cfg = stack.parse({"server_name": "localhost", "synapse": {"workers": {"counts": {"generic": 2}}}})
    plan = routing.plan(hs.topology(cfg), synapse_services.addresses(cfg))
    assert _route(plan, "GET", f"{C}/user/@u:x/account_data/m.direct") == "synapse_generic"
    assert _route(plan, "PUT", f"{C}/user/@u:x/account_data/m.direct") == "synapse_main"
    assert _route(plan, "PUT", f"{C}/rooms/!r:x/typing/@u:x") == "synapse_main"  # never a non-writer
    assert _route(plan, "GET", "/_synapse/admin/v2/users/@u:x") == "synapse_generic"
    assert _route(plan, "PUT", "/_synapse/admin/v2/users/@u:x") == "synapse_main"


@pytest.mark.parametrize(("counts", "expected"), [
    ({"federation_reader": 2}, "synapse_federation_reader"),
    ({"federation_inbound": 1}, "synapse_federation_inbound"),
    ({"generic": 2, "sync": 1}, "synapse_generic"),
    ({"generic": 2, "federation_reader": 1}, "synapse_federation_reader"),
    # No process but main has the federation resource: main answers.
    ({"federation_sender": 2, "event_persister": 2, "media_repository": 1}, "synapse_main"),
    ({}, "synapse_main"),
], ids=["reader", "inbound", "generic", "reader-over-generic", "no-federation-listener", "monolith"])
def test_the_server_keys_are_answered_by_a_federation_listener_when_one_exists(
    counts: dict[str, int], expected: str
) -> None:
    cfg = stack.parse({"server_name": "localhost", "synapse": {"workers": {"counts": counts}}})
    topo, address = hs.topology(cfg), synapse_services.addresses(cfg)
    plan = routing.plan(topo, address)
    assert _route(plan, "GET", "/_matrix/key/v2/server") == expected
    # What answers has the federation resource on its listener: Synapse mounts the key resource
    # only there (synapse/app/generic_worker.py).
    servers = set(plan.upstreams[expected].servers)
    serving = [p for p in topo.processes if f"{address[p.name]}:{p.port}" in servers]
    assert serving
    for process in serving:
        listener = hs.main_listeners(cfg, topo)[0] if process.role is None else None
        names = listener["resources"][0]["names"] if listener else process.role.listener_resources()  # type: ignore[union-attr]
        assert "federation" in names, process.name


@pytest.mark.parametrize(("counts", "expected"), [
    ({"sync": 2, "generic": 1}, "synapse_sync_by_user"),
    ({"generic": 3}, "synapse_generic_by_user"),
    ({}, "synapse_main"),
], ids=["sync", "generic", "monolith"])
def test_sliding_sync_is_sticky_by_user_on_a_sync_or_generic_worker(counts: dict[str, int], expected: str) -> None:
    cfg = stack.parse({"server_name": "localhost", "synapse": {"workers": {"counts": counts}}})
    plan = routing.plan(hs.topology(cfg), synapse_services.addresses(cfg))
    assert _route(plan, "POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync") == expected
    # Case-insensitive, as nginx matches, and only the sync endpoint itself.
    assert _route(plan, "POST", "/_matrix/client/unstable/ORG.MATRIX.SIMPLIFIED_MSC3575/sync") == expected
