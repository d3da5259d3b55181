"""The stack's alert rules as data, each with the series that make it fire and the series that
keep it quiet. The rule file and promtool's unit tests for it are both rendered from this table,
so an alert cannot ship without a test that fires it and one that shows it quiet.

Synapse's process alerts come from the metrics targets the worker table declares (through the
view): a role with one instance pages when that instance is down; a role with several warns for
one instance down and pages only when every instance is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from components.part import MetricsTarget

SYNAPSE_JOB = "synapse"


@dataclass(frozen=True)
class Series:
    """One input series of a promtool unit test: a selector and its values (promtool's notation)."""

    series: str
    values: str


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_minutes: int
    severity: str  # "critical" pages, "warning" waits for working hours
    summary: str
    firing: tuple[Series, ...]  # the failure it names
    fired_labels: tuple[dict[str, str], ...]  # the labels of each alert the failure raises
    healthy: tuple[Series, ...]  # the same series, healthy
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def annotations(self, labels: dict[str, str]) -> dict[str, str]:
        """The annotations an alert with these labels carries (they template labels only, so a
        test can say them exactly)."""
        def fill(text: str) -> str:
            return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
        out = {"summary": fill(self.summary)}
        if self.description:
            out["description"] = fill(self.description)
        return out

    @property
    def eval_minutes(self) -> int:
        """When the test looks: well past `for`, with the inputs' rate windows filled."""
        return self.for_minutes + 15


def _regex(names: Sequence[str]) -> str:
    return "|".join(sorted(names))


def _flat(value: float, minutes: int = 60) -> str:
    return f"{value}x{minutes}"


def roles(targets: Sequence[MetricsTarget]) -> dict[str, list[MetricsTarget]]:
    """Synapse's metrics targets by role, in the table's order."""
    by_role: dict[str, list[MetricsTarget]] = {}
    for target in targets:
        if target.job_name == SYNAPSE_JOB:
            by_role.setdefault(target.role, []).append(target)
    return by_role


def _up(target: MetricsTarget, value: int) -> Series:
    return Series(f'up{{job="{target.job_name}",role="{target.role}",instance="{target.service}"}}', _flat(value))


def synapse_alerts(targets: Sequence[MetricsTarget]) -> list[Alert]:
    by_role = roles(targets)
    single = {role: ts for role, ts in by_role.items() if len(ts) == 1}
    several = {role: ts for role, ts in by_role.items() if len(ts) > 1}
    alerts: list[Alert] = []
    if single:
        role, (target,) = next(iter(single.items()))
        alerts.append(Alert(
            "SynapseProcessDown",
            f'up{{job="{SYNAPSE_JOB}",role=~"{_regex(list(single))}"}} == 0', 2, "critical",
            "Synapse's only {{ $labels.role }} process ({{ $labels.instance }}) is down",
            firing=(_up(target, 0),),
            fired_labels=({"job": SYNAPSE_JOB, "role": role, "instance": target.service},),
            healthy=(_up(target, 1),),
            description="The role has one instance: what it does stops for the whole server.",
        ))
    if several:
        role, (first, second, *_rest) = next(iter(several.items()))
        alerts.append(Alert(
            "SynapseInstanceDown",
            f'up{{job="{SYNAPSE_JOB}",role=~"{_regex(list(several))}"}} == 0', 5, "warning",
            "Synapse {{ $labels.role }} instance {{ $labels.instance }} is down",
            firing=(_up(first, 0), _up(second, 1)),
            fired_labels=({"job": SYNAPSE_JOB, "role": role, "instance": first.service},),
            healthy=(_up(first, 1), _up(second, 1)),
            description="Its role has other instances, which take its share.",
        ))
        alerts.append(Alert(
            "SynapseRoleDown",
            f'sum by (role) (up{{job="{SYNAPSE_JOB}",role=~"{_regex(list(several))}"}}) == 0', 2, "critical",
            "Every Synapse {{ $labels.role }} instance is down",
            firing=(_up(first, 0), _up(second, 0)),
            fired_labels=({"role": role},),
            healthy=(_up(first, 0), _up(second, 1)),
        ))
    return alerts


def stack_alerts(targets: Sequence[MetricsTarget]) -> list[Alert]:
    """Every alert of the stack the declared targets call for."""
    jobs = {t.job_name for t in targets}
    others = sorted(jobs - {SYNAPSE_JOB})
    alerts = synapse_alerts(targets)
    if others:
        job = others[0]
        alerts.append(Alert(
            "ScrapeTargetDown",
            f'up{{job=~"{_regex(others)}"}} == 0', 5, "critical",
            "{{ $labels.job }} ({{ $labels.instance }}) does not answer Prometheus",
            firing=(Series(f'up{{job="{job}",instance="{job}"}}', _flat(0)),),
            fired_labels=({"job": job, "instance": job},),
            healthy=(Series(f'up{{job="{job}",instance="{job}"}}', _flat(1)),),
            description="The service or its exporter is down or unreachable.",
        ))
    if "edge" in jobs:
        alerts.append(Alert(
            "EdgeProxyDown", "nginx_up == 0", 2, "critical",
            "The routing proxy does not answer its exporter: every public site is down",
            firing=(Series('nginx_up{job="edge"}', _flat(0)),), fired_labels=({"job": "edge"},),
            healthy=(Series('nginx_up{job="edge"}', _flat(1)),),
        ))
    if "redis" in jobs:
        alerts.append(Alert(
            "RedisDown", "redis_up == 0", 2, "critical",
            "Redis is down: Synapse's workers cannot replicate",
            firing=(Series('redis_up{job="redis"}', _flat(0)),), fired_labels=({"job": "redis"},),
            healthy=(Series('redis_up{job="redis"}', _flat(1)),),
        ))
    if "postgres" in jobs:
        alerts += [
            Alert("PostgresDown", "pg_up == 0", 2, "critical", "PostgreSQL does not answer its exporter",
                  firing=(Series('pg_up{job="postgres"}', _flat(0)),), fired_labels=({"job": "postgres"},),
                  healthy=(Series('pg_up{job="postgres"}', _flat(1)),)),
            Alert("PostgresConnectionsNearLimit",
                  "sum(pg_stat_database_numbackends) / max(pg_settings_max_connections) > 0.8", 5, "warning",
                  "PostgreSQL holds more than 80% of max_connections",
                  firing=(Series('pg_stat_database_numbackends{datname="synapse"}', _flat(90)),
                          Series("pg_settings_max_connections", _flat(100))),
                  fired_labels=({},),
                  healthy=(Series('pg_stat_database_numbackends{datname="synapse"}', _flat(40)),
                           Series("pg_settings_max_connections", _flat(100))),
                  description="New connections will be refused; the pools' sizes add up to close to the limit."),
        ]
    if SYNAPSE_JOB in jobs:
        responses = "synapse_http_server_responses_total"
        alerts += [
            Alert("SynapseHttp5xxRatio",
                  f'sum(rate({responses}{{code=~"5.."}}[5m])) / sum(rate({responses}[5m])) > 0.05', 10, "warning",
                  "More than 5% of the requests the proxy hands Synapse fail with 5xx",
                  firing=(Series(f'{responses}{{code="200"}}', "0+60x60"),
                          Series(f'{responses}{{code="502"}}', "0+20x60")),
                  fired_labels=({},),
                  healthy=(Series(f'{responses}{{code="200"}}', "0+60x60"),
                           Series(f'{responses}{{code="502"}}', "0+0x60"))),
            Alert("SynapseFederationSendBacklog",
                  "sum(synapse_federation_transaction_queue_pending_pdus) > 500", 15, "warning",
                  "More than 500 events wait to be sent to other servers",
                  firing=(Series('synapse_federation_transaction_queue_pending_pdus{instance="s"}', _flat(800)),),
                  fired_labels=({},),
                  healthy=(Series('synapse_federation_transaction_queue_pending_pdus{instance="s"}', _flat(3)),)),
            Alert("SynapseEventProcessingLag",
                  "max by (name) (synapse_event_processing_lag) > 60000", 10, "warning",
                  "Synapse's {{ $labels.name }} handles persisted events more than a minute late",
                  firing=(Series('synapse_event_processing_lag{name="federation_sender"}', _flat(300000)),),
                  fired_labels=({"name": "federation_sender"},),
                  healthy=(Series('synapse_event_processing_lag{name="federation_sender"}', _flat(200)),),
                  description="Persisted events wait for federation sending, pushers or appservices."),
            Alert("SynapseDatabasePoolWaits",
                  "sum(rate(synapse_storage_schedule_time_sum[5m])) / sum(rate(synapse_storage_schedule_time_count[5m]))"
                  " > 0.1", 10, "warning",
                  "Synapse waits more than 100ms on average for a database connection",
                  firing=(Series("synapse_storage_schedule_time_sum", "0+30x60"),
                          Series("synapse_storage_schedule_time_count", "0+100x60")),
                  fired_labels=({},),
                  healthy=(Series("synapse_storage_schedule_time_sum", "0+1x60"),
                           Series("synapse_storage_schedule_time_count", "0+100x60")),
                  description="Its pools (synapse.database cp_max) are too small for the load, or queries are slow."),
        ]
    if "alertmanager" in jobs:
        alerts.append(Alert(
            "AlertDeliveryFailing", "sum by (integration) (rate(alertmanager_notifications_failed_total[10m])) > 0",
            10, "critical", "Alertmanager cannot deliver alerts through {{ $labels.integration }}",
            firing=(Series('alertmanager_notifications_failed_total{integration="webhook"}', "0+1x60"),),
            fired_labels=({"integration": "webhook"},),
            healthy=(Series('alertmanager_notifications_failed_total{integration="webhook"}', "0+0x60"),),
            description="Nobody hears of the other alerts meanwhile: check ntfy and the stack's SMTP.",
        ))
    return alerts
