"""The GitHub Actions workflows: valid against GitHub's schema (check-jsonschema's vendored copy,
no network), no high-severity zizmor finding (offline audits), and the house rules checked
directly: actions pinned by commit SHA, least-privilege permissions, no persisted credentials,
no `${{ }}` expression inside a `run:` script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
ACTIONS = sorted((GITHUB / "actions").glob("*/action.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in the venv: uv pip install -r requirements/test.txt")
    return str(path)


def _load(path: Path) -> dict[Any, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def _steps(document: dict[Any, Any]) -> list[dict[str, Any]]:
    if "runs" in document:  # composite action
        return list(document["runs"].get("steps", []))
    return [step for job in document["jobs"].values() for step in job.get("steps", [])]


def test_the_workflows_exist() -> None:
    names = {p.name for p in WORKFLOWS}
    assert {"pr.yml", "pr-comment.yml", "deploy.yml", "review-stack.yml", "drift.yml"} <= names


def test_workflows_validate_against_githubs_schema() -> None:
    done = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_composite_actions_validate_against_githubs_schema() -> None:
    assert ACTIONS
    done = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions",
                           *map(str, ACTIONS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_reports_no_high_severity_finding() -> None:
    done = subprocess.run([_tool("zizmor"), "--offline", "--no-progress", "--min-severity", "high",
                           "--config", str(GITHUB / "zizmor.yml"), str(GITHUB)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_relaxations_carry_their_reason() -> None:
    lines = (GITHUB / "zizmor.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- ") and ":" in line:  # an ignored location
            assert lines[i - 1].strip().startswith("#"), f"zizmor.yml:{i + 1}: give the reason above it"


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: p.name)
def test_actions_pinned_and_checkout_without_credentials(path: Path) -> None:
    for step in _steps(_load(path)):
        uses = step.get("uses")
        if not uses or uses.startswith("./"):
            continue
        assert SHA_PIN.match(uses), f"{path.name}: {uses} is not pinned to a commit SHA"
        if uses.startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{path.name}: persist-credentials"


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: p.name)
def test_no_expressions_inside_run_scripts(path: Path) -> None:
    for step in _steps(_load(path)):
        assert "${{" not in step.get("run", ""), f"{path.name}: pass values to run: through env"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_permissions(path: Path) -> None:
    document = _load(path)
    assert document.get("permissions") == {}, f"{path.name}: the workflow grants nothing by default"
    for name, job in document["jobs"].items():
        permissions = job.get("permissions")
        assert isinstance(permissions, dict), f"{path.name}:{name} states its permissions"
        assert "write-all" not in str(permissions)
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes <= {"pull-requests", "id-token"}, f"{path.name}:{name} writes {writes}"


def test_pull_request_previews_skip_forks_and_use_the_policy_pack() -> None:
    jobs = _load(GITHUB / "workflows" / "pr.yml")["jobs"]
    preview = jobs["preview"]
    assert "head.repo.full_name == github.repository" in preview["if"]
    assert preview["strategy"]["matrix"]["stack"] == ["staging", "prod"]
    step = next(s for s in preview["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert step["with"]["command"] == "preview" and step["with"]["comment-on-pr"] is True
    assert step["with"]["policyPacks"] == "policy" and step["with"]["diff"] is True
    # The offline diff runs for every PR and never sees a secret.
    assert "if" not in jobs["offline-diff"] and "secrets." not in yaml.safe_dump(jobs["offline-diff"])


def test_prod_deploys_behind_the_production_environment() -> None:
    jobs = _load(GITHUB / "workflows" / "deploy.yml")["jobs"]
    assert jobs["prod"]["environment"] == "production" and jobs["prod"]["needs"] == "staging"
    ups = [s["with"]["stack-name"] for job in ("staging", "prod") for s in jobs[job]["steps"]
           if s.get("uses", "").startswith("pulumi/actions@")]
    assert [u.rsplit("/", 1)[1] for u in ups] == ["staging", "prod"]


def test_review_stacks_and_drift() -> None:
    review = _load(GITHUB / "workflows" / "review-stack.yml")
    destroy = next(s for s in review["jobs"]["destroy"]["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert destroy["with"]["command"] == "destroy" and destroy["with"]["remove"] is True
    assert "--copy-config-from" in yaml.safe_dump(review["jobs"]["up"])
    drift = _load(GITHUB / "workflows" / "drift.yml")
    assert drift[True]["schedule"]  # PyYAML reads the key `on` as True
    step = next(s for s in drift["jobs"]["drift"]["steps"] if s.get("uses", "").startswith("pulumi/actions@"))
    assert step["with"]["refresh"] is True and step["with"]["expect-no-changes"] is True
