"""The worker table and what is derived from it: shared keys, worker files and the proxy's routes.
Pure functions, plus the real nginx checking the rendered nginx.conf."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components.edge import render as edge_render
from components.postgres.render import POOLED_SERVER_CONNECTIONS
from components.synapse import homeserver as hs
from components.synapse import routing, services
from components.synapse.workers import (
    MAIN,
    MAIN_HTTP_PORT,
    MAIN_REPLICATION_PORT,
    PRESETS,
    ROLE_BY_NAME,
    ROLES,
    STREAMS,
    Topology,
    check_counts,
    counts_for,
    worker_name,
)
from config import ConfigError
from config.model import StackConfig
from stack import parse
from tests.conftest import database_server, max_connections, nginx_conf, stack_view

# Route groups of streams only their writer (or main) may write. device_lists is not among them:
# in the pinned Synapse every worker registers the device and key-upload servlets and forwards
# the write to a device_lists writer over replication, so the table lets reader pools serve it.
STREAM_GROUPS = ("typing", "to_device", "account_data", "receipts", "presence", "push_rules",
                 "thread_subscriptions")
EVERY_ROLE = {role.name: (1 if role.single else 2) for role in ROLES}


def cfg_with(counts: dict[str, int] | None = None, preset: str = "monolith", **extra: Any) -> StackConfig:
    raw: dict[str, Any] = {"server_name": "localhost",
                           "synapse": {"workers": {"preset": preset, "counts": counts or {}}, **extra}}
    return parse(raw)


def shared(cfg: StackConfig) -> dict[str, Any]:
    return hs.shared_config(cfg, services.addresses(cfg), {}, server=database_server(cfg))


def plan_for(counts: dict[str, int]) -> routing.RoutingPlan:
    topo = Topology.of(counts_for("monolith", counts))
    address = {p.name: p.name for p in topo.processes}
    return routing.plan(topo, address)


def targets(plan: routing.RoutingPlan, group: str) -> set[str]:
    return {loc.upstream for loc in plan.locations if loc.group == group}


TOPOLOGIES = {
    "seed-000": dict(PRESETS["seed-000"]),
    "every-role": EVERY_ROLE,
    "writers-only": {"typing": 1, "receipts": 3, "device_lists": 2, "event_persister": 4},
}


# ---------------------------------------------------------------- the table itself


def test_the_table_is_consistent() -> None:
    assert len(ROLE_BY_NAME) == len(ROLES)
    ports = [role.port_base for role in ROLES]
    assert len(set(ports)) == len(ports)
    # Port ranges of 64 instances never overlap each other nor main's ports.
    spans = sorted((role.port_base, role.port_base + 63) for role in ROLES)
    for (_a, end), (start, _b) in zip(spans, spans[1:], strict=False):
        assert end < start
    for port in (MAIN_HTTP_PORT, MAIN_REPLICATION_PORT):
        assert not any(lo <= port <= hi for lo, hi in spans)
    for role in ROLES:
        assert set(role.streams) <= set(STREAMS), role.name
        assert set(role.routes) <= {g.name for g in routing.ROUTE_GROUPS} | {routing.READS_GROUP}, role.name
    every_stream = {s for role in ROLES for s in role.streams}
    assert every_stream == set(STREAMS)


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_instance_map_holds_main_and_every_stream_writer(name: str) -> None:
    cfg = cfg_with(TOPOLOGIES[name])
    topo = hs.topology(cfg)
    conf = shared(cfg)
    instance_map = conf["instance_map"]
    assert instance_map["main"] == {"host": "synapse-main", "port": MAIN_REPLICATION_PORT}
    writers = {p.name for p in topo.workers if p.role and p.role.streams}
    assert writers
    assert set(instance_map) == {"main"} | writers
    for process in topo.workers:
        if process.name in instance_map:
            assert instance_map[process.name] == {"host": process.name, "port": process.replication_port}
            # The writer's own file listens for replication on that port.
            listener = hs.worker_config(process)["worker_listeners"][0]
            assert listener["port"] == process.replication_port
            assert "replication" in listener["resources"][0]["names"]


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_stream_writers_match_the_table(name: str) -> None:
    cfg = cfg_with(TOPOLOGIES[name])
    counts = counts_for("monolith", TOPOLOGIES[name])
    conf = shared(cfg)
    expected: dict[str, list[str]] = {}
    for role in ROLES:
        for stream in role.streams:
            for i in range(counts.get(role.name, 0)):
                expected.setdefault(stream, []).append(worker_name(role, i))
    assert conf["stream_writers"] == expected
    assert list(conf["stream_writers"]) == [s for s in STREAMS if s in expected]  # table order


def test_duties_name_their_instances() -> None:
    conf = shared(cfg_with(EVERY_ROLE))
    assert conf["federation_sender_instances"] == ["synapse-federation-sender-1", "synapse-federation-sender-2"]
    assert conf["pusher_instances"] == ["synapse-pusher-1", "synapse-pusher-2"]
    assert conf["media_instance_running_background_jobs"] == "synapse-media-repository-1"
    assert conf["notify_appservices_from_worker"] == "synapse-appservice-1"
    assert conf["update_user_directory_from_worker"] == "synapse-user-directory-1"
    assert conf["run_background_tasks_on"] == "synapse-background-1"
    assert conf["enable_media_repo"] is False
    assert conf["redis"]["enabled"] is True and "password" not in conf["redis"]
    assert conf["redis"]["password_path"].startswith(hs.SECRETS_DIR)


def test_a_monolith_has_no_worker_keys() -> None:
    conf = shared(cfg_with())
    for key in hs.WORKER_TABLE_KEYS - {"listeners", "database"}:
        assert key not in conf, key
    assert len(conf["listeners"]) == 2  # http and metrics, no replication


SINGLE = sorted(role.name for role in ROLES if role.single)


def test_the_single_roles_are_the_ones_synapse_allows_once() -> None:
    assert set(SINGLE) == {"appservice", "user_directory", "background", "typing", "to_device", "account_data",
                           "presence", "push_rules", "thread_subscriptions"}


@pytest.mark.parametrize("role", SINGLE)
def test_a_single_role_may_run_once(role: str) -> None:
    assert check_counts("monolith", {role: 1}) == []
    problems = check_counts("monolith", {role: 2})
    assert problems == [(f"synapse.workers.counts.{role}", 2, f"at most 1: Synapse allows a single {role} instance")]
    with pytest.raises(ConfigError):
        cfg_with({role: 2})


@pytest.mark.parametrize("role", sorted(r.name for r in ROLES if not r.single))
def test_a_scalable_role_may_run_many_times(role: str) -> None:
    assert check_counts("monolith", {role: 5}) == []
    cfg = cfg_with({role: 5})
    assert len(hs.topology(cfg).instances(role)) == 5


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_worker_files_hold_only_worker_keys(name: str) -> None:
    topo = hs.topology(cfg_with(TOPOLOGIES[name]))
    assert topo.workers
    for process in topo.workers:
        assert process.role is not None
        conf = hs.worker_config(process)
        allowed = {"enable_media_repo"} if process.role.media else set()
        assert {k for k in conf if not k.startswith("worker_")} == allowed, process.name
        if process.role.media:
            assert conf["enable_media_repo"] is True
        assert conf["worker_name"] == process.name
        assert conf["worker_app"] == "synapse.app.generic_worker"
        # Shallow merge: nothing in a worker file may shadow a shared key.
        assert not set(conf) & (set(shared(cfg_with(TOPOLOGIES[name]))) - {"enable_media_repo"})


def test_every_worker_loads_the_shared_file_then_its_own() -> None:
    cfg = cfg_with({"generic": 1})
    topo = hs.topology(cfg)
    worker = topo.workers[0]
    assert hs.config_paths(cfg, worker) == (hs.SHARED_CONFIG, hs.DATABASE_CONFIG, hs.worker_config_path(worker))
    # Without a media worker, main holds the media store: the shared file turns the media
    # repository off for every process and main's own file turns it back on.
    assert hs.shared_config(cfg, {n: n for n in ("synapse-main", "synapse-generic-1", "synapse-postgres",
                                                 "synapse-redis")}, {}, server=database_server(cfg))["enable_media_repo"] is False
    assert hs.command(cfg, MAIN)[-6:] == ("--config-path", hs.SHARED_CONFIG, "--config-path", hs.DATABASE_CONFIG,
                                          "--config-path", hs.MAIN_CONFIG)
    assert hs.main_config(cfg) == {"enable_media_repo": True}
    with_media = cfg_with({"generic": 1, "media_repository": 1})
    assert hs.config_paths(with_media, MAIN) == (hs.SHARED_CONFIG, hs.DATABASE_CONFIG)
    assert hs.main_config(with_media) is None
    assert hs.main_config(cfg_with({})) is None  # a monolith reads one file


# ---------------------------------------------------------------- routing


def test_sync_goes_to_a_sync_worker_else_generic_else_main() -> None:
    assert targets(plan_for({"sync": 2, "generic": 3}), "sync") == {"synapse_sync_by_user"}
    assert targets(plan_for({"generic": 3}), "sync") == {"synapse_generic_by_user"}
    assert targets(plan_for({"event_persister": 2}), "sync") == {"synapse_main"}
    assert targets(plan_for({}), "sync") == {"synapse_main"}
    upstreams = plan_for({"sync": 2, "generic": 3}).upstreams
    assert upstreams["synapse_sync_by_user"].servers == ("synapse-sync-1:9801", "synapse-sync-2:9802")
    assert upstreams["synapse_sync_by_user"].balance == "user"


def test_the_most_dedicated_role_wins() -> None:
    plan = plan_for({"generic": 1, "client_reader": 1, "federation_inbound": 1, "federation_reader": 1})
    assert targets(plan, "client_reader") == {"synapse_client_reader"}
    assert targets(plan, "federation_inbound") == {"synapse_federation_inbound_by_source_ip"}
    assert targets(plan, "federation_reader") == {"synapse_federation_reader"}
    assert targets(plan, "event_creator") == {"synapse_generic_by_room"}


@pytest.mark.parametrize("counts", [{"generic": 4}, {"generic": 2, "client_reader": 2}, EVERY_ROLE,
                                    dict(PRESETS["seed-000"])], ids=["generic", "client", "every", "seed-000"])
def test_stream_writer_routes_never_go_to_generic_workers(counts: dict[str, int]) -> None:
    plan = plan_for(counts)
    for group in STREAM_GROUPS:
        for upstream in targets(plan, group):
            assert "generic" not in upstream, (group, upstream)
            if upstream.startswith("$"):
                _reads, writes = plan.method_maps[upstream]
                assert writes == "synapse_main", group
            elif counts.get(group):
                assert upstream.startswith(f"synapse_{group}"), (group, upstream)
            else:
                assert upstream == "synapse_main", (group, upstream)


def test_the_seed_preset_leaves_main_no_route_a_client_sends_in_every_conversation() -> None:
    """Under the load benchmark (docs/capacity.md) a preset without receipts and to-device
    writers sent every read receipt and to-device message to main: 3.8 to 7 % of all requests.
    What stays wholly on main: its own servlets, and MSC4306's unstable thread subscriptions."""
    plan = plan_for(dict(PRESETS["seed-000"]))
    on_main = {location.group for location in plan.locations if location.upstream == "synapse_main"}
    assert on_main == {"main_only", "thread_subscriptions"}
    assert targets(plan, "receipts") == {"synapse_receipts"} and targets(plan, "to_device") == {"synapse_to_device"}


