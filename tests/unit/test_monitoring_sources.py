"""Where the volume, certificate, call and backup alerts get their series, from the view: the
schedule's window (config/cron.py), the probes the call parts declare, node exporter on Docker
hosts only, the kubelet's claim statistics on Kubernetes, and the backup's report to the
Pushgateway only when monitoring runs one."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.backup import render as backup
from components.checks import view_of
from components.monitoring import alerts as alert_table
from components.monitoring import certificate_hostnames, stack_alerts
from components.monitoring import render as mon
from config.cron import longest_gap_minutes
from render.__main__ import stack_config
from stack import parse
from tests.conftest import ROOT


@pytest.mark.parametrize(("schedule", "minutes"), [
    ("30 3 * * *", 1440), ("0 */6 * * *", 360), ("0 3 * * 0", 7 * 1440), ("0 2,14 * * 1-5", 60 * 60),
    ("0 3 1 * *", 31 * 1440), ("0 3 31 * *", 61 * 1440), ("0 0 1,15 * 1", 7 * 1440), ("*/5 * * * *", 5),
])
def test_a_schedules_longest_gap(schedule: str, minutes: int) -> None:
    assert longest_gap_minutes(schedule) == minutes


def _view(name: str, **changes: Any) -> tuple[Any, Any]:
    raw, secret_keys = stack_config(name, ROOT)
    raw = copy.deepcopy(raw)
    raw["monitoring"] = {"enabled": True, **raw.get("monitoring", {})}
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value}
    cfg = parse(raw, tuple(secret_keys))
    return cfg, view_of(cfg)[0]


def test_the_backup_window_is_its_schedules_gap_and_the_margin() -> None:
    cfg, view = _view("staging")
    alerts = {a.name: a for a in stack_alerts(cfg, view)}
    window = alert_table.window_minutes(cfg.backup.schedule)
    assert window == 1440 + alert_table.RUN_MARGIN_MINUTES
    assert f"> {window * 60}" in alerts["BackupOverdue"].expr
    assert f"> {window * 60}" in alerts["BackupNeverReported"].expr
    # The backup reports to the Pushgateway monitoring declares, at the job the alerts select.
    [url] = [line.split()[5] for line in backup.report_lines(view) if line.startswith("  wget ")]
    assert url == f"http://{mon.PUSHGATEWAY}:{mon.PUSHGATEWAY_PORT}/metrics/job/{backup.METRICS_JOB}"


def test_without_monitoring_the_backup_reports_nowhere() -> None:
    raw, secret_keys = stack_config("staging", ROOT)
    raw = copy.deepcopy(raw)
    raw["monitoring"] = {"enabled": False}
    cfg = parse(raw, tuple(secret_keys))
    assert backup.report_lines(view_of(cfg)[0]) == []


def test_call_probes_only_when_calls_are_on() -> None:
    cfg, view = _view("staging")
    assert "CallServiceUnreachable" in {a.name for a in stack_alerts(cfg, view)}
    cfg, view = _view("staging", element_call={"enabled": False})
    assert not view.probes
    assert "CallServiceUnreachable" not in {a.name for a in stack_alerts(cfg, view)}


def test_every_certificate_hostname_is_probed_once() -> None:
    cfg, view = _view("staging")
    hostnames = certificate_hostnames(view)
    assert hostnames and len(hostnames) == len(set(hostnames))
    assert set(hostnames) == {h for c in view.certificates for h in c.hostnames}
    assert cfg.server_name in hostnames


def test_node_exporter_on_docker_the_kubelet_on_kubernetes() -> None:
    cfg, view = _view("staging")
    assert mon.NODE_EXPORTER in {t.service for t in view.metrics_targets}
    space = next(a for a in stack_alerts(cfg, view) if a.name == "VolumeSpaceLow")
    assert "node_filesystem_avail_bytes" in space.expr and "/var/lib/docker" in space.expr
    cfg, view = _view("prod")
    assert mon.NODE_EXPORTER not in {t.service for t in view.metrics_targets}
    space = next(a for a in stack_alerts(cfg, view) if a.name == "VolumeSpaceLow")
    assert f'kubelet_volume_stats_available_bytes{{namespace="{cfg.target.namespace}"}}' in space.expr


def test_each_docker_host_runs_its_own_node_exporter_and_prometheus_reaches_the_others() -> None:
    """Each host's volumes live on its own filesystems: with two hosts, one node exporter on
    each (whatever the hosts' `services` say), the remote one scraped at its host's address."""
    from components.monitoring import node_exporter_service
    from components.monitoring import render as mon_render
    from components.platform.targets import target_of

    cfg, view = _view("staging", target={"hosts": [
        {"name": "front", "url": "ssh://front.example.org", "address": "10.0.0.1"},
        {"name": "media", "url": "ssh://media.example.org", "address": "10.0.0.2", "services": ["ntfy"]}]})
    nodes = [t.service for t in view.metrics_targets if t.role == "node"]
    assert nodes == [f"{mon.NODE_EXPORTER}-on-front", f"{mon.NODE_EXPORTER}-on-media"]
    target = target_of(cfg)
    assert [target.host_of(n).name for n in nodes] == ["front", "media"]  # type: ignore[union-attr]
    assert all(node_exporter_service(cfg, n).host_paths == (("/", mon_render.HOST_ROOT),) for n in nodes)
    prometheus_host = target.host_of(mon_render.PROMETHEUS).name  # type: ignore[union-attr]
    remote = next(n for n in nodes if not n.endswith(prometheus_host))
    host, port, crosses = target.reach(mon_render.PROMETHEUS, remote, mon_render.NODE_EXPORTER_PORT)
    assert crosses and host == "10.0.0.2" and port == mon_render.NODE_EXPORTER_PORT
    # One host: the plain name, as before.
    cfg, view = _view("staging")
    assert [t.service for t in view.metrics_targets if t.role == "node"] == [mon.NODE_EXPORTER]
