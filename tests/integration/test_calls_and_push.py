"""Calls, TURN and push on one booted stack: Synapse (main, client reader, event creator, pusher),
PostgreSQL, Redis and the routing proxy, plus LiveKit and coturn from their real programs. ntfy and
lk-jwt-service, which no registry here ships, are recording endpoints at their addresses: Synapse
and LiveKit are the consumers under test on the other side of those wires.

Not skipped anywhere: in CI this must run; a missing program fails with what installs it.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from components.coturn import render as coturn
from components.edge.render import PROXY_HTTP_PORT
from components.element_call import render as ec
from components.ntfy import render as ntfy

from . import calls
from .clients import REQUIREMENTS, run_check, verdicts
from .cluster import LOOPBACK, Access, Cluster, boot_config, read_access_log, render
from .turn_client import TurnClient, TurnError

SERVER_NAME = "example.test"
PASSWORD = "correct-horse-battery-staple"
# A public address the relay may reach, and the range every TURN relay must refuse.
PUBLIC_PEER = "9.9.9.9"


def stack_config() -> dict[str, Any]:
    raw = boot_config({"client_reader": 1, "event_creator": 1, "pusher": 1})
    raw.update({
        # Not localhost: a stack on the public Internet, in plain HTTP so no certificate is needed.
        "server_name": SERVER_NAME,
        "tls": {"mode": "none"},
        "target": {"kind": "docker", "http_port": calls.PUBLIC_HTTP_PORT},
        "element_call": {"enabled": True, "livekit": {"external_ip": "203.0.113.7"}},
        "coturn": {"enabled": True, "external_ip": "203.0.113.8"},
        # ntfy's name resolves to a private address (here loopback): Synapse must be told.
        "ntfy": {"enabled": True, "private_address": LOOPBACK},
    })
    return raw


@dataclass
class Stack:
    cluster: Cluster
    hosts_file: Path
    ntfy: calls.Recorder
    jwt: calls.Recorder
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def cfg(self) -> Any:
        return self.cluster.result.cfg

    def log(self) -> list[Access]:
        return read_access_log(self.cluster.access_log)

    def logged(self, match: Any, timeout: float = 15.0) -> list[Access]:
        """The access log's matching lines, once there is one: nginx writes a request's line when
        the request ends, after the upstream (a stand-in that has already recorded it) answered."""
        deadline = time.monotonic() + timeout
        while True:
            found = [a for a in self.log() if match(a)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    result = render(stack_config())
    base = Path(tempfile.mkdtemp(prefix="calls-boot-"))
    hosts_file = calls.write_hosts(result.cfg, base / "hosts")
    cluster = Cluster(result, base, addresses=calls.OWN_ADDRESSES, hosts_file=hosts_file)
    recorders = [calls.Recorder(calls.OWN_ADDRESSES[ntfy.SERVICE], ntfy.PORT, {ntfy.PUSH_PATH: {"rejected": []}}),
                 calls.Recorder(calls.OWN_ADDRESSES[ec.JWT_SERVICE], ec.JWT_PORT, {ec.JWT_WEBHOOK_PATH: {}})]
    publisher = calls.PortPublisher(calls.PUBLIC_HTTP_PORT, PROXY_HTTP_PORT)
    try:
        with cluster:
            calls.start_livekit(cluster)
            calls.start_coturn(cluster, calls.TURNSERVER_FILE_CAPS)
            booted = Stack(cluster, hosts_file, *recorders)
            yield booted
            # Figures for the record (pytest -s shows them); timing is never asserted.
            for name, value in sorted(booted.figures.items()):
                print(f"\n{name}: {value:.3f}")
    finally:
        publisher.stop()
        for recorder in recorders:
            recorder.stop()


# ---------------------------------------------------------------- a client through the proxy


def call(stack: Stack, method: str, path: str, body: Any = None, token: str | None = None,
         host: str | None = None) -> tuple[int, Any]:
    headers = {"Host": host or stack.cfg.host("matrix"), "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{LOOPBACK}:{PROXY_HTTP_PORT}{path}", data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def ok(stack: Stack, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    status, doc = call(stack, method, path, body, token)
    assert status == 200, f"{method} {path}: {status} {doc}"
    return doc


@dataclass
class User:
    user_id: str
    device_id: str
    token: str


def user(stack: Stack, name: str) -> User:
    stack.cluster.register(name, PASSWORD)
    doc = ok(stack, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": PASSWORD})
    return User(doc["user_id"], doc["device_id"], doc["access_token"])


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def room_with(stack: Stack, owner: User, *others: User) -> str:
    room_id: str = ok(stack, "POST", "/_matrix/client/v3/createRoom",
                      {"preset": "private_chat", "invite": [o.user_id for o in others]}, owner.token)["room_id"]
    for other in others:
        ok(stack, "POST", f"/_matrix/client/v3/join/{q(room_id)}", {}, other.token)
    return room_id


def ports_of(stack: Stack, role: str) -> set[int]:
    if role == "main":
        return {stack.cluster.http_port("synapse-main")}
    prefix = f"synapse-{role.replace('_', '-')}-"
    return {stack.cluster.http_port(n) for n in stack.cluster.worker_names() if n.startswith(prefix)}


def served(stack: Stack, method: str, pattern: str) -> list[Access]:
    return [a for a in stack.log() if a.method == method and re.search(pattern, a.path)]


# ---------------------------------------------------------------- LiveKit


def test_a_participant_joins_through_the_proxy_and_the_webhook_reports_its_leaving(stack: Stack) -> None:
    alice = user(stack, "alice")
    room_id = room_with(stack, alice)
    key, secret = calls.livekit_credentials(stack.cluster)
    room = calls.livekit_room_alias(room_id)
    identity = calls.livekit_identity(alice.user_id, alice.device_id, "member-1")
    created = calls.create_room(key, secret, room, stack.cfg.host("livekit"))
    assert created["name"] == room and created["departure_timeout"] == 20

    joined = calls.participate(stack.hosts_file, ec.livekit_url(stack.cfg),
                               calls.join_token(key, secret, room, identity), stay_s=1.0)
    assert joined["joined"], joined
    assert joined["identity"] == identity and joined["room"] == room
    stack.figures["livekit_join_s"] = joined["join_s"]

    # The signalling WebSocket went through the proxy's LiveKit site.
    signalling = [a for a in stack.log() if a.path.startswith("/rtc") and a.route == f"site-{ec.LIVEKIT_SERVICE}"]
    assert any(a.status == 101 and a.ports == (ec.LIVEKIT_PORT,) for a in signalling), signalling

    # lk-jwt-service's address receives the signed participant_left event.
    receiver = api.WebhookReceiver(api.TokenVerifier(key, secret))

    def left(request: calls.Received) -> bool:
        if request.path != ec.JWT_WEBHOOK_PATH:
            return False
        event = receiver.receive(request.body.decode(), request.headers.get("Authorization", ""))
        return event.event == "participant_left" and event.participant.identity == identity and event.room.name == room

    stack.jwt.wait_for(left, timeout=30, what="participant_left webhook")


def test_joining_a_room_nobody_created_is_refused(stack: Stack) -> None:
    key, secret = calls.livekit_credentials(stack.cluster)
    room = calls.livekit_room_alias("!nobody-created-this:" + SERVER_NAME)
    token = calls.join_token(key, secret, room, calls.livekit_identity("@mallory:elsewhere.test", "DEV", "m"))
    refused = calls.participate(stack.hosts_file, ec.livekit_url(stack.cfg), token, stay_s=0)
    assert not refused["joined"], refused
    # And the attempt did not open the room (room.auto_create is false).
    lister = api.AccessToken(key, secret).with_grants(api.VideoGrants(room_list=True)).to_jwt()
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{PROXY_HTTP_PORT}/twirp/livekit.RoomService/ListRooms", data=b"{}", method="POST",
        headers={"Host": stack.cfg.host("livekit"), "Content-Type": "application/json",
                 "Authorization": f"Bearer {lister}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        rooms = json.loads(resp.read()).get("rooms", [])
    assert room not in {r["name"] for r in rooms}


# ---------------------------------------------------------------- coturn


def test_turn_allocation_with_the_credentials_synapse_hands_out(stack: Stack) -> None:
    bob = user(stack, "bob")
    creds = ok(stack, "GET", "/_matrix/client/v3/voip/turnServer", token=bob.token)
    assert f"turn:{stack.cfg.host('turn')}:{coturn.PORT}?transport=udp" in creds["uris"]
    [host_port] = {u.split(":", 1)[1].split("?")[0] for u in creds["uris"]}
    host, port = host_port.rsplit(":", 1)
    assert host == stack.cfg.host("turn")  # public DNS (the hosts file) points it at this host
    client = TurnClient((LOOPBACK, int(port)), creds["username"], creds["password"])
    try:
        started = time.monotonic()
        (relay_ip, relay_port), lifetime = client.allocate()
        stack.figures["turn_allocation_s"] = time.monotonic() - started
        assert relay_ip == stack.cfg.coturn.external_ip
        assert stack.cfg.coturn.relay_port_start <= relay_port <= stack.cfg.coturn.relay_port_end
        assert lifetime > 0
        client.create_permission(PUBLIC_PEER)
        # Relaying into the stack's private network (CVE-2020-26262) is refused.
        for private in ("127.0.0.1", "10.1.2.3", "172.17.0.2", "192.168.1.1"):
            with pytest.raises(TurnError) as refused:
                client.create_permission(private)
            assert refused.value.code == 403, private
        client.release()
    finally:
        client.close()
    # Wrong credentials are refused too: the shared secret really is what authorises.
    forged = TurnClient((LOOPBACK, int(port)), creds["username"], "not-the-password")
    try:
        with pytest.raises(TurnError) as unauthorised:
            forged.allocate()
        assert unauthorised.value.code == 401
    finally:
        forged.close()


# ---------------------------------------------------------------- Synapse's MatrixRTC surface


def test_transports_and_well_known_advertise_the_focus(stack: Stack) -> None:
    carol = user(stack, "carol")
    focus = [{"type": "livekit", "livekit_service_url": ec.jwt_url(stack.cfg)}]
    doc = ok(stack, "GET", "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", token=carol.token)
    assert doc["rtc_transports"] == focus
    status, well_known = call(stack, "GET", "/.well-known/matrix/client", host=SERVER_NAME)
    assert status == 200 and well_known["org.matrix.msc4143.rtc_foci"] == focus
    [hit] = served(stack, "GET", r"/org\.matrix\.msc4143/rtc/transports$")
    assert hit.route == "client_reader" and set(hit.ports) <= ports_of(stack, "client_reader")


def test_delayed_events_work_and_land_on_the_process_that_owns_them(stack: Stack) -> None:
    dave = user(stack, "dave")
    room_id = room_with(stack, dave)
    base = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
    delay = "org.matrix.msc4140.delay=600000"
    cancelled = ok(stack, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/d1?{delay}",
                   {"msgtype": "m.text", "body": "never sent"}, dave.token)["delay_id"]
    # Element Call's own use: its membership's "leave" as a delayed state event, kept alive by restarts.
    state_key = f"_{dave.user_id}_{dave.device_id}_m.call"
    member_path = f"/_matrix/client/v3/rooms/{q(room_id)}/state/org.matrix.msc3401.call.member/{q(state_key)}"
    leave = ok(stack, "PUT", f"{member_path}?{delay}", {}, dave.token)["delay_id"]
    listed = ok(stack, "GET", base, token=dave.token)
    assert {d["delay_id"] for d in listed["delayed_events"]} == {cancelled, leave}
    ok(stack, "POST", f"{base}/{leave}/restart", {}, dave.token)
    ok(stack, "POST", f"{base}/{cancelled}/cancel", {}, dave.token)
    ok(stack, "POST", f"{base}/{leave}/send", {}, dave.token)
    assert ok(stack, "GET", base, token=dave.token)["delayed_events"] == []
    # The sent one is in the room; the cancelled one is not.
    assert ok(stack, "GET", member_path, token=dave.token) == {}
    messages = ok(stack, "GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?dir=b&limit=50", token=dave.token)
    assert not [e for e in messages["chunk"] if e.get("content", {}).get("body") == "never sent"]

    owners = {
        ("PUT", r"/rooms/[^/]+/send/m\.room\.message/d1$"): ("event_creator", "event_creator"),
        ("PUT", r"/state/org\.matrix\.msc3401\.call\.member/"): ("event_creator", "event_creator"),
        ("POST", rf"/delayed_events/{leave}/restart$"): ("client_reader", "client_reader"),
        ("POST", rf"/delayed_events/{cancelled}/cancel$"): ("main_only", "main"),
        ("POST", rf"/delayed_events/{leave}/send$"): ("main_only", "main"),
    }
    problems = []
    for (method, pattern), (route, role) in owners.items():
        hits = served(stack, method, pattern)
        if not hits:
            problems.append(f"{method} {pattern}: not in the access log")
        for a in hits:
            if a.route != route or not set(a.ports) <= ports_of(stack, role) or a.status != 200:
                problems.append(f"{method} {a.path}: route={a.route} upstream={a.upstreams} status={a.status}; "
                                f"wanted {route} on {role}")
    assert not problems, "\n".join(problems)


def test_an_openid_token_is_issued_and_exchanges_for_the_user(stack: Stack) -> None:
    erin = user(stack, "erin")
    issued = ok(stack, "POST", f"/_matrix/client/v3/user/{q(erin.user_id)}/openid/request_token", {}, erin.token)
    assert issued["matrix_server_name"] == SERVER_NAME and issued["token_type"] == "Bearer"
    assert issued["expires_in"] > 0
    # What lk-jwt-service does with it: find the server through its well-known, then ask userinfo.
    status, delegation = call(stack, "GET", "/.well-known/matrix/server", host=SERVER_NAME)
    assert status == 200
    federation_host = delegation["m.server"].rsplit(":", 1)[0]
    status, info = call(stack, "GET", f"/_matrix/federation/v1/openid/userinfo?access_token={issued['access_token']}",
                        host=federation_host)
    assert status == 200 and info == {"sub": erin.user_id}
    for hit in served(stack, "POST", r"/openid/request_token$") + served(stack, "GET", r"/openid/userinfo$"):
        assert hit.route == "main_only" and set(hit.ports) <= ports_of(stack, "main"), hit


# ---------------------------------------------------------------- push


def _pushes(stack: Stack, name: str) -> float:
    service = stack.cluster.services[name]["service"]
    with urllib.request.urlopen(f"http://{LOOPBACK}:{service.metrics_port}/_synapse/metrics", timeout=10) as resp:
        text = resp.read().decode()
    # Synapse labels its metrics (server_name): add up every series of the counter.
    found = re.findall(r"^synapse_http_httppusher_http_pushes_processed_total(?:\{[^}]*\})?\s+(\S+)$", text, re.M)
    return sum(float(v) for v in found)


def test_a_message_is_pushed_by_the_pusher_worker_to_ntfy_through_the_proxy(stack: Stack) -> None:
    frank, grace = user(stack, "frank"), user(stack, "grace")
    room_id = room_with(stack, frank, grace)
    gateway = ntfy.push_gateway_url(stack.cfg)
    assert gateway == f"http://{stack.cfg.host('ntfy')}{ntfy.PUSH_PATH}"
    ok(stack, "POST", "/_matrix/client/v3/pushers/set", {
        "kind": "http", "app_id": "org.unifiedpush.test", "app_display_name": "test",
        "device_display_name": "test", "lang": "en",
        "pushkey": f"{ntfy.base_url(stack.cfg)}/upTestTopic?up=1",
        "data": {"url": gateway, "format": "event_id_only"},
    }, grace.token)
    [pusher] = [n for n in stack.cluster.worker_names() if n.startswith("synapse-pusher-")]
    before = {name: _pushes(stack, name) for name in ("synapse-main", pusher)}

    sent = ok(stack, "PUT", f"/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/push1",
              {"msgtype": "m.text", "body": "ring ring"}, frank.token)
    sent_at = time.monotonic()

    def notified(request: calls.Received) -> bool:
        if request.path != ntfy.PUSH_PATH:
            return False
        note = json.loads(request.body)["notification"]
        return bool(note.get("event_id") == sent["event_id"])

    arrival = stack.ntfy.wait_for(notified, timeout=60, what="push notification")
    stack.figures["push_delivery_s"] = arrival.at - sent_at
    note = json.loads(arrival.body)["notification"]
    assert note["devices"][0]["pushkey"] == f"{ntfy.base_url(stack.cfg)}/upTestTopic?up=1"
    assert note["room_id"] == room_id
    # It came through the proxy's ntfy site, by the public name the pusher's URL carries.
    hops = stack.logged(lambda a: a.path == ntfy.PUSH_PATH)
    assert hops and all(a.route == f"site-{ntfy.SERVICE}" and a.status == 200 for a in hops), hops
    # The pusher worker sent it; main never pushes.
    deadline = time.monotonic() + 10
    while _pushes(stack, pusher) <= before[pusher] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pushes(stack, pusher) > before[pusher]
    assert _pushes(stack, "synapse-main") == before["synapse-main"] == 0


# ---------------------------------------------------------------- Element X readiness


def test_element_x_readiness_check_passes_with_calls_required(stack: Stack) -> None:
    # Last in the module: the check's own transports request would be counted by the test above.
    stack.cluster.register("xena", PASSWORD)
    status, output = run_check(stack.cluster, f"http://{SERVER_NAME}", "xena", PASSWORD, "--calls")
    print("\n" + output)
    assert verdicts(output) == dict.fromkeys(REQUIREMENTS, "PASS"), output
    assert status == 0, output
    rtc = next(line for line in output.splitlines() if line.startswith("PASS rtc-transports:"))
    assert ec.jwt_url(stack.cfg) in rtc and "well-known" in rtc and "rtc/transports" in rtc, rtc