def test_device_list_routes_prefer_their_writer() -> None:
    assert targets(plan_for({"generic": 2, "device_lists": 2}), "device_lists") == {"synapse_device_lists"}
    assert targets(plan_for({"generic": 2, "client_reader": 1}), "device_lists") == {"synapse_client_reader"}
    assert targets(plan_for({"event_persister": 1}), "device_lists") == {"synapse_main"}


def test_main_only_routes_stay_on_main() -> None:
    assert targets(plan_for(EVERY_ROLE), "main_only") == {"synapse_main"}


def test_account_data_writes_go_to_main_and_reads_to_generic_without_a_writer() -> None:
    plan = plan_for({"generic": 2})
    (var,) = targets(plan, "account_data")
    assert var.startswith("$")
    assert plan.method_maps[var] == ("synapse_generic", "synapse_main")
    with_writer = plan_for({"generic": 2, "account_data": 1})
    assert targets(with_writer, "account_data") == {"synapse_account_data"}
    assert not with_writer.method_maps.get(var)
    # Without any reader pool, everything goes to main.
    assert targets(plan_for({"event_persister": 1}), "account_data") == {"synapse_main"}


def test_admin_locations_deny_everyone_without_an_allowlist() -> None:
    cfg = cfg_with({"media_repository": 1})
    conf = render(cfg)
    blocks = _location_blocks(conf)
    admin = {pattern: body for pattern, body in blocks.items() if pattern.startswith("^/_synapse/admin")}
    assert len(admin) >= 6 and "^/_synapse/admin/" in admin
    for pattern, body in admin.items():
        assert "deny all;" in body, pattern
        assert "allow " not in body, pattern
    for pattern, body in blocks.items():
        if not pattern.startswith("^/_synapse/admin"):
            assert "deny all;" not in body, pattern

    allowed = render(cfg_with({"media_repository": 1}, admin_api_allowlist=["10.0.0.0/8", "2001:db8::/32"]))
    for pattern, body in _location_blocks(allowed).items():
        if pattern.startswith("^/_synapse/admin"):
            assert body.index("allow 10.0.0.0/8;") < body.index("allow 2001:db8::/32;") < body.index("deny all;")


