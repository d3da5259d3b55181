"""The dev stack's containers, exactly as the Docker adapter declares them, on a real engine.

Debian's Docker engine is started for this module (its own socket, data and exec roots under a
temporary directory) and stopped afterwards; if it cannot start, the module fails with the
engine's error. The program runs under Pulumi's mocks with stand-in secrets; the applier
(engine/applier.py) creates the declared networks, volumes and containers through the Engine
API. Images are stand-ins under the pinned names (engine/images.py): Synapse from PyPI,
PostgreSQL, Redis and nginx from Debian, LiveKit from its Go module; element-call, element-web,
lk-jwt-service and ntfy are PLACEHOLDERS serving only their declared port and health path.

What this proves: the adapter's containers, with their files, users, capabilities, networks,
health checks, restart policy, ordering and published ports, work on a real engine. What it does
not: the real images, or the Pulumi engine and pulumi-docker themselves.

The same engine answers scripts/up-dev's Docker pre-flight (scripts/dev_stack.py) through the
real docker CLI: running, stopped, refusing a user who may not use its socket, and, once the stack
runs, holding the proxy's published port.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from components.platform import docker_hardening as hardening
from components.synapse import homeserver
from config import images
from config.images import facts_for
from render import offline

from ..conftest import ROOT, stack_raw
from . import media_s3, s3_server
from .cluster import WORKLOAD_RATE_LIMITS
from .engine import declared
from .engine import stack as engine_stack
from .engine.applier import (
    CONTAINER,
    Applied,
    Applier,
    ApplyError,
    ChangeApplier,
    Changed,
    long_running,
    remove_declared,
)
from .engine.dockerd import Engine, EngineError
from .workload import PASSWORD, Facts, SteadyClient, Tally, lost, run_workload

sys.path.insert(0, str(ROOT / "scripts"))
import dev_stack  # noqa: E402


@dataclass
class Deployed:
    engine: Engine
    client: docker.DockerClient
    run: offline.Run
    applied: Applied
    healthy_s: float
    image_s: dict[str, float]
    raw: dict[str, typing.Any] = field(default_factory=dict)
    recoveries: dict[str, float] = field(default_factory=dict)
    steady: SteadyClient | None = None
    upgrade: Upgrade | None = None

    @property
    def containers(self) -> list[str]:
        return self.applied.containers

    def name(self, declared: str) -> str:
        """The container's name of a declared container (a name of its revision when the
        service is replaced new first, or a one-shot's)."""
        return str(self.run.by_name(declared).plain_inputs()["name"])

    def cluster(self) -> engine_stack.EngineCluster:
        return engine_stack.EngineCluster(self.client, "synapse-main", 8008, "/conf/homeserver.yaml")

    def workload(self, tag: str) -> Facts:
        return run_workload(self.cluster(), tag)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    # Not under pytest's base temp: other pytest runs on the machine prune old base temps.
    eng = Engine(Path(tempfile.mkdtemp(prefix="matrix-stack-dockerd-")))
    try:
        eng.start()
    except EngineError as exc:
        pytest.fail(f"the Docker engine could not start: {exc}")
    try:
        yield eng
    finally:
        eng.stop()
        shutil.rmtree(eng.root, ignore_errors=True)


def dev_raw() -> dict[str, typing.Any]:
    """The dev stack as its file says, with only the rate limits raised for the workload, which
    runs once fresh and again after every fault."""
    raw = stack_raw("dev")
    raw["synapse"] = {**raw["synapse"], "rate_limits": WORKLOAD_RATE_LIMITS}
    return raw


@pytest.fixture(scope="module")
def dev_run() -> offline.Run:
    return offline.run(dev_raw(), stack="dev")


@dataclass
class Upgrade:
    """The stack as the pull request's base declares it, applied first, then upgraded to HEAD
    under a steady client (engine/declared.py says which commit the base is)."""

    base: str
    applied_s: float
    changed: Changed
    tally: Tally
    lost: list[str]
    steady_written: int = 0  # events the steady client wrote before and during the upgrade


