"""Every pod of every rendered Kubernetes stack, held to Pod Security by the Kubernetes project's
own admission checks: tools/podsecurity evaluates each pod template with
k8s.io/pod-security-admission's evaluator, as the API server's admission plugin would.

The stack's namespace enforces `restricted` and every pod in it passes; a pod that cannot lives
in a namespace of its own, named with its reason in POD_SECURITY_EXCEPTIONS, and passes that
namespace's level, while still failing `restricted` (else its exception is stale)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.platform.kubernetes import ENFORCED_LEVEL, POD_SECURITY_EXCEPTIONS
from render import offline
from tests.conftest import ROOT, stack_config, stack_raw

CHECKER_SOURCE = ROOT / "tools" / "podsecurity"
SECRET_KEYS = stack_config("prod", ROOT)[1]
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job",
             "CronJob", "PodTemplate"}
ENFORCE = "pod-security.kubernetes.io/enforce"


def _checker() -> Path:
    """The checker scripts/test builds, cached per hash of its sources; built here when missing."""
    digest = hashlib.sha256(b"".join((CHECKER_SOURCE / name).read_bytes()
                                     for name in ("go.mod", "go.sum", "main.go"))).hexdigest()[:16]
    binary = Path.home() / ".cache" / "matrix-stack" / "go-bin" / f"podsecurity-{digest}" / "podsecurity"
    if binary.exists():
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.fail("the Pod Security checker is not built and Go is not installed (bash scripts/test builds it)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([go, "build", "-mod=readonly", "-trimpath", "-o", str(binary), "."], cwd=CHECKER_SOURCE,
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "CGO_ENABLED": "0"})
    if done.returncode != 0 or not binary.exists():
        pytest.fail(f"could not build the Pod Security checker: {done.stderr[-2000:]}")
    return binary


def _check(manifests: list[dict[str, Any]], *args: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(violations, evaluated pod templates) for `manifests`."""
    done = subprocess.run([str(_checker()), *args], input=json.dumps(manifests), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    violations = [json.loads(line) for line in done.stdout.splitlines()]
    evaluated = [json.loads(line) for line in done.stderr.splitlines()]
    assert (done.returncode == 1) == bool(violations)
    return violations, evaluated


def _variant(name: str) -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw("prod"))
    if name == "host_network":
        raw["target"] = {**raw["target"], "livekit_exposure": "host_network", "service_monitors": False}
    if name.startswith("monolith"):
        raw["synapse"] = {**raw["synapse"], "workers": {"preset": "monolith"}}
    if name == "monolith":
        raw["mas"] = {"enabled": False}
        raw["backup"] = {"enabled": False}
    if name == "media_in_s3":
        raw["synapse"] = {**raw["synapse"], "media": MEDIA_IN_S3}
        raw.update(media_s3_access_key_id="AKIAEXAMPLE", media_s3_secret_access_key="example-secret")
    return raw


# Media in a bucket: each media pod's cache is an emptyDir, the image the operator's.
MEDIA_IN_S3 = {"storage": "s3", "bucket": "example-org-media", "endpoint": "https://s3.example.org",
               "image_registry": "registry.example.org/matrix"}
VARIANTS = ("prod", "host_network", "monolith", "monolith-with-mas-and-backup", "media_in_s3")


@pytest.fixture(scope="module", params=VARIANTS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    raw = _variant(request.param)
    secret_keys = (*SECRET_KEYS, "media_s3_access_key_id", "media_s3_secret_access_key")
    run = offline.run(raw, stack="prod", secret_keys=tuple(k for k in secret_keys if k in raw))
    return raw["target"]["namespace"], dict(run.deployment.manifests)


def test_the_checker_reports_what_restricted_forbids() -> None:
    """A root pod with its capabilities and no seccomp profile fails, check by check."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root", "namespace": "elsewhere"},
           "spec": {"hostNetwork": True, "containers": [{"name": "c", "image": "alpine"}]}}
    violations, evaluated = _check([pod])
    assert [(e["object"], e["level"]) for e in evaluated] == [("Pod/elsewhere/root", "restricted")]
    assert {v["check"] for v in violations} == {"hostNamespaces", "allowPrivilegeEscalation", "capabilities_restricted",
                                                "runAsNonRoot", "seccompProfile_restricted"}
    labelled = {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "elsewhere", "labels": {ENFORCE: "privileged"}}}
    assert _check([labelled, pod]) == ([], [{**evaluated[0], "level": "privileged", "violations": 0}])


def test_the_stack_namespace_enforces_restricted_and_every_pod_passes_its_namespace(
        rendered: tuple[str, dict[str, dict[str, Any]]]) -> None:
    home, manifests = rendered
    assert ENFORCED_LEVEL == "restricted"
    namespaces = {o["metadata"]["name"]: o for o in manifests.values() if o["kind"] == "Namespace"}
    assert namespaces[home]["metadata"]["labels"][ENFORCE] == "restricted"
    violations, evaluated = _check(list(manifests.values()))
    # Each pod at its own namespace's enforced level: nothing the API server would refuse.
    assert violations == []
    assert len(evaluated) == sum(o["kind"] in POD_KINDS for o in manifests.values()) > 0
    assert {e["namespace"] for e in evaluated} <= set(namespaces)
    assert {e["level"] for e in evaluated if e["namespace"] == home} == {"restricted"}


def test_only_the_named_exceptions_leave_the_stack_namespace_and_each_still_needs_its_own(
        rendered: tuple[str, dict[str, dict[str, Any]]]) -> None:
    home, manifests = rendered
    exceptions = {f"{home}-{e.name}": e for e in POD_SECURITY_EXCEPTIONS}
    violations, evaluated = _check(list(manifests.values()), "-level", "restricted")
    # Held to restricted, the stack's namespace has no violation at all.
    assert [v for v in violations if v["namespace"] == home] == []
    for name, obj in manifests.items():
        if obj["kind"] != "Namespace" or obj["metadata"]["name"] == home:
            continue
        exception = exceptions[obj["metadata"]["name"]]  # no namespace but the stack's and its exceptions'
        assert obj["metadata"]["labels"][ENFORCE] == exception.level, name
        assert obj["metadata"]["annotations"]["matrix-stack/pod-security-exception"] == exception.reason
        pods = {e["object"] for e in evaluated if e["namespace"] == obj["metadata"]["name"]}
        refused = {v["object"] for v in violations if v["namespace"] == obj["metadata"]["name"]}
        # Every pod there fails restricted: an exception no pod needs any more must go.
        assert pods and refused == pods, name