def test_location_order_is_the_route_group_order_and_deterministic() -> None:
    first = plan_for(EVERY_ROLE)
    reordered = plan_for(dict(reversed(list(EVERY_ROLE.items()))))
    assert first.locations == reordered.locations
    assert first.upstreams == reordered.upstreams
    expected = [(g.name, p) for g in routing.ROUTE_GROUPS for p in g.patterns]
    assert [(loc.group, loc.pattern) for loc in first.locations] == expected
    cfg = cfg_with(EVERY_ROLE)
    assert render(cfg) == render(cfg_with(dict(reversed(list(EVERY_ROLE.items())))))
    text = render(cfg)
    positions = [text.index(f"location ~* {p} {{") for _g, p in expected]
    assert positions == sorted(positions)
    # The catch-alls come after every specific route.
    assert text.index("location ~* ^/_synapse/admin/ {") > positions[-1]
    assert text.index("location ~* ^(/_matrix|/_synapse/client) {") > positions[-1]


def render(cfg: StackConfig, address: dict[str, str] | None = None) -> str:
    """nginx.conf; with `address`, Synapse's processes and the sites dialled there instead (so
    that `nginx -t` resolves them)."""
    if address is None:
        return nginx_conf(cfg)
    view = stack_view(cfg)
    synapse_routes = routing.edge_routes(cfg, hs.topology(cfg), address, ())
    routes = tuple(synapse_routes if r.order == routing.ROUTES_ORDER else r for r in view.edge_routes)
    view = dataclasses.replace(view)
    view.__dict__["edge_routes"] = routes  # the cached property, read by the renderer
    sites = view.sites(cfg)
    return edge_render.render_nginx(cfg, view, sites, {s.upstream_service: "127.0.0.1" for s in sites})


