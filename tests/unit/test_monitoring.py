"""The monitoring part under mocks: what it runs when on, what it hands ntfy, and that no secret
reaches an environment variable or a plain file."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from components.monitoring import render as mon
from components.ntfy import render as ntfy
from tests.conftest import stack_raw

MONITORED = {"prometheus", "alertmanager", "nginx-exporter", "postgres-exporter", "redis-exporter", "node-exporter",
             "blackbox-exporter", "pushgateway"}


def _entry(run: Any, name: str) -> dict[str, Any]:
    return next(s for s in run.services if s["service"].name == name)


def test_off_in_dev_on_in_staging_and_prod() -> None:
    assert not stack_raw("dev").get("monitoring", {}).get("enabled", False)
    for name in ("staging", "prod"):
        assert stack_raw(name)["monitoring"]["enabled"] is True


def test_staging_runs_prometheus_alertmanager_and_an_exporter_per_target_that_needs_one(program: Any) -> None:
    raw = copy.deepcopy(stack_raw("staging"))
    run = program(raw, secret_keys=("backup_sftp_private_key", "cloudflare_api_token"))
    names = {s["service"].name for s in run.services}
    assert MONITORED <= names
    for name in MONITORED:
        service = _entry(run, name)["service"]
        assert service.read_only_root and service.user and not service.user.startswith("0:")
        # Secrets only as files: nothing secret in the environment.
        assert not service.secret_env
        assert not any("PASS" in key and not key.endswith("_FILE") for key in service.env), service.env
    exporter = _entry(run, "postgres-exporter")["service"]
    assert exporter.env["DATA_SOURCE_PASS_FILE"] == mon.POSTGRES_PASSWORD_FILE
    assert any(f.path == mon.POSTGRES_PASSWORD_FILE and f.secret for f in exporter.files)
    alertmanager = _entry(run, "alertmanager")["service"]
    assert any(f.path == mon.NTFY_PASSWORD_FILE and f.secret for f in alertmanager.files)
    # ntfy lets the alerts publisher write its topic and nothing else.
    server = yaml.safe_load(next(f["content"] for f in _entry(run, "ntfy")["files"] if f["path"] == ntfy.CONFIG))
    assert "alertmanager:alerts:write-only" in server["auth-access"]
    # The exporters log in: PostgreSQL and Redis admit them.
    assert "postgres-exporter" in (_entry(run, "synapse-postgres")["service"].allowed_clients or ())
    assert "redis-exporter" in (_entry(run, "synapse-redis")["service"].allowed_clients or ())


def test_without_monitoring_nothing_of_it_runs(program: Any, dev_raw: dict[str, Any]) -> None:
    run = program(dev_raw)
    assert not MONITORED & {s["service"].name for s in run.services}
    server = yaml.safe_load(next(f["content"] for f in _entry(run, "ntfy")["files"] if f["path"] == ntfy.CONFIG))
    assert server["auth-access"] == [ntfy.UNIFIEDPUSH_ACCESS]
