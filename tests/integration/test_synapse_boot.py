"""Boot the rendered stack (PostgreSQL, Redis, Synapse main + every worker role, nginx) and use it.

Not skipped anywhere: in CI (CI=true) this must run; a missing binary fails with a clear message
(cluster.require_binaries). One boot serves every test in the module.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.checks import view_of
from components.monitoring import alerts as alert_table

from . import alert_delivery, dashboard_queries
from .clients import REQUIREMENTS, run_check, verdicts
from .cluster import ALL_ROLES_COUNTS, PROXY_URL, Access, Cluster, boot_config, read_access_log, render
from .load import SHORT_DRAIN_S, SHORT_HOLD_S, SHORT_LEVELS, guard_problems, run_load
from .workload import PASSWORD, Facts, SteadyLoad, run_workload

MAIN_PORT = 8008
# The steady workload's windows, in requests: enough for every client to have used each of its
# request kinds several times (before the kill) and for each process to have used every pooled
# connection it held (after).
STEADY_WARM_UP_REQUESTS = 60
STEADY_OBSERVED_REQUESTS = 200


# The Docker host sits behind a front proxy of the operator's at this loopback address
# (target.trusted_proxies); every other address, such as UNTRUSTED_SOURCE, is a client's own.
FRONT_PROXY = "127.0.0.9"
UNTRUSTED_SOURCE = "127.0.0.8"
CLAIMED_CLIENT = "203.0.113.7"
# Synapse batches the client addresses it saw into the database every 5 s.
WHOIS_WAIT_S = 60.0


@pytest.fixture(scope="module")
def booted() -> Iterator[tuple[Cluster, Facts, list[Access]]]:
    raw = boot_config(ALL_ROLES_COUNTS)
    raw["target"]["trusted_proxies"] = [f"{FRONT_PROXY}/32"]
    # Element Call as a localhost stack has it: unset, hence off (it cannot work on localhost;
    # Synapse's own loader judges its homeserver keys in test_synapse_config).
    del raw["element_call"]
    result = render(raw)
    with Cluster(result) as cluster:
        facts = run_workload(cluster)
        yield cluster, facts, read_access_log(cluster.access_log)


def test_every_process_is_healthy(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    cluster, _facts, _log = booted
    expected = {"synapse-postgres", "synapse-pgbouncer", "synapse-redis", "synapse-proxy", *cluster.synapse_names()}
    assert set(cluster.boot_s) == expected
    # Every role in the table runs, the counted ones as often as asked.
    workers = cluster.worker_names()
    for role, count in ALL_ROLES_COUNTS.items():
        prefix = f"synapse-{role.replace('_', '-')}-"
        assert len([w for w in workers if w.startswith(prefix) and w[len(prefix):].isdigit()]) == count, role
    for name, proc in cluster.procs.items():
        assert proc.popen.poll() is None, f"{name} died after boot:\n{proc.tail()}"


def test_messages_flow_through_the_proxy(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    _cluster, facts, _log = booted
    assert len(facts.sent) >= 20
    # Bob's /sync shows alice's messages exactly once each, in send order.
    assert facts.synced == facts.sent
    assert facts.typing_seen, "typing notice never reached the other user's sync"
    assert facts.receipt_seen, "read receipt never reached the other user's sync"
    assert facts.upload_sha == facts.download_sha
    assert facts.pages >= 2, "expected /messages to paginate"
    assert [b for b in facts.paginated if b in set(facts.sent)] == facts.sent


def test_well_known_is_json_with_cors(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    _cluster, facts, _log = booted
    client, cors = facts.well_known["/.well-known/matrix/client"]
    assert client["m.homeserver"]["base_url"].rstrip("/") == "http://localhost:8080"
    assert cors == "*"
    server, cors = facts.well_known["/.well-known/matrix/server"]
    assert "m.server" in server
    assert cors == "*"


def test_a_localhost_stack_advertises_no_rtc_focus(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    # No focus clients would fail to reach: Element Call is off on a localhost stack.
    cluster, facts, _log = booted
    assert cluster.result.cfg.element_call.enabled is False
    client, _cors = facts.well_known["/.well-known/matrix/client"]
    assert "org.matrix.msc4143.rtc_foci" not in client
    assert not {e["service"].name for e in cluster.result.services} & {"livekit", "lk-jwt-service", "element-call"}


def test_a_worker_publishes_the_server_signing_key(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    _cluster, facts, _log = booted
    keys = facts.server_keys
    assert keys["server_name"] == "localhost"
    assert keys["verify_keys"], keys
    assert keys["signatures"]["localhost"].keys() == keys["verify_keys"].keys()


# Request classes the workload makes: (label, method, path regex, intended route group, role serving it).
CLASSES: tuple[tuple[str, str, str, str, str], ...] = (
    ("login", "POST", r"/_matrix/client/v3/login$", "client_reader", "client_reader"),
    ("createRoom", "POST", r"/_matrix/client/v3/createRoom$", "client_reader", "client_reader"),
    ("invite", "POST", r"/_matrix/client/v3/rooms/[^/]+/invite$", "event_creator", "event_creator"),
    ("join", "POST", r"/_matrix/client/v3/join/", "event_creator", "event_creator"),
    ("send", "PUT", r"/_matrix/client/v3/rooms/[^/]+/send/", "event_creator", "event_creator"),
    ("sync", "GET", r"/_matrix/client/v3/sync$", "sync", "sync"),
    ("typing", "PUT", r"/_matrix/client/v3/rooms/[^/]+/typing/", "typing", "typing"),
    ("receipt", "POST", r"/_matrix/client/v3/rooms/[^/]+/receipt/", "receipts", "receipts"),
    ("read_markers", "POST", r"/_matrix/client/v3/rooms/[^/]+/read_markers$", "receipts", "receipts"),
    ("upload", "POST", r"/_matrix/media/v3/upload$", "media", "media_repository"),
    ("download", "GET", r"/_matrix/client/v1/media/download/", "media", "media_repository"),
    ("messages", "GET", r"/_matrix/client/v3/rooms/[^/]+/messages$", "messages", "client_reader"),
    ("logout", "POST", r"/_matrix/client/v3/logout$", "main_only", "main"),
    ("server_keys", "GET", r"/_matrix/key/v2/server$", "server_keys", "federation_inbound"),
)


def _role_ports(cluster: Cluster, role: str) -> set[int]:
    if role == "main":
        return {MAIN_PORT}
    prefix = f"synapse-{role.replace('_', '-')}-"
    return {cluster.http_port(n) for n in cluster.worker_names() if n.startswith(prefix) and n[len(prefix):].isdigit()}


def test_each_request_class_reaches_its_worker(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    cluster, _facts, log = booted
    problems = []
    for label, method, pattern, route, role in CLASSES:
        hits = [a for a in log if a.method == method and re.search(pattern, a.path)]
        if not hits:
            problems.append(f"{label}: no request in the access log")
            continue
        ports = _role_ports(cluster, role)
        for a in hits:
            if a.route != route or not a.ports or not set(a.ports) <= ports or not 200 <= a.status < 300:
                problems.append(f"{label}: {a.method} {a.path} -> route={a.route} upstream={a.upstreams} "
                                f"status={a.status}; wanted route={route} on {sorted(ports)}")
    assert not problems, "\n".join(problems)


def test_main_serves_only_main_routes(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    _cluster, _facts, log = booted
    on_main = [a for a in log if MAIN_PORT in a.ports]
    assert on_main, "the workload's logout should have reached main"
    wrong = [f"{a.method} {a.path} route={a.route}" for a in on_main if a.route not in {"main", "main_only"}]
    assert not wrong, "main served requests that belong to a worker:\n" + "\n".join(wrong)
    # And the reverse: nothing routed to main's groups went elsewhere.
    stray = [f"{a.method} {a.path} -> {a.upstreams}" for a in log
             if a.route in {"main", "main_only"} and a.ports and set(a.ports) != {MAIN_PORT}]
    assert not stray, "\n".join(stray)


def _through_proxy_from(source: str, method: str, path: str, token: str | None = None,
                        body: Any = None) -> Any:
    """One request to the proxy from the loopback address `source`, claiming to forward CLAIMED_CLIENT."""
    url = urllib.parse.urlsplit(PROXY_URL)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30, source_address=(source, 0))
    headers = {"X-Forwarded-For": CLAIMED_CLIENT, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        content = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, f"{method} {path} from {source}: {resp.status} {content[:300]!r}"
    return json.loads(content)


def _recorded_addresses(cluster: Cluster, admin_token: str, user_id: str) -> set[str]:
    """The client addresses Synapse recorded for `user_id`, as its admin API's whois lists them
    (on main's own port: the proxy refuses the admin API)."""
    url = (f"http://{cluster.address}:{MAIN_PORT}/_synapse/admin/v1/whois/"
           + urllib.parse.quote(user_id, safe=""))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin_token}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        whois = json.loads(resp.read())
    return {connection["ip"] for device in whois["devices"].values()
            for session in device["sessions"] for connection in session["connections"]}


