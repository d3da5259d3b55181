"""Prometheus's and Alertmanager's files, as plain functions of the config and the declared
metrics targets and probes: prometheus.yml, the rule file and its promtool unit tests,
alertmanager.yml, and the blackbox exporter's blackbox.yml."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from components import yaml_text
from components.part import MetricsTarget, Probe
from components.platform.spec import ProbeJob
from config import images
from config.model import StackConfig

from .alerts import Alert

PROMETHEUS = "prometheus"
ALERTMANAGER = "alertmanager"
PROMETHEUS_PORT = images.facts_for(images.PROMETHEUS).port or 9090
ALERTMANAGER_PORT = images.facts_for(images.ALERTMANAGER).port or 9093
PROMETHEUS_CONFIG = images.config_path(images.PROMETHEUS)
ALERTMANAGER_CONFIG = images.config_path(images.ALERTMANAGER)
RULES = "/etc/prometheus/rules/stack.rules.yml"
PROMETHEUS_DATA = "/prometheus"
ALERTMANAGER_DATA = "/alertmanager"
SECRETS_DIR = "/secrets"
NTFY_PASSWORD_FILE = f"{SECRETS_DIR}/ntfy_password"
SMTP_PASSWORD_FILE = f"{SECRETS_DIR}/smtp_password"
POSTGRES_PASSWORD_FILE = f"{SECRETS_DIR}/postgres_password"
REDIS_PASSWORD_FILE = f"{SECRETS_DIR}/redis_passwords.json"

NODE_EXPORTER = "node-exporter"
BLACKBOX_EXPORTER = "blackbox-exporter"
PUSHGATEWAY = "pushgateway"
NODE_EXPORTER_PORT = images.facts_for(images.NODE_EXPORTER).port or 9100
BLACKBOX_PORT = images.facts_for(images.BLACKBOX_EXPORTER).port or 9115
PUSHGATEWAY_PORT = images.facts_for(images.PUSHGATEWAY).port or 9091
BLACKBOX_CONFIG = images.config_path(images.BLACKBOX_EXPORTER)
PUSHGATEWAY_DATA = "/pushgateway"
PUSHGATEWAY_FILE = f"{PUSHGATEWAY_DATA}/metrics.store"
# Where node exporter sees the host's root (--path.rootfs strips it from the mountpoints).
HOST_ROOT = "/host"
# The blackbox exporter's modules (blackbox.yml), and the scrape job of each kind of probe.
CERTIFICATE_MODULE = "tls_certificate"
PROBE_MODULES = {"http": "http_2xx", "tcp": "tcp_connect"}
CERTIFICATE_JOB = "certificates"
PROBE_JOB = "probes"
HTTPS_PORT = 443
PROBE_TIMEOUT_SECONDS = 5

# Each exporter: its image's port, and how it is told where the endpoint it reads is.
EXPORTER_IMAGES = {"nginx": "nginx_exporter_image", "postgres": "postgres_exporter_image",
                   "redis": "redis_exporter_image"}


def exporter_port(cfg: StackConfig, kind: str) -> int:
    port = images.facts_for(getattr(cfg.monitoring, EXPORTER_IMAGES[kind])).port
    assert port is not None
    return port


Address = Callable[[str, int], str]


def _plain(service: str, port: int) -> str:
    return f"{service}:{port}"


def scrape_targets(cfg: StackConfig, targets: Sequence[MetricsTarget]) -> list[tuple[MetricsTarget, str, int, str]]:
    """What Prometheus scrapes for each declared target: (target, service, port, path); an
    exporter stands in front of a target that speaks no Prometheus."""
    out = []
    for t in targets:
        if t.exporter:
            out.append((t, t.exporter_service, exporter_port(cfg, t.exporter), "/metrics"))
        else:
            out.append((t, t.service, t.port, t.path))
    return out


def blackbox_config() -> dict[str, Any]:
    """blackbox.yml: the certificate module reads the served chain's dates over TLS whether or not
    it is trusted or current (an expired certificate still reports its date, so the alert names
    it); the others check that a service answers."""
    timeout = f"{PROBE_TIMEOUT_SECONDS}s"
    return {"modules": {
        CERTIFICATE_MODULE: {"prober": "tcp", "timeout": timeout,
                             "tcp": {"tls": True, "tls_config": {"insecure_skip_verify": True}}},
        PROBE_MODULES["http"]: {"prober": "http", "timeout": timeout,
                                "http": {"preferred_ip_protocol": "ip4"}},
        PROBE_MODULES["tcp"]: {"prober": "tcp", "timeout": timeout, "tcp": {"preferred_ip_protocol": "ip4"}},
    }}


def blackbox_yml() -> str:
    return yaml_text.dump(blackbox_config(), sort_keys=False, default_flow_style=False, width=1000)


def certificate_hostnames(hostnames: Sequence[str]) -> list[str]:
    """The public HTTPS hostnames the certificate probe reads, once each, in order."""
    return list(dict.fromkeys(hostnames))


def _probe_job(job: str, module: str, statics: list[dict[str, Any]], blackbox: str) -> dict[str, Any]:
    """A scrape job of the blackbox exporter: each target becomes the probe's `target` parameter
    and the series' instance; the exporter's address is what Prometheus dials."""
    return {
        "job_name": job,
        "metrics_path": "/probe",
        "params": {"module": [module]},
        "static_configs": statics,
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": blackbox},
        ],
    }


def probe_groups(probes: Sequence[Probe], hostnames: Sequence[str], probe_address: Address = _plain
                 ) -> list[ProbeJob]:
    """What the blackbox exporter probes: the certificate of every public HTTPS hostname, and
    each declared probe by its module. `probe_address` is what the exporter dials for a target."""
    prober = (BLACKBOX_EXPORTER, BLACKBOX_PORT)
    groups = []
    names = certificate_hostnames(hostnames)
    if names:
        groups.append(ProbeJob(CERTIFICATE_JOB, CERTIFICATE_MODULE,
                               tuple(probe_address(h, HTTPS_PORT) for h in names), prober))
    for kind, module in PROBE_MODULES.items():
        groups += [ProbeJob(f"{PROBE_JOB}-{kind}", module, (probe_address(p.service, p.port),), prober,
                            (("probe", p.service), ("calls", "true" if p.calls else "false")))
                   for p in probes if p.module == kind]
    return groups


def probe_jobs(probes: Sequence[Probe], hostnames: Sequence[str], address: Address = _plain,
               probe_address: Address = _plain) -> list[dict[str, Any]]:
    """The blackbox exporter's scrape jobs (probe_groups), one per job name."""
    statics: dict[str, list[dict[str, Any]]] = {}
    modules: dict[str, str] = {}
    for group in probe_groups(probes, hostnames, probe_address):
        statics.setdefault(group.job, []).append(
            {"targets": list(group.targets), **({"labels": dict(group.labels)} if group.labels else {})})
        modules[group.job] = group.module
    blackbox = address(BLACKBOX_EXPORTER, BLACKBOX_PORT)
    return [_probe_job(job, modules[job], groups, blackbox) for job, groups in statics.items()]


