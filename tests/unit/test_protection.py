"""protect on stateful resources: every one protected where the stack protects its data (prod), none
anywhere else (staging and the per-PR review stacks copied from it must be destroyable).

Stateful: Docker volumes, Kubernetes PVCs and the StatefulSets that own volume claim templates, and
the generated secrets (pulumi-random resources: a lost signing key or database password breaks the
deployment). A StatefulSet that only mounts a shared claim (the media repository workers share
synapse-media) holds no data itself: the claim is what is protected."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from render import offline
from render.__main__ import stack_config
from tests.conftest import ROOT, stack_raw

STATEFUL_TYPES = {"docker:index/volume:Volume", "kubernetes:core/v1:PersistentVolumeClaim"}
STATEFULSET = "kubernetes:apps/v1:StatefulSet"
KNOWN_UNPROTECTED: set[str] = set()


def _owns_data(resource: offline.Registered) -> bool:
    spec = resource.plain_inputs().get("spec") or {}
    return bool(spec.get("volumeClaimTemplates"))


def stateful(run: offline.Run) -> list[offline.Registered]:
    return [r for r in run.resources
            if r.type in STATEFUL_TYPES or r.type.startswith("random:") or (r.type == STATEFULSET and _owns_data(r))]


def _docker(protect: bool) -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw("dev"))
    raw["protect"] = protect
    return raw


def _check(run: offline.Run, protect: bool) -> None:
    found = stateful(run)
    assert any(r.type.startswith("random:") for r in found), "the generated secrets are stateful"
    assert any(not r.type.startswith("random:") for r in found), "a volume / StatefulSet / PVC"
    wrong = sorted(f"{r.type} {r.name}" for r in found if r.protect is not protect and r.name not in KNOWN_UNPROTECTED)
    assert wrong == [], f"protect should be {protect} on these"
    if not protect:
        assert [r.name for r in run.resources if r.protect] == [], "nothing is protected"


@pytest.mark.parametrize("protect", [True, False])
def test_docker_stack_protects_exactly_when_configured(program: Callable[..., offline.Run], protect: bool) -> None:
    _check(program(_docker(protect), stack="prod" if protect else "staging"), protect)


def test_protected_docker_volumes_are_also_retained(program: Callable[..., offline.Run]) -> None:
    run = program(_docker(True), stack="prod")
    volumes = run.of_type("docker:index/volume:Volume")
    assert volumes and all(v.retain_on_delete for v in volumes)
    # Containers are replaced on every config change: protecting them would block that.
    assert not any(r.protect for r in run.of_type("docker:index/container:Container"))


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_example_stacks(program: Callable[..., offline.Run], stack: str) -> None:
    raw, secret_keys = stack_config(stack, ROOT)
    run = program(raw, stack=stack, secret_keys=secret_keys)
    _check(run, protect=(stack == "prod"))
    assert run.cfg.protect is (stack == "prod")


def test_ntfy_admin_password_protected_in_prod(program: Callable[..., offline.Run]) -> None:
    raw, secret_keys = stack_config("prod", ROOT)
    run = program(raw, stack="prod", secret_keys=secret_keys)
    assert run.by_name("ntfy-admin-password").protect