def test_synapse_records_the_forwarded_client_only_from_the_trusted_front(
        booted: tuple[Cluster, Facts, list[Access]]) -> None:
    """Two users log in and ask /whoami through the proxy, each request claiming to forward
    CLAIMED_CLIENT: one from an untrusted loopback address, one from the front proxy's
    (target.trusted_proxies). Synapse records the first with the address that connected and the
    second with the claimed client, as its admin API's whois reads them back."""
    cluster, _facts, _log = booted
    cluster.register("xff-admin", PASSWORD, admin=True)
    admin = _through_proxy_from(UNTRUSTED_SOURCE, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "xff-admin"},
        "password": PASSWORD})["access_token"]
    expected = {UNTRUSTED_SOURCE: UNTRUSTED_SOURCE, FRONT_PROXY: CLAIMED_CLIENT}
    users: dict[str, str] = {}
    for source in expected:
        name = f"xff-from-{source.replace('.', '-')}"
        cluster.register(name, PASSWORD)
        token = _through_proxy_from(source, "POST", "/_matrix/client/v3/login", body={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
            "password": PASSWORD})["access_token"]
        users[source] = _through_proxy_from(source, "GET", "/_matrix/client/v3/account/whoami", token)["user_id"]
    deadline = time.monotonic() + WHOIS_WAIT_S
    recorded = {source: _recorded_addresses(cluster, admin, user) for source, user in users.items()}
    while not all(recorded.values()) and time.monotonic() < deadline:
        time.sleep(1)
        recorded = {source: _recorded_addresses(cluster, admin, user) for source, user in users.items()}
    print(f"\nrecorded by Synapse, by connecting address: {recorded}")
    assert recorded == {source: {address} for source, address in expected.items()}