@pytest.fixture(scope="module")
def deployed(engine: Engine, dev_run: offline.Run, say: Callable[[str], None],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The stack at the base commit, then upgraded to this commit's declarations: every test
    below runs on a stack reached the way an operator reaches it."""
    client = engine.client()
    base_ref = declared.upgrade_base(ROOT)
    base_tree = declared.checkout(ROOT, base_ref, tmp_path_factory.mktemp("base") / "tree")
    base = declared.declare(base_tree, dev_raw())
    image_s = engine_stack.ensure_images(client, dev_run, say)
    head_images = {i["image"] for i in engine_stack.declared_containers(dev_run)}
    if {i["image"] for i in (r.plain_inputs() for r in base.of_type(CONTAINER))} - head_images:
        image_s |= engine_stack.images.ensure(client, engine_stack.images.stand_ins_for(
            [r.plain_inputs() for r in base.of_type(CONTAINER)], engine_stack.service_ports(dev_run)), say)
    remove_declared(client, dev_run)
    remove_declared(client, base)
    try:
        applied = Applier(client, base).apply()
        healthy_s = engine_stack.wait_healthy(client, long_running(base))
        d = Deployed(engine, client, dev_run, applied, healthy_s, image_s, raw=dev_raw())
        steady = SteadyClient(d.cluster(), "upgrade")  # type: ignore[arg-type]
        steady.prepare()
        steady.start()
        time.sleep(5)
        steady.stop()
        started = time.monotonic()
        steady.start()
        changed = ChangeApplier(client, base, dev_run).apply_change()
        engine_stack.wait_healthy(client, long_running(dev_run), timeout=300)
        time.sleep(3)
        tally = steady.stop()
        d.applied = Applied(containers=long_running(dev_run), one_shots={**applied.one_shots, **changed.one_shots},
                            seconds=applied.seconds)
        d.upgrade = Upgrade(base_ref, time.monotonic() - started, changed, tally, lost(steady.written, steady.token),
                            len(steady.written.event_ids))
        d.steady = steady
        yield d
    finally:
        # The engine's bridges outlive it: remove the networks while it runs, after every
        # container (a failed change may leave containers of neither declaration; the engine
        # is this module's own).
        leftover = engine.client()
        for container in leftover.containers.list(all=True):
            container.remove(force=True, v=True)
        remove_declared(leftover, base)
        remove_declared(leftover, dev_run)


def _timed_workload(d: Deployed, tag: str, since: float) -> float:
    """Retry the workload until it passes; seconds from `since`."""
    deadline = time.monotonic() + 300
    while True:
        try:
            d.workload(tag)
            return time.monotonic() - since
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _route_served(path: str, since: float, timeout: float = 120.0) -> float:
    """Seconds from `since` until the proxy answers `path` with something other than 502/504."""
    while time.monotonic() - since < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:8080{path}", timeout=5) as resp:
                if resp.status < 500:
                    return time.monotonic() - since
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return time.monotonic() - since
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{path} not served through the proxy within {timeout:.0f}s")


# ---------------------------------------------------------------- scripts/up-dev's pre-flight


def test_preflight_finds_the_running_engine(engine: Engine) -> None:
    verdict = dev_stack.check_docker(engine.url)
    version = engine.client().version()["Version"]
    assert verdict == dev_stack.Verdict(True, f"Docker Engine {version} at {engine.url}")


def test_preflight_says_a_stopped_engine_is_not_running(engine: Engine) -> None:
    engine.stop()
    try:
        verdict = dev_stack.check_docker(engine.url)
    finally:
        engine.start()
    assert verdict == dev_stack.Verdict(False, f"the Docker engine at {engine.url} is not running: start it "
                                               "(sudo systemctl start docker) and rerun")


def test_preflight_says_the_user_may_not_use_the_socket(engine: Engine, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real docker CLI, run as a user outside the socket's owner and group (nobody)."""
    real = shutil.which("docker")
    assert real is not None
    as_nobody = tmp_path / "docker"
    as_nobody.write_text(f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups '
                         f'env HOME=/nonexistent {real} "$@"\n')
    as_nobody.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    verdict = dev_stack.check_docker(engine.url)
    assert verdict == dev_stack.Verdict(False, f"you may not use the Docker engine's socket {engine.socket}: add "
                                               "yourself to the docker group (sudo usermod -aG docker $USER), log "
                                               "in again and rerun")


# ---------------------------------------------------------------- the fresh stack


def test_upgrade_from_the_base_loses_nothing(deployed: Deployed) -> None:
    """The base commit's stack, written to by a steady client (messages, a file, a device), then
    HEAD's declarations applied over it (pulumi-docker's replacements) while the steady client
    runs: every event, file and device written before is still there, and clients work (the
    client workload below runs on the upgraded stack)."""
    up = deployed.upgrade
    assert up is not None
    print(f"\nupgrade from {up.base[:10]}: applied in {up.changed.seconds:.1f}s, all healthy "
          f"{up.applied_s:.1f}s after it began; steady client: {up.tally.line()}; "
          f"replaced {len(up.changed.replaced)}, created {len(up.changed.created)}, deleted "
          f"{len(up.changed.deleted)}, chained {up.changed.chained}; errors {up.tally.errors[:3]}")
    assert up.steady_written > 0 and up.lost == []


def test_fresh_stack_is_healthy_without_crash_restarts(deployed: Deployed) -> None:
    seen = engine_stack.observe(deployed.client, deployed.containers)
    print(f"\nimages ready in {sum(deployed.image_s.values()):.1f}s {deployed.image_s}; "
          f"base applied in {deployed.applied.seconds:.1f}s; all healthy {deployed.healthy_s:.1f}s later")
    assert {n for n, h in seen.health.items() if h not in ("healthy", "none")} == set()
    assert {n: r for n, r in seen.restarts.items() if r} == {}, "containers crashed and were restarted"
    # Every long-running container declares a health check Docker runs.
    assert {n for n, h in seen.health.items() if h == "none"} == set()


SHARED_CHECK = "synapse-check-config"


def test_config_checks_ran_before_synapse(deployed: Deployed) -> None:
    """One check container ran every Synapse process's check (in the Synapse image's sh), and
    passed before any Synapse container was created."""
    synapse = list(deployed.run.deployment.outputs["synapse_processes"])
    assert len(synapse) == 5 and {deployed.name(n) for n in synapse} <= set(deployed.containers)
    check = deployed.name(SHARED_CHECK)
    assert deployed.applied.one_shots.get(check) == 0
    finished = deployed.client.api.inspect_container(check)["State"]["FinishedAt"]
    log = deployed.client.api.logs(check).decode(errors="replace")
    assert log.count("Config parses OK!") == len(synapse), log
    check_created = deployed.client.api.inspect_container(check)["Created"]
    for name in synapse:
        assert f"== {name}\n" in log, name
        created = deployed.client.api.inspect_container(deployed.name(name))["Created"]
        # (One left unchanged by the upgrade was checked by the base's check, gone since.)
        if created > check_created:
            assert finished < created, f"{name} was created before the config check finished"


def test_a_failing_config_check_stops_before_synapse(engine: Engine, dev_run: offline.Run,
                                                     deployed: Deployed) -> None:
    """One worker's broken file: the real Synapse config check exits non-zero in the shared check
    container, whose log names that worker, so no Synapse container is replaced. Runs against a
    copy of the declarations."""
    client = deployed.client
    # The check reads its files from its holder's volumes: a copy of both, the holder's with the
    # broken file.
    holder = dev_run.by_name(f"{SHARED_CHECK}-files").plain_inputs()
    holder["name"] = "broken-check-config-files"
    broken = "/conf/workers/synapse-generic-1.yaml"
    holder["uploads"] = [dict(u, content=u["content"] + "\nworker_listeners: [{port: not-a-port, type: http}]\n")
                         if u["file"] == broken else u for u in holder["uploads"]]
    inputs = dev_run.by_name(SHARED_CHECK).plain_inputs()
    inputs["name"] = "broken-check-config"
    inputs["volumes"] = [dict(v, fromContainer=holder["name"]) if v.get("fromContainer") else v
                         for v in inputs["volumes"]]
    try:
        Applier(client, dev_run).create_container(holder)
        with pytest.raises(ApplyError, match="exited with 1") as failed:
            Applier(client, dev_run).create_container(inputs)
        assert "the configuration check failed for: synapse-generic-1\n" in str(failed.value)
        assert "Listener configuration is lacking a valid 'port' option" in str(failed.value)
    finally:
        client.api.remove_container("broken-check-config", force=True, v=True)
        client.api.remove_container("broken-check-config-files", force=True, v=True)


def _inspect_broken(info: dict[str, object]) -> set[hardening.Property]:
    """The properties one container breaks, as `docker inspect` shows it."""
    host = typing.cast(dict[str, typing.Any], info["HostConfig"])
    config = typing.cast(dict[str, typing.Any], info["Config"])
    found: set[hardening.Property] = set()
    if not host.get("ReadonlyRootfs"):
        found.add("read_only_root")
    if (config.get("User") or "").split(":")[0] in ("", "0", "root"):
        found.add("non_root_user")
    if host.get("CapDrop") != ["ALL"]:
        found.add("cap_drop_all")
    if hardening.NO_NEW_PRIVILEGES not in (host.get("SecurityOpt") or []):
        found.add("no_new_privileges")
    if not host.get("Memory"):
        found.add("memory_limit")
    if any(m.get("Type") == "bind" for m in typing.cast(list[dict[str, str]], info.get("Mounts") or [])):
        found.add("no_host_mount")
    return found


def test_every_container_is_hardened_but_its_exemptions(deployed: Deployed) -> None:
    """`docker inspect` of every declared container (long-running, one-shot, file holder): a
    read-only root, a non-root user, CapDrop ALL with only its image's capabilities added,
    no-new-privileges, a memory limit, and no secret value in its Env, except what
    docker_hardening.EXCEPTIONS lists."""
    run = deployed.run
    secrets = {value for resolved in run.services for value, secret in resolved["env"].values()
               if secret and len(value) >= 8}
    secrets |= {f["content"].strip() for resolved in run.services for f in resolved["files"]
                if f["secret"] and len(f["content"].strip()) >= 8}
    images = {r.urn: str(r.plain_inputs()["name"]) for r in run.of_type("docker:index/remoteImage:RemoteImage")}
    declared = {str(r.plain_inputs()["name"]): r for r in run.of_type(CONTAINER)}
    unexcused: list[str] = []
    for name, resource in declared.items():
        info = deployed.client.api.inspect_container(name)
        broken = _inspect_broken(info)
        env = "\n".join(info["Config"].get("Env") or [])
        if any(secret in env for secret in secrets):
            broken.add("no_secret_env")
        image = next(images[d] for d in resource.dependencies if d in images)
        allowed = set(facts_for(image).capabilities)
        if not {c.removeprefix("CAP_") for c in info["HostConfig"].get("CapAdd") or []} <= allowed:
            broken.add("cap_drop_all")
        unexcused += [f"{name}: {prop}" for prop in sorted(broken) if not hardening.excepted(name, prop)]
    assert len(declared) > 20
    assert unexcused == [], "\n".join(unexcused)


def test_only_the_declared_clients_of_a_data_store_reach_it(deployed: Deployed) -> None:
    """PostgreSQL and Redis sit on their own network, joined only by their declared clients
    (spec.Service.data_store): from every other running container, a store's name does not
    resolve and its network is not attached; from its clients it resolves, and Synapse's main
    connects to those it is a client of (PgBouncer and Redis; PostgreSQL is PgBouncer's). (This engine runs without iptables, so Docker's packet isolation between
    networks is not what is proved here: the membership and the name resolution are.)"""
    run = deployed.run
    stores = [r["service"] for r in run.services if r["service"].data_store]
    # PgBouncer in front of PostgreSQL: Synapse's processes dial it, and it the server.
    assert {s.name for s in stores} == {"synapse-postgres", "synapse-pgbouncer", "synapse-redis"}
    # Resource name -> container name (a new-first container is named after its revision).
    containers = {r.name: str(r.plain_inputs()["name"]) for r in run.of_type(CONTAINER)}
    seen: list[tuple[str, str, bool]] = []
    wrong: list[str] = []
    for resolved in run.services:
        service = resolved["service"]
        if service.data_store or service.name not in containers:
            continue
        container = deployed.client.containers.get(containers[service.name])
        if container.status != "running":
            continue  # one-shots and scheduled jobs have come and gone
        networks = container.attrs["NetworkSettings"]["Networks"]
        for store in stores:
            client = service.name in (store.allowed_clients or ())
            # A name Docker's DNS knows answers at once; an unknown one goes on to the host's
            # resolvers, which may take many seconds to say so: not resolved within the bound.
            resolves = container.exec_run(["timeout", str(RESOLVE_WITHIN_S), "getent", "hosts", store.name]).exit_code == 0
            attached = f"matrix-stack-{store.name}" in networks
            if resolves != client or attached != client:
                wrong.append(f"{service.name} -> {store.name}: client {client}, resolves {resolves}, "
                             f"attached {attached}")
            seen.append((service.name, store.name, client))
    assert wrong == [], "\n".join(wrong)
    assert any(client for *_, client in seen) and any(not client for *_, client in seen), seen
    main = deployed.client.containers.get(containers["synapse-main"])
    assert {s.name for s in stores if "synapse-main" in s.allowed_clients} == {"synapse-pgbouncer", "synapse-redis"}
    for store in (s for s in stores if "synapse-main" in s.allowed_clients):
        port = next(p.port for p in store.ports)
        connect = f"import socket; socket.create_connection(({store.name!r}, {port}), 5).close()"
        done = main.exec_run(["python", "-c", connect])
        assert done.exit_code == 0, (store.name, done.output)
    print(f"\ndata stores: {sum(1 for *_, c in seen if c)} client pairs reach them, "
          f"{sum(1 for *_, c in seen if not c)} other pairs do not")


def test_published_ports_bind_loopback_on_dev(deployed: Deployed) -> None:
    bindings = []
    for name in deployed.containers:
        ports = deployed.client.api.inspect_container(name)["HostConfig"]["PortBindings"] or {}
        bindings += [(name, port, b["HostIp"]) for port, binds in ports.items() for b in binds]
    assert bindings, "the proxy publishes at least its HTTP port"
    assert [b for b in bindings if b[2] != "127.0.0.1"] == []


def test_preflight_tells_the_stacks_own_port_from_a_taken_one(deployed: Deployed) -> None:
    """A later up-dev: the running proxy publishes 8080, which is the stack's own, and any other
    container's claim on it is refused, naming the proxy (read with the real `docker ps`)."""
    def published(container: str) -> dev_stack.Published:
        return dev_stack.Published(container, "127.0.0.1", 8080, "tcp", deployed.engine.url)

    plan = dev_stack.Plan(stack="dev", engines=[deployed.engine.url],
                          published=[published("synapse-proxy"), published("another-proxy")],
                          port_keys={8080: "matrix-stack:target.http_port"}, resources=0, containers=0, images=0)
    own, other = dev_stack.check_ports(plan, [deployed.engine.url])
    assert own == dev_stack.Verdict(True, "127.0.0.1:8080/tcp published by the stack's own synapse-proxy, "
                                          "already running")
    assert other == dev_stack.Verdict(False, "127.0.0.1:8080/tcp, which the dev stack publishes for another-proxy, "
                                             "is taken by the container synapse-proxy: stop it, or choose another "
                                             "port (matrix-stack:target.http_port)")


def test_first_admin_command_runs_as_printed(deployed: Deployed) -> None:
    command = deployed.run.deployment.outputs["create_admin_command"]
    code, out = engine_stack.run_printed(command, deployed.engine.url, [PASSWORD, PASSWORD])
    assert code == 0, f"{command}\n{out}"
    assert "Success" in out or "success" in out.lower(), out


def test_client_workload_through_the_proxy(deployed: Deployed) -> None:
    facts = deployed.workload("fresh")
    assert facts.synced == facts.sent and len(facts.sent) >= 20
    assert facts.typing_seen and facts.receipt_seen
    assert facts.upload_sha == facts.download_sha
    client, cors = facts.well_known["/.well-known/matrix/client"]
    assert client["m.homeserver"]["base_url"].rstrip("/") == "http://localhost:8080" and cors == "*"
    assert "m.server" in facts.well_known["/.well-known/matrix/server"][0]


# ---------------------------------------------------------------- faults


def _restarted(d: Deployed, name: str, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while engine_stack.observe(d.client, [name]).restarts[name] <= count:
        assert time.monotonic() < deadline, f"Docker did not restart {name}"
        time.sleep(0.2)


def _crash_and_recover(d: Deployed, name: str, route: str, tag: str) -> None:
    """kill -9 of the container's process (a crash: Docker's restart policy brings it back;
    `docker kill` would count as a manual stop and disable it)."""
    name = d.name(name)
    before = engine_stack.observe(d.client, [name])
    t0 = time.monotonic()
    os.kill(d.client.api.inspect_container(name)["State"]["Pid"], signal.SIGKILL)
    _restarted(d, name, before.restarts[name])
    engine_stack.wait_healthy(d.client, [name], timeout=300)
    healthy_at = time.monotonic()
    served = _route_served(route, healthy_at)
    after = engine_stack.observe(d.client, [name])
    recovered = _timed_workload(d, tag, t0)
    d.recoveries[f"{name} kill -9"] = recovered
    # The figures are printed, not bounded (a loaded machine is slow, not broken): the bounded
    # waits above are what fails a recovery that never comes.
    print(f"\n{name} kill -9: healthy again {healthy_at - t0:.1f}s after, routes served {served:.1f}s later "
          f"(address {before.addresses[name]} -> {after.addresses[name]}), workload passes {recovered:.1f}s after the kill")
    engine_stack.wait_healthy(d.client, d.containers, timeout=120)


def test_proxy_follows_a_worker_to_a_new_address(deployed: Deployed) -> None:
    """A worker that comes back on another address (Docker recreating or reconnecting it) is
    served again by the running proxy, which re-reads the name nginx dials: no proxy restart.

    The worker leaves the proxy's network, a scratch container takes the address it freed, and the
    worker joins again under the same aliases: on an address nginx has never resolved."""
    d = deployed
    name, route = d.name("synapse-generic-1"), "/_matrix/client/versions"
    attrs = d.client.api.inspect_container(name)
    # The network the proxy dials it on (a worker also joins its data stores' networks).
    proxy_networks = d.client.api.inspect_container("synapse-proxy")["NetworkSettings"]["Networks"]
    (network, endpoint), = [(n, e) for n, e in attrs["NetworkSettings"]["Networks"].items() if n in proxy_networks]
    aliases = [a for a in endpoint.get("Aliases") or [] if a != attrs["Id"][:12]]
    proxy_started = d.client.api.inspect_container("synapse-proxy")["State"]["StartedAt"]
    before = endpoint["IPAddress"]
    t0 = time.monotonic()
    d.client.api.disconnect_container_from_network(name, network)
    squatter = d.client.containers.run(attrs["Config"]["Image"], entrypoint=["sleep", "3600"], detach=True,
                                       name="address-squatter", network=network, auto_remove=True)
    try:
        d.client.api.connect_container_to_network(name, network, aliases=aliases or None)
    finally:
        squatter.remove(force=True)
    after = engine_stack.observe(d.client, [name]).addresses[name]
    assert after and after != before, f"the engine gave {name} its old address back ({before})"
    served = _route_served(route, t0, timeout=60)
    # Served by the worker at its new address: the proxy's health check compares the addresses
    # nginx loaded with what the names resolve to now.
    healthy = engine_stack.wait_healthy(d.client, ["synapse-proxy"], timeout=60)
    d.recoveries[f"{name} new address"] = served
    print(f"\n{name} moved {before} -> {after}: routes served {served:.1f}s later, proxy healthy "
          f"{healthy:.1f}s after that")
    assert d.client.api.inspect_container("synapse-proxy")["State"]["StartedAt"] == proxy_started, \
        "the proxy was restarted"


def test_crashed_worker_recovers(deployed: Deployed) -> None:
    _crash_and_recover(deployed, "synapse-generic-1", "/_matrix/client/versions", "worker")


def test_crashed_main_recovers(deployed: Deployed) -> None:
    _crash_and_recover(deployed, "synapse-main", "/_matrix/client/v3/logout", "main")


def test_postgres_stop_and_start(deployed: Deployed) -> None:
    """PostgreSQL stopped and started again: Synapse reconnects by name, with no manual step."""
    d = deployed
    before = engine_stack.observe(d.client, ["synapse-postgres"]).addresses["synapse-postgres"]
    t0 = time.monotonic()
    d.client.api.stop("synapse-postgres", timeout=10)
    time.sleep(3)
    d.client.api.start("synapse-postgres")
    started = time.monotonic()
    # A database-backed request through the proxy: a profile lookup reads PostgreSQL.
    served = _route_served("/_matrix/client/v3/profile/%40alicefresh%3Alocalhost", started, timeout=300)
    healthy = engine_stack.wait_healthy(d.client, d.containers, timeout=300)
    recovered = _timed_workload(d, "pg", started)
    after = engine_stack.observe(d.client, ["synapse-postgres"]).addresses["synapse-postgres"]
    d.recoveries["postgres stop/start"] = recovered
    print(f"\nPostgreSQL stop/start ({before} -> {after}): down {started - t0:.1f}s, database-backed request "
          f"served {served:.1f}s after the start, all healthy {healthy:.1f}s, workload passes {recovered:.1f}s "
          "after the start")


def test_engine_restart_is_a_reboot(deployed: Deployed) -> None:
    d = deployed
    d.engine.stop()
    t0 = time.monotonic()
    d.client = d.engine.start()
    started = time.monotonic() - t0
    before = engine_stack.observe(d.client, d.containers).restarts
    healthy = engine_stack.wait_healthy(d.client, d.containers, timeout=300)
    after = engine_stack.observe(d.client, d.containers)
    recovered = _timed_workload(d, "reboot", t0)
    print(f"\nengine restart: engine up {started:.1f}s, all healthy {healthy:.1f}s later, "
          f"workload passes {recovered:.1f}s after the engine started")
    assert {n: r for n, r in after.restarts.items() if r != before[n]} == {}, "crash restarts after the reboot"


# ---------------------------------------------------------------- changes under a steady client


def _apply_change(d: Deployed, what: str, raw: dict[str, typing.Any],
                  secret_keys: tuple[str, ...] = ()) -> tuple[Changed, Tally]:
    """Render `raw`, apply it over the running stack with pulumi-docker's replacement semantics
    while the steady client runs, and count what the client saw fail."""
    new = offline.run(raw, stack="dev", secret_keys=secret_keys)
    assert d.steady is not None
    d.steady.start()
    time.sleep(3)
    changed = ChangeApplier(d.client, d.run, new).apply_change()
    d.run, d.raw = new, raw
    d.applied = Applied(containers=long_running(new), one_shots=d.applied.one_shots)
    engine_stack.wait_healthy(d.client, d.containers, timeout=300)
    time.sleep(3)
    tally = d.steady.stop()
    print(f"\n{what}: applied in {changed.seconds:.1f}s; steady client: {tally.line()}; created {changed.created}, "
          f"replaced {changed.replaced}, deleted {changed.deleted}, chained {changed.chained}; "
          f"errors {tally.errors[:4]}")
    return changed, tally


def _started(d: Deployed, name: str) -> tuple[str, str]:
    state = d.client.api.inspect_container(name)
    return state["Id"], state["State"]["StartedAt"]


def _generic(d: Deployed, count: int) -> dict[str, typing.Any]:
    raw = copy.deepcopy(d.raw)
    workers = raw["synapse"]["workers"]
    raw["synapse"]["workers"] = {**workers, "counts": {**workers["counts"], "generic": count}}
    return raw


RESOLVE_WITHIN_S = 3
REPLACED_WITHOUT_OUTAGE = ("-files (new first)", "synapse-check-config (new first)", "synapse-proxy-live-publish")


def test_one_more_generic_worker_fails_no_request(deployed: Deployed) -> None:
    """generic 1 -> 2: the new worker is created and healthy before the proxy, reloaded (not
    restarted), routes to it; nothing else is replaced."""
    d = deployed
    proxy = _started(d, "synapse-proxy")
    changed, tally = _apply_change(d, "+1 generic worker", _generic(d, 2))
    assert "synapse-generic-2" in changed.created
    assert [r for r in changed.replaced if not any(k in r for k in REPLACED_WITHOUT_OUTAGE)] == []
    assert _started(d, "synapse-proxy") == proxy, "the proxy was restarted"
    assert tally.total_failed == 0, tally.errors


def test_one_fewer_generic_worker_fails_no_request(deployed: Deployed) -> None:
    """generic 2 -> 1: the proxy stops routing to the worker and drains before it is deleted."""
    d = deployed
    proxy = _started(d, "synapse-proxy")
    changed, tally = _apply_change(d, "-1 generic worker", _generic(d, 1))
    assert "synapse-generic-2" in changed.deleted
    assert [r for r in changed.replaced if not any(k in r for k in REPLACED_WITHOUT_OUTAGE)] == []
    assert _started(d, "synapse-proxy") == proxy, "the proxy was restarted"
    assert tally.total_failed == 0, tally.errors


def test_a_proxy_only_change_fails_no_request(deployed: Deployed) -> None:
    """The admin API opened to a network: only nginx.conf changes, applied by reload."""
    d = deployed
    proxy = _started(d, "synapse-proxy")
    raw = copy.deepcopy(d.raw)
    raw["synapse"] = {**raw["synapse"], "admin_api_allowlist": ["10.99.0.0/16"]}
    changed, tally = _apply_change(d, "proxy-only change", raw)
    assert changed.replaced == ["synapse-proxy-live-files (new first)", "synapse-proxy-live-publish (delete first)"] \
        or sorted(changed.replaced) == sorted(["synapse-proxy-live-files (new first)",
                                               "synapse-proxy-live-publish (delete first)"])
    assert _started(d, "synapse-proxy") == proxy, "the proxy was restarted"
    assert "10.99.0.0/16" in d.client.containers.get("synapse-proxy").exec_run(
        ["cat", "/tmp/nginx/nginx.conf"]).output.decode()
    assert tally.total_failed == 0, tally.errors


def test_a_refused_proxy_config_leaves_the_old_one_serving(deployed: Deployed) -> None:
    """A live nginx.conf nginx -t refuses: the publisher fails (the update stops), the running
    proxy keeps its config and keeps serving, and reports itself unhealthy until a good one."""
    d = deployed
    proxy = _started(d, "synapse-proxy")
    holder = d.run.by_name("synapse-proxy-live-files").plain_inputs()
    holder["name"] = "broken-live-files"
    holder["uploads"] = [dict(u, content=u["content"] + "\nthis is not nginx;\n") for u in holder["uploads"]]
    publisher = d.run.by_name("synapse-proxy-live-publish").plain_inputs()
    good = dict(publisher)
    publisher["name"] = "broken-live-publish"
    publisher["volumes"] = [dict(v, fromContainer="broken-live-files") if v.get("fromContainer") else v
                            for v in publisher["volumes"]]
    publisher["entrypoints"] = [e.replace("-gt 300", "-gt 10") for e in publisher["entrypoints"]]
    applier = Applier(d.client, d.run)
    try:
        applier.create_container(holder)
        with pytest.raises(ApplyError, match="not applied within"):
            applier.create_container(publisher)
        status = urllib.request.urlopen("http://127.0.0.1:8080/_matrix/client/versions", timeout=10).status
        assert status == 200
        assert "the new configuration was refused" in d.client.api.logs("synapse-proxy").decode(errors="replace")
        assert _started(d, "synapse-proxy") == proxy
    finally:
        for name in ("broken-live-publish", "broken-live-files", good["name"]):
            try:
                d.client.api.remove_container(name, force=True, v=True)
            except docker.errors.NotFound:
                pass
    # The good config published again: healthy, and still the same process.
    assert applier.create_container(good) == 0
    engine_stack.wait_healthy(d.client, ["synapse-proxy"], timeout=60)
    assert _started(d, "synapse-proxy") == proxy


def test_a_shared_homeserver_change_restarts_each_process_once(deployed: Deployed) -> None:
    """A shared homeserver.yaml key: every Synapse process is replaced. The interchangeable
    workers (generic) new first: their routes fail nothing; main and the single-instance roles
    delete first, each once, and only their routes fail, for that one restart."""
    d = deployed
    raw = copy.deepcopy(d.raw)
    limits = copy.deepcopy(raw["synapse"]["rate_limits"])
    limits["message"] = {**limits["message"], "burst_count": limits["message"]["burst_count"] + 1}
    raw["synapse"] = {**raw["synapse"], "rate_limits": limits}
    changed, tally = _apply_change(d, "shared homeserver change", raw)
    replaced = [r.split(" ")[0] for r in changed.replaced if "-files" not in r]
    assert len(replaced) == len(set(replaced)), "a container was replaced twice"
    assert "synapse-generic-1 (new first)" in changed.replaced and "synapse-main (delete first)" in changed.replaced
    assert changed.chained == []
    # Served by the generic worker alone (replaced new first): nothing fails.
    assert {k: n for k, n in tally.failed.items() if k in ("versions", "sync", "messages")} == {}, tally.errors


# ---------------------------------------------------------------- media moved to a bucket (last: it stays)


def _gateway(d: Deployed, container: str) -> str:
    """The host's address on a container's network: what the container reaches this machine by."""
    networks = d.client.api.inspect_container(container)["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["Gateway"])


def test_media_moves_to_a_bucket_on_the_derived_image_and_keeps_serving(deployed: Deployed, tmp_path: Path) -> None:
    """synapse.media.storage: s3 applied to the running stack against a real S3 server
    (SeaweedFS) on this machine: the engine builds the derived image from the stand-in Synapse
    image with the project's recipe, every Synapse process is replaced onto it as a shared change
    replaces them, the media written before keeps being served, the stack's migration command
    copies it to the bucket, a new upload lands in the bucket and survives an emptied cache, and
    the cache cleaner runs."""
    d = deployed
    media_worker = d.name("synapse-media-repository-1")
    gateway = _gateway(d, media_worker)
    with s3_server.seaweedfs(tmp_path / "s3", ("media",), address=gateway) as (bucket,):
        raw = copy.deepcopy(d.raw)
        raw["synapse"] = {**raw["synapse"], "media": {
            "storage": "s3", "bucket": bucket.name, "endpoint": bucket.endpoint, "region": bucket.region,
            "path_style": True, "prefix": "media/"}}
        raw["media_s3_access_key_id"], raw["media_s3_secret_access_key"] = bucket.access_key_id, bucket.secret_access_key
        changed, tally = _apply_change(d, "media to a bucket", raw, ("media_s3_access_key_id", "media_s3_secret_access_key"))
        derived = images.synapse_s3(images.SYNAPSE)
        assert any(r.startswith("build-local-") for r in changed.created), changed.created
        # Every Synapse process runs the derived image, the one the engine built from the recipe.
        image_id = d.client.images.get(derived).id
        for name in (d.name(n) for n in ("synapse-main", "synapse-generic-1", "synapse-media-repository-1")):
            assert d.client.api.inspect_container(name)["Image"] == image_id, name
        assert {k: n for k, n in tally.failed.items() if k in ("versions", "sync", "messages")} == {}, tally.errors
        media_worker = d.name("synapse-media-repository-1")

        # The stack's migration command (media_to_bucket_command), as printed, in the media worker.
        migrate = homeserver.media_upload_script(d.run.cfg, older_than="0d", delete=False)
        exec_id = d.client.api.exec_create(media_worker, ["sh", "-c", migrate], user=str(facts_for(images.SYNAPSE).user))["Id"]
        output = d.client.api.exec_start(exec_id)
        assert d.client.api.exec_inspect(exec_id)["ExitCode"] == 0, output.decode(errors="replace")
        print(f"media_to_bucket_command on the engine:\n{output.decode(errors='replace')}")
        assert d.steady is not None
        for mxc, digest in d.steady.written.media.items():
            media_id = mxc.rsplit("/", 1)[1]
            assert media_s3.sha256(bucket.read("media/" + media_s3.local_content_key(media_id))) == digest

        # A new upload: in the bucket when acknowledged; served with the cache emptied.
        token = d.steady.token
        up = media_s3.upload(token, media_s3.png())
        assert media_s3.sha256(bucket.read("media/" + media_s3.local_content_key(up.media_id))) == up.sha256
        emptied = d.client.api.exec_create(media_worker, ["sh", "-c", "rm -rf /media_store/local_content "
                                                         "/media_store/local_thumbnails"], user="991:991")["Id"]
        d.client.api.exec_start(emptied)
        assert d.client.api.exec_inspect(emptied)["ExitCode"] == 0
        status, data = media_s3.download(token, up.media_id)
        assert status == 200 and media_s3.sha256(data) == up.sha256
        status, thumb, content_type = media_s3.thumbnail(token, up.media_id)
        assert status == 200 and content_type.startswith("image/"), thumb[:200]

        # The cache cleaner: the derived image, the media volume, its first run at once.
        cleaner = d.name(homeserver.MEDIA_CACHE_CLEANER)
        assert d.client.api.inspect_container(cleaner)["Image"] == image_id
        deadline = time.monotonic() + 180
        while b"media cache clean-up" not in (logs := d.client.api.logs(cleaner)) and time.monotonic() < deadline:
            time.sleep(2)
        assert b"media cache clean-up: done" in logs, logs.decode(errors="replace")[-3000:]
