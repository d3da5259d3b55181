"""Startup order, config checks and published addresses as the adapters declare them (the
program under mocks); the real engine's behaviour is tests/integration/test_docker_engine.py."""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest

import config
import stack
from components.edge.render import proxy_run_script
from components.platform.docker import start_command
from components.platform.spec import Wait
from render import offline
from tests.conftest import ROOT, stack_config, stack_raw

CONTAINER = "docker:index/container:Container"


@pytest.fixture(scope="module")
def dev() -> offline.Run:
    return offline.run(stack_raw("dev"), stack="dev")


def _container(run: offline.Run, name: str) -> offline.Registered:
    return next(r for r in run.of_type(CONTAINER) if r.name == name)


def _depends_on_containers(run: offline.Run, name: str) -> set[str]:
    containers = {r.urn: r.name for r in run.of_type(CONTAINER)}
    return {containers[d] for d in _container(run, name).dependencies if d in containers}


def test_containers_depend_on_the_containers_they_wait_for(dev: offline.Run) -> None:
    # Synapse dials PostgreSQL through its pooler (components/postgres/pooler.py).
    assert {"synapse-pgbouncer", "synapse-redis", "synapse-check-config"} <= _depends_on_containers(dev, "synapse-main")
    for worker in ("synapse-generic-1", "synapse-event-persister-1", "synapse-media-repository-1"):
        assert {"synapse-main", "synapse-check-config"} <= _depends_on_containers(dev, worker)
    assert "synapse-main" in _depends_on_containers(dev, "synapse-proxy")


def test_start_commands_wait_for_health_then_exec_the_process(dev: offline.Run) -> None:
    main = _container(dev, "synapse-main").plain_inputs()
    script = main["entrypoints"][2]
    assert main["entrypoints"][:2] == ["/bin/sh", "-c"]
    assert "psycopg2.connect" in script and "synapse-pgbouncer" in script and "synapse-redis" in script
    assert main["entrypoints"][4:7] == ["python", "-m", "synapse.app.homeserver"]
    worker = _container(dev, "synapse-generic-1").plain_inputs()
    # Main at the worker's own release (components/synapse/upgrade.py worker_wait_probe).
    assert "http://synapse-main:8008/health" in worker["entrypoints"][2] and "matrix-synapse" in worker["entrypoints"][2]
    assert worker["entrypoints"][4:7] == ["python", "-m", "synapse.app.generic_worker"]


def test_start_command_runs_the_process_after_the_waits(tmp_path: Any) -> None:
    marker = tmp_path / "ready"
    marker.touch()
    cmd = start_command((Wait("x", ("test", "-e", str(marker))),), ["echo", "started", "with 'quotes'"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout == "started with 'quotes'\n"


def test_config_checks_are_attached_one_shots_with_the_service_files(dev: offline.Run) -> None:
    # Every Synapse process shares one check (tests/unit/test_docker_checks.py).
    check = _container(dev, "synapse-check-config").plain_inputs()
    assert check["attach"] is True and check["mustRun"] is False and check["restart"] == "no"
    assert check["entrypoints"][:2] == ["/bin/sh", "-c"] and "python -m synapse.config " in check["entrypoints"][2]
    for name in ("synapse-main", "synapse-generic-1"):
        service = _container(dev, name).plain_inputs()
        assert {u["file"] for u in dev.uploads(name)} <= {u["file"] for u in dev.uploads("synapse-check-config")}
        assert check["user"] == service["user"]
        labels = {item["label"]: item["value"] for item in service["labels"]}
        assert labels["matrix-stack.config-check"] == "passed"


def test_dev_publishes_on_loopback_and_other_hosts_on_their_address(dev: offline.Run) -> None:
    published = [p for r in dev.of_type(CONTAINER) for p in r.plain_inputs().get("ports") or []]
    assert published and {p.get("ip") for p in published} == {"127.0.0.1"}
    staging = offline.run(*stack_config("staging", ROOT)[:1], stack="staging", secret_keys=stack_config("staging", ROOT)[1])
    proxy = _container(staging, "synapse-proxy").plain_inputs()
    assert {p.get("ip") for p in proxy["ports"]} == {"192.0.2.20"}


def test_bind_address_is_typed() -> None:
    raw = copy.deepcopy(stack_raw("dev"))
    raw["target"]["hosts"][0]["bind_address"] = "localhost"
    with pytest.raises(config.ConfigError) as err:
        stack.parse(raw)
    assert "target.hosts.0.bind_address" in str(err.value) or "bind_address" in str(err.value)
    raw["target"]["hosts"][0]["bind_address"] = "::1"
    assert stack.parse(raw).target.hosts[0].published_address == "::1"  # type: ignore[union-attr]


def test_proxy_health_is_not_static(dev: offline.Run) -> None:
    proxy = _container(dev, "synapse-proxy").plain_inputs()
    assert proxy["healthcheck"]["tests"] == ["CMD", "/bin/sh", "/conf/proxy-run.sh", "health"]
    script = proxy_run_script("/etc/nginx/live/nginx.conf", False)
    assert "nginx -t -q -c" in script and 'nginx -c "$CONF" -s reload' in script
    # The names nginx dials come from the config itself, so a new worker changes only nginx.conf.
    conf = next(u["content"] for u in dev.uploads("synapse-proxy-live") if u["file"] == "/etc/nginx/live/nginx.conf")
    assert conf.splitlines()[1].startswith("# upstream-hosts: ") and "synapse-generic-1" in conf.splitlines()[1]


def test_kubernetes_workers_wait_for_main_and_main_for_postgres() -> None:
    raw, secret = stack_config("prod", ROOT)
    prod = offline.run(raw, stack="prod", secret_keys=secret)
    manifests = prod.deployment.manifests

    def init_names(key: str) -> list[str]:
        return [c["name"] for c in manifests[key]["spec"]["template"]["spec"].get("initContainers", [])]

    main_key = next(k for k in manifests if k.endswith("-synapse-main") and k.split("-")[0] in ("deployment", "statefulset"))
    assert init_names(main_key)[0] == "wait-for-synapse-pgbouncer"
    assert init_names(main_key)[-1] == "check-config"
    assert init_names("deployment-synapse-generic-1") == ["wait-for-synapse-main", "check-config"]
    wait = manifests["deployment-synapse-generic-1"]["spec"]["template"]["spec"]["initContainers"][0]
    assert wait["securityContext"] and wait["resources"]


def test_docker_declares_what_a_container_waits_for_or_routes_to_first_whatever_the_order() -> None:
    """The dependencies of a container (and of its live files' publisher) name containers
    declared before it: the adapter orders the whole graph itself, not by the order parts were
    built in."""
    from components.platform.docker import start_order
    from components.platform.spec import Service, Wait

    def svc(name: str, waits: tuple[str, ...] = (), routes_to: tuple[str, ...] = ()) -> Service:
        return Service(name=name, component="t", image="i", waits=tuple(Wait(w, ("true",)) for w in waits),
                       routes_to=routes_to)

    graph = [svc("proxy", waits=("main",), routes_to=("main", "web", "call")), svc("worker", waits=("main",)),
             svc("main", waits=("db",)), svc("web"), svc("call"), svc("db")]
    for services in (graph, list(reversed(graph))):
        order = [s.name for s in start_order(services)]
        assert sorted(order) == sorted(s.name for s in graph)
        for service in services:
            before = order[: order.index(service.name)]
            assert {w.service for w in service.waits} | set(service.routes_to) <= set(before)
