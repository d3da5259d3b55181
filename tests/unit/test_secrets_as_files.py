"""No service keeps a secret in its environment, on either target, in any example stack: every
secret reaches its program as a file (DESIGN: secrets). Read three ways: the services the parts
declare (no secret env, no env value that is a Pulumi secret or a secret's value, no variable
named like a secret), the Docker containers' `envs` inputs, and the Kubernetes pod specs (no
`secretKeyRef`). The engine test checks the same with `docker inspect`."""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import pytest

from render import offline
from render.__main__ import stack_config

from ..conftest import ROOT

CONTAINER = "docker:index/container:Container"
# Variables that hold a secret by the convention of the programs we run (libpq, the postgres
# image, lk-jwt-service, ntfy) or by their name; a *_FILE variable holds only a path.
SECRET_NAME = re.compile(r"^(PGPASSWORD|POSTGRES_PASSWORD|LIVEKIT_SECRET|NTFY_AUTH_USERS|.*_PASSWORD|.*_SECRET"
                         r"|.*_TOKEN|.*_PRIVATE_KEY|AWS_SECRET_ACCESS_KEY)$")
# Each example stack as written, and on the other target.
KUBERNETES = {"kind": "kubernetes", "namespace": "matrix", "cert_manager_issuer": "letsencrypt-prod"}
DOCKER = {"kind": "docker", "hosts": [{"name": "one", "url": "ssh://deploy@one.example.org", "address": "192.0.2.30"}]}
STACKS = [("dev", None), ("staging", None), ("prod", None), ("staging", KUBERNETES), ("prod", DOCKER)]


@functools.cache
def _run(stack: str, target: str | None) -> offline.Run:
    raw, secret = stack_config(stack, ROOT)
    raw = copy.deepcopy(raw)
    if target is not None:
        raw["target"] = dict(KUBERNETES if target == "kubernetes" else DOCKER)
    return offline.run(raw, stack=stack, secret_keys=tuple(secret))


def _ids(case: tuple[str, dict[str, Any] | None]) -> str:
    stack, target = case
    return stack if target is None else f"{stack}-on-{target['kind']}"


CASES = [(stack, None if target is None else target["kind"]) for stack, target in STACKS]
IDS = [_ids(case) for case in STACKS]


def _secret_values(run: offline.Run) -> set[str]:
    """Every secret file's content (the values a leak would show), long enough to be unmistakable."""
    return {f["content"].strip() for resolved in run.services for f in resolved["files"]
            if f["secret"] and len(f["content"].strip()) >= 8}


@pytest.mark.parametrize(("stack", "target"), CASES, ids=IDS)
def test_no_service_declares_a_secret_in_its_environment(stack: str, target: str | None) -> None:
    run = _run(stack, target)
    values = _secret_values(run)
    found = []
    for resolved in run.services:
        service = resolved["service"]
        found += [f"{service.name}: secret env {k}" for k in service.secret_env]
        for key, (value, secret) in resolved["env"].items():
            if secret:
                found.append(f"{service.name}: {key} is a Pulumi secret")
            if SECRET_NAME.match(key):
                found.append(f"{service.name}: {key} is named like a secret")
            if any(v in str(value) for v in values):
                found.append(f"{service.name}: {key} holds a secret file's value")
    assert found == []
    assert values, "the stack has secret files to compare with"


@pytest.mark.parametrize(("stack", "target"), CASES, ids=IDS)
def test_no_declared_container_or_pod_has_a_secret_in_its_environment(stack: str, target: str | None) -> None:
    run = _run(stack, target)
    found = []
    for container in run.of_type(CONTAINER):
        envs = container.masked()["inputs"].get("envs") or []
        if envs == offline.MASK or offline.MASK in envs:
            found.append(f"container {container.name}: secret envs")
        found += [f"container {container.name}: {e.split('=', 1)[0]}" for e in envs
                  if isinstance(e, str) and SECRET_NAME.match(e.split("=", 1)[0])]
    for key, obj in run.deployment.manifests.items():
        pod = obj.get("spec", {}).get("template", {}).get("spec") or \
            obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec") or {}
        for c in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            for e in c.get("env", []):
                if "secretKeyRef" in (e.get("valueFrom") or {}) or SECRET_NAME.match(e["name"]):
                    found.append(f"{key} {c['name']}: {e['name']}")
            found += [f"{key} {c['name']}: envFrom {e}" for e in c.get("envFrom", []) if "secretRef" in e]
    assert found == []
