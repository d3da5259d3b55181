"""The call and push services' metrics: each declares its Prometheus endpoint (a port of its own,
apart from what the proxy forwards), turns it on in its rendered config with the setting its image
facts name, and is scraped by the stack's Prometheus (prometheus.yml) or, on Kubernetes with
ServiceMonitors, by the cluster's; the calls dashboard reads them and lists its alerts."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import pytest
import yaml

from components.coturn import render as coturn
from components.element_call import render as ec
from components.mas import render as mas
from components.monitoring import alerts as alert_table
from components.monitoring import dashboards
from components.monitoring import render as mon
from components.ntfy import render as ntfy
from config import images
from render import offline
from stack import parse
from tests.conftest import ROOT, stack_config, stack_view

# service -> (port, path, job) of its Prometheus endpoint.
CALL_TARGETS = {
    ec.LIVEKIT_SERVICE: (ec.LIVEKIT_METRICS_PORT, "/metrics", dashboards.LIVEKIT_JOB),
    coturn.SERVICE: (coturn.METRICS_PORT, coturn.METRICS_PATH, dashboards.COTURN_JOB),
    ntfy.SERVICE: (ntfy.METRICS_PORT, "/metrics", dashboards.NTFY_JOB),
    mas.SERVICE: (mas.METRICS_PORT, mas.METRICS_PATH, dashboards.MAS_JOB),
}


def _raw(name: str, **changes: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    raw, secret_keys = stack_config(name, ROOT)
    raw = copy.deepcopy(raw)
    for key in ("element_call", "coturn", "ntfy", "mas"):
        raw[key] = {**raw.get(key, {}), "enabled": True}
    raw["coturn"].setdefault("external_ip", "203.0.113.8")
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw, tuple(secret_keys)


@functools.cache
def _run(name: str) -> offline.Run:
    raw, secret_keys = _raw(name)
    return offline.run(raw, stack=name, secret_keys=secret_keys)


@pytest.fixture(params=["staging", "prod"])
def run(request: pytest.FixtureRequest) -> offline.Run:
    return _run(request.param)


def _service(run: offline.Run, name: str) -> Any:
    return next(s["service"] for s in run.services if s["service"].name == name)


def _file(run: offline.Run, service: str, path: str) -> str:
    entry = next(s for s in run.services if s["service"].name == service)
    return str(next(f["content"] for f in entry["files"] if f["path"] == path))


def test_each_call_service_declares_a_metrics_endpoint_of_its_own(run: offline.Run) -> None:
    view = stack_view(run.cfg)
    declared = {t.service: t for t in view.metrics_targets}
    for name, (port, path, job) in CALL_TARGETS.items():
        target = declared[name]
        assert (target.port, target.path, target.job_name, target.exporter) == (port, path, job, "")
        service = _service(run, name)
        # The target's service serves there, and its image is known to (the facts' setting).
        assert (service.metrics_port, service.metrics_path) == (port, path)
        assert dict(service.metrics_labels)["job"] == job
        assert images.facts_for(service.image).prometheus, service.image
        # A port of its own: not one the proxy forwards, nor a port clients dial.
        assert port not in {p.port for p in service.ports}
        assert all(not (r.start <= port <= r.end) for r in service.port_ranges)
    forwarded = {(e.upstream_service, e.upstream_port) for _h, e in view.endpoints}
    assert not forwarded & {(name, port) for name, (port, _p, _j) in CALL_TARGETS.items()}


def test_the_rendered_configs_open_those_endpoints(run: offline.Run) -> None:
    livekit = yaml.safe_load(_file(run, ec.LIVEKIT_SERVICE, ec.LIVEKIT_CONFIG))
    # prometheus_port is deprecated in the pinned LiveKit: the nested key.
    assert livekit["prometheus"] == {"port": ec.LIVEKIT_METRICS_PORT} and "prometheus_port" not in livekit
    assert ec.LIVEKIT_METRICS_PORT != livekit["port"]
    turn = _file(run, coturn.SERVICE, coturn.CONFIG).splitlines()
    assert "prometheus" in turn and f"prometheus-port={coturn.METRICS_PORT}" in turn
    server = yaml.safe_load(_file(run, ntfy.SERVICE, ntfy.CONFIG))
    assert server["enable-metrics"] is True
    assert server["metrics-listen-http"] == f":{ntfy.METRICS_PORT}" != server["listen-http"]
    conf = yaml.safe_load(_file(run, mas.SERVICE, mas.CONFIG))
    assert conf["telemetry"] == {"metrics": {"exporter": "prometheus"}}
    [listener] = [li for li in conf["http"]["listeners"] if {"name": "prometheus"} in li["resources"]]
    assert listener["resources"] == [{"name": "prometheus"}]
    assert [b["port"] for b in listener["binds"]] == [mas.METRICS_PORT]


def test_prometheus_scrapes_each_of_them() -> None:
    raw, secret_keys = _raw("staging")
    cfg = parse(raw, secret_keys)
    conf = mon.prometheus_config(cfg, stack_view(cfg).metrics_targets)
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    for name, (port, path, job) in CALL_TARGETS.items():
        assert jobs[job].get("metrics_path", "/metrics") == path
        assert jobs[job]["static_configs"] == [{"targets": [f"{name}:{port}"],
                                                "labels": {"instance": name, "role": job}}]


def test_kubernetes_scrapes_them_through_service_monitors_and_admits_only_the_metrics_port() -> None:
    prod = _run("prod")
    assert prod.cfg.target.kind == "kubernetes" and prod.cfg.target.service_monitors
    manifests = prod.deployment.manifests
    monitors = {o["metadata"]["name"]: o for o in manifests.values() if o["kind"] == "ServiceMonitor"}
    policies = {o["metadata"]["name"]: o for o in manifests.values() if o["kind"] == "NetworkPolicy"}
    services = [o for o in manifests.values() if o["kind"] == "Service"]
    assert f"{ec.LIVEKIT_SERVICE}-public" in {s["metadata"]["name"] for s in services}
    for name, (port, path, job) in CALL_TARGETS.items():
        # Exactly the Service with the metrics port (not LiveKit's public LoadBalancer for media).
        wanted = monitors[name]["spec"]["selector"]["matchLabels"]
        assert [s["metadata"]["name"] for s in services if wanted.items() <= s["metadata"]["labels"].items()] == [name]
        [endpoint] = monitors[name]["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == ("metrics", path)
        assert {"targetLabel": "job", "replacement": job} in endpoint["relabelings"]
        # The metrics port admits scrapers only by the metrics rule; the private rule does not name it.
        rules = policies[name]["spec"]["ingress"]
        metrics_rules = [r for r in rules if {"port": port, "protocol": "TCP"} in r.get("ports", [])]
        assert metrics_rules == [{"from": [{"namespaceSelector": {}}], "ports": [{"port": port, "protocol": "TCP"}]}]
    # The stack's Prometheus (monitoring runs in prod too) may dial each of them there.
    egress = policies[mon.PROMETHEUS]["spec"]["egress"]
    for name, (port, _path, _job) in CALL_TARGETS.items():
        assert any({"port": port, "protocol": "TCP"} in r.get("ports", []) and
                   json.dumps(r["to"]).count(f'"{name}"') for r in egress), name


def test_the_calls_dashboard_reads_each_service_and_lists_its_alerts() -> None:
    raw, secret_keys = _raw("staging")
    cfg = parse(raw, secret_keys)
    view = stack_view(cfg)
    alerts = alert_table.stack_alerts(view.metrics_targets, view.probes)
    model = json.loads(dashboards.dashboards(view.metrics_targets, alerts)["matrix-stack-calls.json"])
    exprs = " ".join(expr for _title, expr in dashboards.queries(model))
    for metric in ("livekit_room_total", "livekit_participant_total", "livekit_track_published_total",
                   "livekit_nack_total", "livekit_packet_loss_total", "turn_total_allocations",
                   "ntfy_messages_published_success", "ntfy_subscribers_total", "http_server_duration_count"):
        assert metric in exprs
    [alert_list] = [p for p in model["panels"] if p["type"] == "alertlist"]
    listed = alert_list["options"]["alertInstanceLabelFilter"]
    assert "CallServiceUnreachable" in listed and "ScrapeTargetDown" in listed
    assert all(f'"{job}"' in exprs or job in exprs for job in dashboards.CALL_JOBS)


def test_no_calls_dashboard_without_call_or_push_services() -> None:
    raw, secret_keys = _raw("staging")
    targets = [t for t in stack_view(parse(raw, secret_keys)).metrics_targets if t.job_name not in dashboards.CALL_JOBS]
    assert dashboards.calls(targets, alert_table.stack_alerts(targets)) is None
    assert "matrix-stack-calls.json" not in dashboards.dashboards(targets, alert_table.stack_alerts(targets))
