"""Every PromQL query of the rendered Grafana dashboards parses with the real Prometheus (Debian's
promtool, the pinned Prometheus's version): each one a recording rule of a rule file that
`promtool check rules` reads. Grafana's $__rate_interval is a window there, as Grafana sends it.
Whether each query returns data is test_synapse_boot's (real Prometheus over a booted cluster)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.checks import view_of
from components.monitoring import alerts as alert_table
from components.monitoring import dashboards
from render.__main__ import stack_config
from stack import parse
from tests.conftest import ROOT

from .cluster import ALL_ROLES_COUNTS, boot_config

PROMTOOL = shutil.which("promtool")


def _queries(raw: dict[str, Any], secret_keys: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    targets = view_of(parse(raw, secret_keys))[0].metrics_targets
    files = dashboards.dashboards(targets, alert_table.stack_alerts(targets))
    return [(f"{name}: {title}", expr) for name, text in files.items()
            for title, expr in dashboards.queries(json.loads(text))]


def _check(tmp_path: Path, queries: list[tuple[str, str]]) -> subprocess.CompletedProcess[str]:
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace(dashboards.RATE, "1m")}
        for i, (_label, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run([PROMTOOL or "promtool", "check", "rules", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("stack", ["staging", "prod", "boot"])
def test_every_dashboard_query_parses_with_promtool(tmp_path: Path, stack: str) -> None:
    assert PROMTOOL, "Debian's prometheus package (promtool) is needed: scripts/test installs it"
    if stack == "boot":
        raw = boot_config(ALL_ROLES_COUNTS)
        queries = _queries(raw)
    else:
        raw, secret_keys = stack_config(stack, ROOT)
        queries = _queries(raw, tuple(secret_keys))
    assert len(queries) > 20
    result = _check(tmp_path, queries)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promtool_refuses_a_query_that_does_not_parse(tmp_path: Path) -> None:
    assert PROMTOOL
    result = _check(tmp_path, [("broken", "sum by (role) (rate(up[1m])")])
    assert result.returncode != 0