def _location_blocks(conf: str) -> dict[str, str]:
    """`location ~* PATTERN {` -> its body, for the regex locations of the Matrix server."""
    blocks: dict[str, str] = {}
    lines = conf.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("location ~* ") and stripped.endswith("{"):
            pattern = stripped[len("location ~* "):-1].strip()
            body = []
            for inner in lines[i + 1:]:
                if inner.strip() == "}":
                    break
                body.append(inner.strip())
            blocks[pattern] = "\n".join(body)
    return blocks


# ---------------------------------------------------------------- the real nginx


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def relocate_certificates(conf: str, text: str, tmp_path: Path) -> str:
    """`text` (conf, rewritten) with every certificate `conf` names moved under tmp_path, each a
    real key pair made by the stack's own placeholder script."""
    for cert, key in re.findall(r"ssl_certificate (\S+);\s*ssl_certificate_key (\S+);", conf):
        moved_cert, moved_key = tmp_path / "tls" / cert.lstrip("/"), tmp_path / "tls" / key.lstrip("/")
        if not moved_cert.exists():
            _placeholder_certificate(moved_cert, moved_key)
        text = text.replace(f"ssl_certificate {cert};", f"ssl_certificate {moved_cert};")
        text = text.replace(f"ssl_certificate_key {key};", f"ssl_certificate_key {moved_key};")
    return text


