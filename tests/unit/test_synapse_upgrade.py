"""Upgrading Synapse, as the adapters declare it (the program under mocks): main's gate, the order
main and the workers are replaced in, on both targets, and the schema fact the gate reads. The
real processes run the same script and waits in tests/integration/test_synapse_upgrade.py."""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import runpy
import shlex
from pathlib import Path
from typing import Any

import pytest

import stack
from components import catalog
from components.synapse import upgrade
from components.view import resolve
from config import images
from render import offline
from tests.conftest import ROOT, stack_config, stack_raw

CONTAINER = "docker:index/container:Container"
COMMAND = "command:local:Command"


@pytest.fixture(scope="module")
def dev() -> offline.Run:
    return offline.run(stack_raw("dev"), stack="dev")


@pytest.fixture(scope="module")
def prod() -> offline.Run:
    raw, secret = stack_config("prod", ROOT)
    return offline.run(raw, stack="prod", secret_keys=secret)


def _names(run: offline.Run, urns: Any) -> set[str]:
    by_urn = {r.urn: r.name for r in run.resources}
    return {by_urn[u] for u in urns if u in by_urn}


def _gate_resource(run: offline.Run) -> offline.Registered:
    (gate,) = run.of_type(COMMAND)
    return gate


def test_docker_main_starts_another_release_only_after_its_gate(dev: offline.Run) -> None:
    gate = _gate_resource(dev)
    inputs = gate.plain_inputs()
    # Replaced, so run, when the image changes; after the database server; main waits for it.
    assert inputs["triggers"] == [images.SYNAPSE]
    assert _names(dev, gate.dependencies) == {"synapse-postgres"}
    main = next(r for r in dev.of_type(CONTAINER) if r.name == "synapse-main")
    assert gate.urn in main.dependencies
    # Only main: the workers follow main, not the gate.
    assert [r.name for r in dev.of_type(CONTAINER) if gate.urn in r.dependencies] == ["synapse-main"]
    script = inputs["create"]
    assert "docker exec synapse-postgres pg_dump -U synapse -d synapse -Fc" in script
    assert f"image_schema={images.image_schema_version(images.SYNAPSE)}" in script
    # A new procedure text alone runs nothing again.
    assert inputs["update"] == "echo " + shlex.quote(upgrade.UNCHANGED)


def test_docker_replaces_the_workers_only_once_main_is_healthy(dev: offline.Run) -> None:
    containers = {r.name: r.plain_inputs() for r in dev.of_type(CONTAINER)}
    main = containers["synapse-main"]
    # pulumi-docker waits for the health check after creating main (its migrations run inside
    # the start period), and the workers depend on main: old workers serve until then.
    assert main["wait"] is True and main["waitTimeout"] >= 3600
    for name in ("synapse-postgres", "synapse-redis", "synapse-generic-1"):
        assert containers[name]["wait"] is True
    assert "synapse-main" in {dep.rsplit("::", 1)[1] for dep in next(
        r for r in dev.of_type(CONTAINER) if r.name == "synapse-generic-1").dependencies}


def test_workers_start_once_main_answers_at_their_own_release_on_both_targets(dev: offline.Run,
                                                                               prod: offline.Run) -> None:
    probe = upgrade.worker_wait_probe("synapse-main", 8008)
    worker = next(r for r in dev.of_type(CONTAINER) if r.name == "synapse-generic-1").plain_inputs()
    assert worker["entrypoints"][2].startswith(f"until {shlex.join(['python', '-c', probe])} >/dev/null 2>&1;")
    for entry in prod.services:
        service = entry["service"]
        if service.labels.get("matrix-stack.synapse-role", "main") != "main":
            assert [w.command for w in service.waits] == [("python", "-c", probe)], service.name


def test_kubernetes_main_rolls_out_after_its_gate_and_never_beside_another_main(prod: offline.Run) -> None:
    gate = _gate_resource(prod)
    assert _names(prod, gate.dependencies) == {"statefulset-synapse-postgres"}
    dependents = [r.name for r in prod.resources if gate.urn in r.dependencies]
    assert dependents == ["deployment-synapse-main"]
    script = gate.plain_inputs()["create"]
    assert "exec statefulset/synapse-postgres -- pg_dump" in script
    # Backups are on in prod: a snapshot from the backup's CronJob, its output printed.
    assert "create job --from=cronjob/backup" in script and "logs \"job/$job\"" in script
    main = prod.by_name("deployment-synapse-main").plain_inputs()
    assert main["spec"]["strategy"] == {"type": "Recreate"}
    generic = prod.by_name("deployment-synapse-generic-1").plain_inputs()
    assert "strategy" not in generic["spec"]  # a scalable role rolls


def test_a_docker_stack_with_backups_takes_a_snapshot_in_the_gate() -> None:
    raw, secret = stack_config("staging", ROOT)
    cfg = stack.parse(raw, secret)
    view, _parts = resolve(cfg, catalog.PARTS)
    script = upgrade.gate(cfg, view).script
    assert "exec -u 65534:65534 backup /bin/sh /backup/bin/backup.sh backup" in script
    assert script.index("pg_dump") < script.index("backup.sh backup")


def test_an_image_the_table_does_not_know_is_asked_its_schema_version() -> None:
    raw = copy.deepcopy(stack_raw("dev"))
    raw.setdefault("synapse", {})["image"] = "matrixdotorg/synapse:v1.150.0"
    cfg = stack.parse(raw)
    view, _parts = resolve(cfg, catalog.PARTS)
    script = upgrade.gate(cfg, view).script
    # Synapse's start.py runs no other command: the entrypoint is replaced.
    assert "docker run --rm --entrypoint python matrixdotorg/synapse:v1.150.0 -c " in script
    assert 'dump="synapse-before-v1.150.0-' in script


def test_the_schema_fact_is_the_pinned_release_s_own() -> None:
    # The installed matrix-synapse is the pinned release (requirements/test.txt).
    assert importlib.metadata.version("matrix-synapse") == images.SYNAPSE_VERSION
    spec = importlib.util.find_spec("synapse")
    assert spec is not None and spec.submodule_search_locations
    schema = runpy.run_path(str(Path(spec.submodule_search_locations[0]) / "storage" / "schema" / "__init__.py"))
    assert images.image_schema_version(images.SYNAPSE) == schema["SCHEMA_VERSION"]
    # Only for that tag: another release may write another schema.
    assert images.image_schema_version("matrixdotorg/synapse:v1.150.0") is None
    assert images.facts_for(images.SYNAPSE).sources["schema_version"].path == "synapse/storage/schema/__init__.py"