def test_element_x_readiness_check_passes_and_sliding_sync_reaches_the_sync_worker(
        booted: tuple[Cluster, Facts, list[Access]]) -> None:
    cluster, _facts, _log = booted
    cluster.register("xavier", PASSWORD)
    status, output = run_check(cluster, "http://localhost:8080", "xavier", PASSWORD)
    print("\n" + output)  # the check's own report, for the record (pytest -s)
    assert verdicts(output) == dict.fromkeys(REQUIREMENTS, "PASS"), output
    assert status == 0, output
    assert PASSWORD not in output
    # The sliding-sync request went where the worker table sends sync: the sync worker, not main.
    hits = [a for a in read_access_log(cluster.access_log)
            if a.method == "POST" and a.path == "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"]
    assert hits, "no sliding-sync request in the access log"
    ports = _role_ports(cluster, "sync")
    wrong = [f"route={a.route} upstream={a.upstreams} status={a.status}" for a in hits
             if a.route != "sync" or not a.ports or not set(a.ports) <= ports or a.status != 200]
    assert not wrong, f"sliding sync wanted route=sync on {sorted(ports)}:\n" + "\n".join(wrong)


def test_a_short_load_keeps_main_idle_and_makes_no_errors(booted: tuple[Cluster, Facts, list[Access]]) -> None:
    """The load benchmark's short mode (scripts/bench_cluster.py --short) on this boot: seeded
    users sync (classic and sliding), send, type, read, send to-device messages, upload, download
    and join through the proxy for one level. It fails on any error, or when main serves more
    than its small share; its timings are printed, never judged."""
    cluster, _facts, _log = booted
    figures = run_load(cluster, SHORT_LEVELS, SHORT_HOLD_S, seed=1, drain_s=SHORT_DRAIN_S)
    for f in figures:
        print(f"\n{f.users} users for {f.hold_s:.0f}s: {f.events_per_s} events/s, send {f.send_ms} ms, "
              f"delivery {f.delivery_ms} ms, main {f.on_main}/{f.proxied}, PostgreSQL busy/open "
              f"{f.pg_busy_peak}/{f.pg_open_peak}, set-up {f.setup_s}s, CPU s {f.cpu_s}")
    assert figures[0].requests > 100, "the load hardly ran"
    assert figures[0].deliveries > 0, "no message reached another member's sync"
    assert not guard_problems(figures, worker_topology=True), "\n".join(guard_problems(figures, True))