def _nginx_test(conf: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the rendered file with only its paths moved into tmp_path.

    Every certificate the file names is created by the stack's own placeholder script (the one
    the ACME container runs before the first issuance), so nginx checks real key pairs."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    text = conf.replace("/tmp/", f"{scratch}/")
    text = relocate_certificates(conf, text, tmp_path)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return subprocess.run([NGINX or "nginx", "-t", "-q", "-c", str(path), "-p", f"{tmp_path}/",
                           "-e", str(tmp_path / "error.log")],
                          capture_output=True, text=True, timeout=60)


def _placeholder_certificate(cert: Path, key: Path) -> None:
    from components.tls import PLACEHOLDER_PY

    made = cert.parent / "made"
    script = cert.parent.parent / "placeholder.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(PLACEHOLDER_PY)
    subprocess.run([sys.executable, str(script), str(made), "test.example.org"], check=True, timeout=60)
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    (made / "fullchain.pem").replace(cert)
    (made / "privkey.pem").replace(key)


LOOPBACK_CASES = {
    "monolith": ({"server_name": "localhost"}),
    "seed-000": ({"server_name": "localhost", "synapse": {"workers": {"preset": "seed-000"}}}),
    "custom-tls": ({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                    "synapse": {"workers": {"counts": EVERY_ROLE},
                                "admin_api_allowlist": ["10.0.0.0/8", "2001:db8::/32"],
                                "federation": {"deny": ["evil.example", "spam.example.net"]}}}),
    # Behind an Ingress and Cloudflare: the real client address is restored (realip module).
    "kubernetes-cloudflare": ({"server_name": "example.org",
                               "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt",
                                          "trusted_proxies": ["10.244.0.0/16"]},
                               "cloudflare": {"enabled": True, "zone": "example.org", "origin_ip": "203.0.113.10"},
                               "cloudflare_api_token": "stand-in",
                               "synapse": {"workers": {"preset": "seed-000"}}}),
}


@pytest.mark.parametrize("name", sorted(LOOPBACK_CASES))
def test_the_real_nginx_accepts_the_rendered_conf(name: str, tmp_path: Path) -> None:
    raw = LOOPBACK_CASES[name]
    cfg = parse(raw, ("cloudflare_api_token",) if "cloudflare_api_token" in raw else ())
    # Upstream hosts must resolve for `nginx -t`: point every service at the loopback address.
    names = set(services.addresses(cfg))
    conf = render(cfg, {n: "127.0.0.1" for n in names})
    done = _nginx_test(conf, tmp_path)
    assert done.returncode == 0, done.stderr + (tmp_path / "error.log").read_text(errors="replace") \
        if (tmp_path / "error.log").exists() else done.stderr