def prometheus_config(cfg: StackConfig, targets: Sequence[MetricsTarget], address: Address = _plain,
                      evaluation_seconds: int | None = None, probes: Sequence[Probe] = (),
                      hostnames: Sequence[str] = (), probe_address: Address = _plain) -> dict[str, Any]:
    """prometheus.yml: one job per declared job name (in declaration order), each target with
    its role and instance name; the blackbox exporter's probes when it runs; Alertmanager from
    the same part."""
    interval = cfg.monitoring.scrape_interval_seconds
    jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for target, service, port, path in scrape_targets(cfg, targets):
        labels = {"instance": target.service}
        if target.role:
            labels["role"] = target.role
        jobs.setdefault((target.job_name, path), []).append({"targets": [address(service, port)], "labels": labels})
    scrape = []
    for (job, path), statics in jobs.items():
        entry: dict[str, Any] = {"job_name": job}
        # What jobs push carries their own job label (the backup's), which Prometheus keeps.
        if job == PUSHGATEWAY:
            entry["honor_labels"] = True
        if path != "/metrics":
            entry["metrics_path"] = path
        entry["static_configs"] = statics
        scrape.append(entry)
    if any(t.service == BLACKBOX_EXPORTER for t in targets):
        scrape += probe_jobs(probes, hostnames, address, probe_address)
    return {
        "global": {"scrape_interval": f"{interval}s", "evaluation_interval": f"{evaluation_seconds or interval}s"},
        "rule_files": [RULES],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [address(ALERTMANAGER, ALERTMANAGER_PORT)]}]}]},
        "scrape_configs": scrape,
    }


def prometheus_yml(cfg: StackConfig, targets: Sequence[MetricsTarget], address: Address = _plain,
                   evaluation_seconds: int | None = None, probes: Sequence[Probe] = (),
                   hostnames: Sequence[str] = ()) -> str:
    return yaml_text.dump(prometheus_config(cfg, targets, address, evaluation_seconds, probes, hostnames),
                          sort_keys=False, default_flow_style=False, width=1000)


