"""Two stacks federate through their own proxies: discovery, TLS from a private CA, every
federation role doing its job, and faults that lose nothing.

Stack A (a.test) is a monolith; stack B (b.test) runs federation readers, inbound workers,
senders and a media worker (tests/integration/federation.py says how they are booted and how
names resolve). Not skipped anywhere: a missing binary or library fails with a clear message.
The module's tests share one boot; the fault tests run last because they kill processes.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterator

import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from .clients import REQUIREMENTS, run_check, verdicts
from .cluster import Access, read_access_log
from .federation import Pair, Stack, boot_pair, misrouted
from .federation_workload import MESSAGES, FederationFacts, run_fault, run_federation

Booted = tuple[Pair, FederationFacts]


@pytest.fixture(scope="module")
def fed() -> Iterator[Booted]:
    with boot_pair() as pair:
        yield pair, run_federation(pair)


def _log(stack: Stack, upto: int | None = None) -> list[Access]:
    entries = read_access_log(stack.cluster.access_log)
    return entries if upto is None else entries[:upto]


def _hits(log: list[Access], method: str, pattern: str) -> list[Access]:
    return [a for a in log if a.method == method and re.search(pattern, a.path)]


def test_both_stacks_are_up_with_their_topologies(fed: Booted) -> None:
    pair, _facts = fed
    assert not pair.a.topology.workers, "A is the monolith"
    for role in ("federation_reader", "federation_inbound", "federation_sender", "media_repository"):
        assert len(pair.b.topology.instances(role)) >= (2 if role.startswith("federation") else 1), role
    for stack in pair.stacks():
        for name, proc in stack.cluster.procs.items():
            assert proc.popen.poll() is None, f"{stack.spec.server_name} {name} died:\n{proc.tail()}"


def test_discovery_is_delegated_to_the_proxys_tls_port(fed: Booted) -> None:
    pair, facts = fed
    for stack, other in (pair.a, pair.b), (pair.b, pair.a):
        # The other server asked this one's server name for its delegation, over TLS (the proxy
        # answers the well-known only on the TLS port) ...
        log = _log(stack, facts.access_marks[stack.spec.server_name])
        asked = [a for a in log if a.path == "/.well-known/matrix/server"]
        assert asked and all(a.status == 200 for a in asked), f"{other.spec.server_name} never asked"
        # ... and federation requests then arrived at the delegated host.
        assert _hits(log, "PUT", r"^/_matrix/federation/v1/send/"), "no transaction arrived"
    served = {s.spec.server_name: s.cluster.file("/etc/nginx/live/nginx.conf").read_text() for s in pair.stacks()}
    for stack in pair.stacks():
        doc = json.dumps({"m.server": f"{stack.spec.matrix_host}:443"}, separators=(",", ":"))
        assert doc in served[stack.spec.server_name]


def test_invite_and_join_cross_over_federation(fed: Booted) -> None:
    pair, facts = fed
    assert facts.invite_seen
    joined = pair.a.sql(f"SELECT membership FROM room_memberships WHERE room_id = '{facts.room_id}' "
                        "AND user_id = '@bob:b.test' ORDER BY event_stream_ordering")
    assert joined[-1] == "join", joined
    a_log, b_log = _log(pair.a), _log(pair.b)
    assert _hits(b_log, "PUT", r"^/_matrix/federation/v2/invite/"), "B never received the invite"
    assert _hits(a_log, "GET", r"^/_matrix/federation/v1/make_join/"), "B never asked A for make_join"
    assert _hits(a_log, "PUT", r"^/_matrix/federation/v2/send_join/"), "B never sent its join to A"


def test_messages_arrive_in_order_both_ways(fed: Booted) -> None:
    _pair, facts = fed
    for way in (facts.a_to_b, facts.b_to_a):
        assert len(way.sent) == MESSAGES
        # Each exactly once, in send order.
        assert way.received == way.sent


def test_typing_receipts_and_presence_cross(fed: Booted) -> None:
    _pair, facts = fed
    assert facts.typing_b_saw_a and facts.typing_a_saw_b
    assert facts.receipt_a_saw_b and facts.receipt_b_saw_a
    assert facts.presence_b_saw_a.get("presence") == "online"


def test_media_from_a_is_served_to_b_by_bs_media_worker(fed: Booted) -> None:
    pair, facts = fed
    assert facts.upload_sha == facts.download_sha
    media_id = facts.media_uri.rsplit("/", 1)[1]
    media_ports = {p.port for p in pair.b.topology.instances("media_repository")}
    downloads = _hits(_log(pair.b), "GET", rf"^/_matrix/client/v1/media/download/a\.test/{media_id}$")
    assert downloads and all(a.route == "media" and set(a.ports) <= media_ports for a in downloads), downloads
    assert _hits(_log(pair.a), "GET", rf"^/_matrix/federation/v1/media/download/{media_id}$"), \
        "B's media worker never fetched the file from A"


def test_remote_profile_lookups(fed: Booted) -> None:
    pair, facts = fed
    assert facts.profile_b_saw_a == "Alice of A"
    assert facts.profile_a_saw_b == "Bob of B"
    for stack in pair.stacks():
        assert _hits(_log(stack), "GET", r"^/_matrix/federation/v1/query/profile$"), stack.spec.server_name


def test_backfill_of_history_only_a_had(fed: Booted) -> None:
    pair, facts = fed
    assert facts.history_on_b_before == 0, "B already had A's history before paginating"
    assert facts.backfilled == facts.history
    assert _hits(_log(pair.a), "GET", r"^/_matrix/federation/v1/backfill/"), "B never backfilled from A"


def _verify_key(doc: dict[str, object], key_id: str) -> object:
    keys = doc["verify_keys"]
    assert isinstance(keys, dict)
    key = decode_verify_key_bytes(key_id, decode_base64(keys[key_id]["key"]))
    return key


def test_each_server_fetches_the_others_key_and_verifies_its_events(fed: Booted) -> None:
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.crypto.event_signing import check_event_content_hash
    from synapse.events import make_event_from_dict
    from synapse.events.utils import prune_event

    pair, facts = fed
    sent_by = {"a.test": facts.a_to_b.sent_ids[0], "b.test": facts.b_to_a.sent_ids[0]}
    for origin, fetcher in (pair.a, pair.b), (pair.b, pair.a):
        name = origin.spec.server_name
        doc = facts.key_documents[name]
        assert doc["server_name"] == name
        (key_id,) = doc["verify_keys"]
        key = _verify_key(doc, key_id)
        verify_signed_json(doc, name, key)  # the document is signed by the key it publishes
        # The other server fetched it from this one directly, through this stack's proxy ...
        fetched = _hits(_log(origin, facts.access_marks[name]), "GET", r"^/_matrix/key/v2/server")
        assert fetched and all(a.status == 200 for a in fetched)
        stored = fetcher.sql(f"SELECT key_id, from_server, convert_from(key_json, 'UTF8') FROM server_keys_json "
                             f"WHERE server_name = '{name}'")
        assert stored, f"{fetcher.spec.server_name} has no key of {name}"
        stored_id, from_server, key_json = stored[0].split("\t", 2)
        assert (stored_id, from_server) == (key_id, name)
        assert json.loads(key_json)["verify_keys"] == doc["verify_keys"]
        # ... and the events it accepted from this server verify with that key.
        event_id = sent_by[name]
        row = fetcher.sql("SELECT r.room_version, e.json FROM event_json e JOIN rooms r USING (room_id) "
                          f"WHERE e.event_id = '{event_id}'")
        version, event_json = row[0].split("\t", 1)
        event = make_event_from_dict(json.loads(event_json), KNOWN_ROOM_VERSIONS[version])
        assert check_event_content_hash(event)
        verify_signed_json(prune_event(event).get_pdu_json(), name, key)


def test_every_request_lands_on_the_process_the_worker_table_assigns(fed: Booted) -> None:
    pair, _facts = fed
    wrong: list[str] = []
    for stack in pair.stacks():
        wrong += misrouted(stack, _log(stack), ("/_matrix/", "/_synapse/"))
    assert not wrong, "\n".join(wrong)
    b_log = _log(pair.b)
    for role in ("federation_inbound", "federation_reader"):
        ports = {p.port for p in pair.b.topology.instances(role)}
        assert any(set(a.ports) & ports for a in b_log), f"no request reached B's {role} workers"
    # Main answers only its own routes: everything on main's port was planned for main.
    main_port = pair.b.topology.processes[0].port
    on_main = [a for a in b_log if main_port in a.ports and a.path.startswith("/_matrix/federation/")]
    assert all(a.route in {"main", "main_only"} for a in on_main), on_main


def test_outbound_transactions_leave_only_from_federation_senders(fed: Booted) -> None:
    pair, _facts = fed
    for stack in pair.stacks():
        allowed = {p.name for p in stack.senders()}
        sending = {name for name in stack.cluster.synapse_names()
                   if stack.log_lines(name, "Sending transaction")}
        assert sending, f"{stack.spec.server_name}: no process sent a transaction"
        assert sending <= allowed, f"{stack.spec.server_name}: transactions from {sorted(sending - allowed)}"


def test_element_x_readiness_check_passes_over_tls_from_the_delegated_server_name(fed: Booted) -> None:
    # A user's run against a private deployment: the server name's well-known over TLS, the
    # homeserver on its own host, the private CA trusted with --cacert.
    pair, _facts = fed
    pair.b.cluster.register("xavier", "correct-horse-battery-staple")
    status, output = run_check(pair.b.cluster, f"https://{pair.b.spec.server_name}", "xavier",
                               "correct-horse-battery-staple", "--cacert", str(pair.ca.path),
                               env=pair.b.cluster.synapse_env)
    print("\n" + output)
    assert verdicts(output) == dict.fromkeys(REQUIREMENTS, "PASS"), output
    assert status == 0, output
    assert f"homeserver {pair.b.url}," in output


def _sender_for(stack: Stack, destination: str) -> str:
    names = [p.name for p in stack.senders() if stack.log_lines(p.name, f"TX [{destination}]")]
    assert len(names) == 1, f"expected exactly one sender for {destination}, got {names}"
    return names[0]


def _inbound_for(stack: Stack) -> str:
    by_port = stack.process_by_port()
    sends = _hits(_log(stack), "PUT", r"^/_matrix/federation/v1/send/")
    return by_port[sends[-1].ports[-1]]


def test_killed_federation_sender_loses_nothing(fed: Booted) -> None:
    pair, facts = fed
    victim = _sender_for(pair.b, "a.test")
    fault = run_fault(pair, pair.b, pair.a, victim, facts.room_id, "bob", "alice", "sender-fault")
    assert fault.way.received == fault.way.sent and len(fault.way.sent) == 10
    assert fault.restarted_at > fault.killed_at
    print(f"\nfederation sender {victim} killed: gap {fault.gap_s:.1f}s, first delivery after the kill "
          f"{fault.first_after_kill_s:.1f}s, back healthy after {fault.restarted_at - fault.killed_at:.1f}s")


def test_killed_inbound_worker_loses_nothing(fed: Booted) -> None:
    pair, facts = fed
    victim = _inbound_for(pair.b)
    fault = run_fault(pair, pair.a, pair.b, victim, facts.room_id, "alice", "bob", "inbound-fault")
    assert fault.way.received == fault.way.sent and len(fault.way.sent) == 10
    assert fault.restarted_at > fault.killed_at
    print(f"\ninbound worker {victim} killed: gap {fault.gap_s:.1f}s, first delivery after the kill "
          f"{fault.first_after_kill_s:.1f}s, back healthy after {fault.restarted_at - fault.killed_at:.1f}s")
    delivery = sorted(facts.a_to_b.delivery_s + facts.b_to_a.delivery_s)
    print(f"federated delivery: median {statistics.median(delivery):.3f}s over {len(delivery)} messages")