def test_the_nginx_check_catches_a_broken_conf(tmp_path: Path) -> None:
    conf = render(cfg_with(), {n: "127.0.0.1" for n in services.addresses(cfg_with())})
    broken = conf.replace("keepalive 32;", "keepalive thirty-two;", 1)
    assert broken != conf
    assert _nginx_test(broken, tmp_path).returncode != 0


def test_the_client_address_is_restored_only_behind_a_trusted_proxy() -> None:
    local = render(parse({"server_name": "localhost"}), None)
    assert "set_real_ip_from" not in local  # clients connect directly: nothing to trust
    raw = LOOPBACK_CASES["kubernetes-cloudflare"]
    behind = render(parse(raw, ("cloudflare_api_token",)), None)
    assert "set_real_ip_from 10.244.0.0/16;" in behind  # the Ingress controller's pods, as configured
    assert "set_real_ip_from 10.0.0.0/8;" not in behind  # not every pod in the cluster
    assert "set_real_ip_from 173.245.48.0/20;" in behind  # Cloudflare's edge
    assert "real_ip_header X-Forwarded-For;" in behind and "real_ip_recursive on;" in behind
    # On Kubernetes without trusted_proxies, nothing is trusted: no pod can claim a client address.
    bare: dict[str, Any] = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                            "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}}
    assert "set_real_ip_from" not in render(parse(bare), None)


def test_a_docker_hosts_front_proxy_is_trusted_as_configured() -> None:
    # A Docker host behind a load balancer the operator runs: only its addresses are believed.
    raw: dict[str, Any] = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                           "target": {"kind": "docker", "trusted_proxies": ["192.0.2.10", "2001:db8::/64"]}}
    behind = render(parse(raw), None)
    assert re.findall(r"set_real_ip_from (\S+);", behind) == ["192.0.2.10", "2001:db8::/64"]
    assert "real_ip_header X-Forwarded-For;" in behind and "real_ip_recursive on;" in behind
    # With Cloudflare in front as well, both fronts are believed.
    raw |= {"cloudflare": {"enabled": True, "zone": "example.org", "origin_ip": "203.0.113.10"},
            "cloudflare_api_token": "stand-in"}
    both = render(parse(raw, ("cloudflare_api_token",)), None)
    assert "set_real_ip_from 173.245.48.0/20;" in both and "set_real_ip_from 192.0.2.10;" in both


def test_max_connections_fits_every_pool_and_moves_in_hundreds() -> None:
    small, seed = cfg_with({"generic": 1}), parse({"server_name": "localhost", "synapse": {"workers": {"preset": "seed-000"}}})
    unpooled = parse({"server_name": "localhost",
                      "synapse": {"workers": {"preset": "seed-000"}, "database": {"pooler": False}}})
    for cfg in (small, seed, cfg_with(EVERY_ROLE), unpooled):
        processes = len(hs.topology(cfg).processes)
        # Through the pooler Synapse holds its fixed number of server connections, else its pools.
        held = POOLED_SERVER_CONNECTIONS if cfg.synapse.database.pooler else cfg.synapse.database.cp_max * processes
        assert max_connections(cfg) >= held + 20
        assert max_connections(cfg) % 100 == 0
    assert max_connections(unpooled) >= 5 * 22 + 20
    # One more worker in seed-000 (22 processes, 5 per pool) needs no PostgreSQL restart.
    bigger = parse({"server_name": "localhost",
                    "synapse": {"workers": {"preset": "seed-000", "counts": {"generic": 7}}}})
    assert max_connections(bigger) == max_connections(seed)