def test_every_dashboard_panel_has_data_from_real_prometheus(booted: tuple[Cluster, Facts, list[Access]],
                                                             tmp_path: Path) -> None:
    """Debian's Prometheus and exporters scrape this boot from the rendered prometheus.yml: every
    declared Synapse process is up, and every query of every rendered Grafana dashboard returns
    data (a panel that can only be empty fails, named)."""
    cluster, _facts, _log = booted
    missing = dashboard_queries.missing_binaries()
    assert not missing, f"Debian's prometheus and exporters are needed (scripts/test installs them): {missing}"
    started = time.monotonic()
    with dashboard_queries.scraping(cluster, tmp_path) as scraped:
        dashboard_queries.wait_all_up(scraped.api, scraped.target_count)
        up_s = time.monotonic() - started
        synapse_up = [r["metric"]["instance"] for r in dashboard_queries.up_targets(scraped.api)
                      if r["metric"]["job"] == "synapse" and r["value"][1] == "1"]
        assert sorted(synapse_up) == sorted(scraped.synapse_targets)
        count, empty = dashboard_queries.empty_panels(scraped.api, scraped.dashboards)
        picture = os.environ.get("DASHBOARD_PICTURE")
        if picture:
            # The README's picture of the overview (docs/): the overview's own queries over a short load.
            begin = time.time()
            run_load(cluster, (5,), SHORT_HOLD_S, seed=2, drain_s=SHORT_DRAIN_S)
            dashboard_queries.draw(scraped.api, scraped.dashboards["matrix-stack-overview.json"], begin, time.time(),
                                   Path(picture))
    print(f"\n{len(scraped.synapse_targets)} Synapse targets up after {up_s:.1f}s; {count} queries of "
          f"{len(scraped.dashboards)} dashboards evaluated in {time.monotonic() - started - up_s:.1f}s")
    assert count > 0
    assert not empty, "panels without data:\n" + "\n".join(empty)


# A down instance of a role with several (the boot runs two generic workers) warns by this alert.
INSTANCE_DOWN = "SynapseInstanceDown"
# ntfy's port is the proxy's, Alertmanager's a Synapse process's: both have a loopback address of their own.
OWN_ADDRESS = "127.0.0.2"