def _rule(alert: Alert, minutes: Callable[[int], str]) -> dict[str, Any]:
    annotations = {"summary": alert.summary}
    if alert.description:
        annotations["description"] = alert.description
    return {"alert": alert.name, "expr": alert.expr, "for": minutes(alert.for_minutes),
            "labels": {"severity": alert.severity, **alert.labels}, "annotations": annotations}


def rules(alerts: Sequence[Alert], minutes: Callable[[int], str] = lambda m: f"{m}m") -> dict[str, Any]:
    """The rule file. `minutes` writes each alert's `for` (a test may shorten them)."""
    return {"groups": [{"name": "matrix-stack", "rules": [_rule(a, minutes) for a in alerts]}]}


def rules_yml(alerts: Sequence[Alert], minutes: Callable[[int], str] = lambda m: f"{m}m") -> str:
    return yaml_text.dump(rules(alerts, minutes), sort_keys=False, default_flow_style=False, width=1000)


def rule_tests(alerts: Sequence[Alert], rule_file: str) -> dict[str, Any]:
    """promtool's unit tests: each alert fires on its failure and stays quiet on healthy series."""
    tests = []
    for alert in alerts:
        at = f"{alert.eval_minutes}m"
        fired = [{"exp_labels": {**labels, "severity": alert.severity, **alert.labels},
                  "exp_annotations": alert.annotations(labels)} for labels in alert.fired_labels]
        for inputs, expected in ((alert.firing, fired), (alert.healthy, [])):
            tests.append({
                "interval": "1m",
                "input_series": [{"series": s.series, "values": s.values} for s in inputs],
                "alert_rule_test": [{"eval_time": at, "alertname": alert.name, "exp_alerts": expected}],
            })
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def ntfy_url(cfg: StackConfig, ntfy_base: str) -> str:
    """ntfy's publish URL for Alertmanager's webhook: ntfy renders title and message from the
    webhook's JSON with its templates (tpl, t, m)."""
    query = urlencode({
        "tpl": "yes",
        "t": "{{.status}}: {{.commonLabels.alertname}}",
        "m": "{{range .alerts}}{{.annotations.summary}}\n{{end}}",
        "tags": "rotating_light",
    })
    return f"{ntfy_base}/{cfg.monitoring.ntfy_topic}?{query}"


def alertmanager_config(cfg: StackConfig, ntfy_base: str | None, smtp_from: str | None = None,
                        group_wait_seconds: int = 30) -> dict[str, Any]:
    """alertmanager.yml: every alert to the stack's ntfy topic as its own publisher (the password
    a file), and by email through the stack's SMTP when configured."""
    receiver: dict[str, Any] = {"name": "operator"}
    if ntfy_base is not None:
        receiver["webhook_configs"] = [{
            "url": ntfy_url(cfg, ntfy_base),
            "send_resolved": True,
            "http_config": {"basic_auth": {"username": cfg.monitoring.ntfy_user, "password_file": NTFY_PASSWORD_FILE}},
        }]
    smtp = cfg.synapse.smtp
    email = cfg.monitoring.email
    if email is not None and smtp is not None:
        mail: dict[str, Any] = {
            "to": email.to,
            "from": smtp.from_address,
            "smarthost": f"{smtp.host}:{smtp.port}",
            "require_tls": smtp.require_transport_security,
            "send_resolved": True,
        }
        if smtp.user:
            mail["auth_username"] = smtp.user
            mail["auth_password_file"] = SMTP_PASSWORD_FILE
        receiver["email_configs"] = [mail]
    return {
        "route": {"receiver": "operator", "group_by": ["alertname", "role"],
                  "group_wait": f"{group_wait_seconds}s", "group_interval": "5m", "repeat_interval": "4h"},
        # A page for a role down says enough: its instances' warnings wait.
        "inhibit_rules": [{"source_matchers": ['alertname="SynapseRoleDown"'],
                           "target_matchers": ['alertname="SynapseInstanceDown"'], "equal": ["role"]}],
        "receivers": [receiver],
    }


def alertmanager_yml(cfg: StackConfig, ntfy_base: str | None, group_wait_seconds: int = 30) -> str:
    return yaml_text.dump(alertmanager_config(cfg, ntfy_base, group_wait_seconds=group_wait_seconds),
                          sort_keys=False, default_flow_style=False, width=1000)