def test_a_killed_worker_pages_through_real_prometheus_and_alertmanager(
        booted: tuple[Cluster, Facts, list[Access]], tmp_path: Path) -> None:
    """Debian's Prometheus scrapes this boot with the rendered rule file (every `for` shortened to
    5s) and alerts the rendered Alertmanager (group_wait 1s), which delivers to ntfy's address
    (a recording endpoint: ntfy is in no registry here). A generic worker killed with SIGKILL is
    named there by its alert; the seconds from kill to delivery are printed. The worker is started
    again before the test ends."""
    cluster, _facts, _log = booted
    targets = view_of(cluster.result.cfg)[0].metrics_targets
    generic = alert_table.roles(targets)["generic"]
    assert len(generic) > 1
    assert INSTANCE_DOWN in {a.name for a in alert_table.stack_alerts(targets)}
    victim = generic[0].service
    proc = cluster.procs[victim]
    ntfy = alert_delivery.NtfyRecorder(OWN_ADDRESS)
    try:
        with alert_delivery.alertmanager(cluster.result.cfg, tmp_path, ntfy.base, OWN_ADDRESS), \
                dashboard_queries.scraping(cluster, tmp_path, alertmanager_host=OWN_ADDRESS, alert_for="5s") as scraped:
            dashboard_queries.wait_all_up(scraped.api, scraped.target_count)
            assert ntfy.first(INSTANCE_DOWN, victim) is None
            os.killpg(proc.popen.pid, signal.SIGKILL)
            killed = time.monotonic()
            proc.popen.wait(timeout=10)
            delivery = alert_delivery.wait(f"{INSTANCE_DOWN} for {victim} at ntfy's address",
                                           lambda: ntfy.first(INSTANCE_DOWN, victim))
            print(f"\n{victim} killed -> {INSTANCE_DOWN} delivered at ntfy's address: {delivery.at - killed:.1f}s")
            assert delivery.path.startswith(f"/{cluster.result.cfg.monitoring.ntfy_topic}?")
    finally:
        ntfy.close()
        if proc.popen.poll() is not None:
            cluster.restart_synapse(victim)
    assert cluster.procs[victim].popen.poll() is None


def test_a_restarted_database_costs_no_request_once_it_is_healthy(
        booted: tuple[Cluster, Facts, list[Access]]) -> None:
    """PostgreSQL killed (as `docker kill` does) and started again under a steady client workload:
    no request sent after it is healthy again fails, every process still runs.

    Synapse alone finds a pooled connection dead only when a transaction fails on it (its retry of
    the OperationalError reuses the dead connection): one failed request per pooled connection.
    Through PgBouncer in transaction pooling (components/postgres/pooler.py) Synapse's connections
    end at the pooler, which outlives the restart and checks each server connection it hands out.

    The workload pauses while the server is down, so every pooled connection is still stale when
    it is back, as a restart shorter than the gaps between a process's transactions leaves them.
    Healthy: the server answers pg_isready and a transaction runs the way Synapse runs one.
    Last in the module: it restarts the database under the other tests' feet.
    """
    cluster, _facts, _log = booted
    with SteadyLoad(cluster) as load:
        load.wait_for(STEADY_WARM_UP_REQUESTS)  # every process has served, its pool is warm
        before = load.count()
        with load.paused():
            killed = time.monotonic()
            cluster.kill_postgres()
            restart_s = cluster.restart_postgres()
            # PgBouncer fails and disconnects a client while its last server login has failed,
            # until it logs in again (a maintenance round, at most a third of a second later):
            # healthy is when a transaction runs through it, as Synapse's own wait probe asks.
            path_s = cluster.wait_for_database()
            healthy = time.monotonic()
        load.wait_for(STEADY_OBSERVED_REQUESTS, since=healthy)
        errors = load.errors(since=healthy)
        observed = load.count(healthy)
    print(f"\nPostgreSQL killed and back: healthy {healthy - killed:.1f}s after the kill "
          f"(restart to healthy {restart_s:.1f}s, then a transaction through the pooler {path_s:.2f}s); "
          f"before the kill: {before} requests; after healthy: {observed} requests, {len(errors)} errors"
          + (f", the last {errors[-1].sent - healthy:.1f}s after healthy" if errors else ""))
    listed = "\n".join(f"+{e.sent - healthy:.1f}s {e.what}: {e.error}" for e in errors)
    assert not errors, f"{len(errors)} requests failed after PostgreSQL was healthy again:\n{listed}"
    for name, proc in cluster.procs.items():
        assert proc.popen.poll() is None, f"{name} died with the database:\n{proc.tail()}"
