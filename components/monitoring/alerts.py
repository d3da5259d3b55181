"""The stack's alert rules as data, each with the series that make it fire and the series that
keep it quiet. The rule file and promtool's unit tests for it are both rendered from this table,
so an alert cannot ship without a test that fires it and one that shows it quiet.

Synapse's process alerts come from the metrics targets the worker table declares (through the
view): a role with one instance pages when that instance is down; a role with several warns for
one instance down and pages only when every instance is.

The stack's volumes, certificates, scheduled jobs and call services come from the view too: the
filesystems' free space (node exporter on Docker hosts, the kubelet's claim statistics on
Kubernetes), the blackbox exporter's probes of every public HTTPS hostname and of every service
users dial directly, and each scheduled job's last success against its own schedule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from components.part import MetricsTarget, Probe, ScheduledJob
from config import cron

SYNAPSE_JOB = "synapse"
NODE_JOB = "node"
PUSHGATEWAY_JOB = "pushgateway"
CERTIFICATE_JOB = "certificates"
DAY_SECONDS = 86400
CERTIFICATE_DAYS = 14
# Free space below which a volume's filesystem pages, and the horizon of the filling trend.
FREE_RATIO_CRITICAL = 0.1
FILLING_WITHIN_HOURS = 24
FILLING_TREND_HOURS = 6
# Where Docker keeps named volumes (its default data root), and every directory above it: the
# filesystem holding the volumes is mounted at one of them.
DOCKER_VOLUMES_MOUNTPOINTS = ("/", "/var", "/var/lib", "/var/lib/docker", "/var/lib/docker/volumes")
# A scheduled job's run may take this long beyond its schedule's longest gap (a dump and upload
# of a large media store).
RUN_MARGIN_MINUTES = 120
LAST_SUCCESS = "last_success_timestamp_seconds"


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
    # When promtool's test evaluates (default: well past `for`).
    eval_at_minutes: int | None = None

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
        return self.eval_at_minutes if self.eval_at_minutes is not None else self.for_minutes + 15


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


def volume_alerts(kubelet_namespace: str | None) -> list[Alert]:
    """Free space on the filesystems holding the stack's volumes: node exporter's view of the
    Docker host's filesystems, or (`kubelet_namespace`) the kubelet's statistics of each claim
    in the stack's namespace."""
    if kubelet_namespace is None:
        selector = f'job="{NODE_JOB}",mountpoint=~"{_regex(DOCKER_VOLUMES_MOUNTPOINTS)}"'
        avail, size, by = "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "mountpoint"
        example = {"instance": "node-exporter", "mountpoint": "/var/lib/docker", "device": "/dev/sdb1"}
        labels = f'{{job="{NODE_JOB}",instance="node-exporter",mountpoint="/var/lib/docker",device="/dev/sdb1"}}'
    else:
        selector = f'namespace="{kubelet_namespace}"'
        avail, size, by = "kubelet_volume_stats_available_bytes", "kubelet_volume_stats_capacity_bytes", \
            "persistentvolumeclaim"
        example = {"namespace": kubelet_namespace, "persistentvolumeclaim": "synapse-media"}
        labels = f'{{namespace="{kubelet_namespace}",persistentvolumeclaim="synapse-media"}}'
    keep = ("instance", "mountpoint", "device") if kubelet_namespace is None else ("namespace", "persistentvolumeclaim")
    on = f"max by ({', '.join(keep)})"
    ratio = f"{on} ({avail}{{{selector}}}) / {on} ({size}{{{selector}}})"
    gib = 2**30
    trend = f"{on} (predict_linear({avail}{{{selector}}}[{FILLING_TREND_HOURS}h], {FILLING_WITHIN_HOURS} * 3600))"
    # 100 GiB, losing 1 GiB a minute: full within the day; healthy: steady.
    falling = f"{100 * gib}-{gib}x400"
    return [
        Alert("VolumeSpaceLow", f"{ratio} < {FREE_RATIO_CRITICAL}", 5, "critical",
              f"Less than {FREE_RATIO_CRITICAL:.0%} free on {{{{ $labels.{by} }}}}, which holds the stack's volumes",
              firing=(Series(f"{avail}{labels}", _flat(5 * gib)), Series(f"{size}{labels}", _flat(100 * gib))),
              fired_labels=(example,),
              healthy=(Series(f"{avail}{labels}", _flat(50 * gib)), Series(f"{size}{labels}", _flat(100 * gib))),
              description="PostgreSQL, the media store and Prometheus stop writing when it is full."),
        Alert("VolumeFillingUp", f"{trend} < 0 and {ratio} < 0.5", 30, "warning",
              f"{{{{ $labels.{by} }}}} fills up within {FILLING_WITHIN_HOURS} hours at the rate of the last "
              f"{FILLING_TREND_HOURS}",
              firing=(Series(f"{avail}{labels}", falling), Series(f"{size}{labels}", _flat(200 * gib, 400))),
              fired_labels=(example,),
              healthy=(Series(f"{avail}{labels}", _flat(40 * gib, 400)), Series(f"{size}{labels}", _flat(200 * gib, 400))),
              eval_at_minutes=90),
    ]


def certificate_alerts() -> list[Alert]:
    """The certificate each public HTTPS hostname serves (the blackbox exporter's probes)."""
    host = "matrix.example.org:443"
    series = f'{{job="{CERTIFICATE_JOB}",instance="{host}"}}'
    # promtool's clock starts at 0: time() is the evaluation's minute in seconds.
    at = 25 * 60
    return [
        Alert("CertificateExpiringSoon",
              f'probe_ssl_earliest_cert_expiry{{job="{CERTIFICATE_JOB}"}} - time() < {CERTIFICATE_DAYS} * {DAY_SECONDS}',
              10, "warning", f"The certificate {{{{ $labels.instance }}}} serves expires within {CERTIFICATE_DAYS} days",
              firing=(Series(f"probe_ssl_earliest_cert_expiry{series}", _flat(at + 3 * DAY_SECONDS)),),
              fired_labels=({"job": CERTIFICATE_JOB, "instance": host},),
              healthy=(Series(f"probe_ssl_earliest_cert_expiry{series}", _flat(at + 60 * DAY_SECONDS)),),
              description="Its renewal has failed: see the ACME client's log, cert-manager or the provided "
                          "certificate's source.", eval_at_minutes=25),
        Alert("CertificateProbeFailing", f'probe_success{{job="{CERTIFICATE_JOB}"}} == 0', 15, "warning",
              "No TLS handshake with {{ $labels.instance }}",
              firing=(Series(f"probe_success{series}", _flat(0)),),
              fired_labels=({"job": CERTIFICATE_JOB, "instance": host},),
              healthy=(Series(f"probe_success{series}", _flat(1)),),
              description="The site is unreachable from the stack, so its certificate's date is unknown."),
    ]


def call_alerts(probes: Sequence[Probe]) -> list[Alert]:
    """A service calls need that does not answer its probe (generated only when calls are on)."""
    calls = [p for p in probes if p.calls]
    if not calls:
        return []
    first = calls[0]
    series = f'probe_success{{job="probes-{first.module}",instance="{first.service}:{first.port}",' \
             f'probe="{first.service}",calls="true"}}'
    return [Alert(
        "CallServiceUnreachable", 'probe_success{calls="true"} == 0', 3, "critical",
        "{{ $labels.probe }} does not answer: calls fail",
        firing=(Series(series, _flat(0)),),
        fired_labels=({"job": f"probes-{first.module}", "instance": f"{first.service}:{first.port}",
                       "probe": first.service, "calls": "true"},),
        healthy=(Series(series, _flat(1)),),
        description="Probed from the stack's private network: " + "; ".join(
            f"{p.service} ({p.module} {p.port}): {p.what}" for p in calls) + ".",
    )]


def window_minutes(schedule: str, every_minutes: int | None = None) -> int:
    """How long after a scheduled job's last success its next one is surely missing: the
    schedule's longest gap between runs (or the wait between runs of a job that runs
    `every_minutes`), and the run's own margin."""
    gap = every_minutes if every_minutes is not None else cron.longest_gap_minutes(schedule)
    return gap + RUN_MARGIN_MINUTES


def _span(minutes: int) -> str:
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes} min"


def scheduled_job_alerts(jobs: Sequence[ScheduledJob]) -> list[Alert]:
    """Each scheduled job's last success (pushed by the job itself) against its schedule."""
    alerts = []
    for job in jobs:
        window = window_minutes(job.schedule, job.every_minutes)
        cadence = f"Every {job.every_minutes} min" if job.every_minutes is not None else f"Schedule '{job.schedule}'"
        metric = f'{job.job}_{LAST_SUCCESS}{{job="{job.job}"}}'
        stem = "".join(part.capitalize() for part in job.job.split("_"))
        alerts += [
            Alert(f"{stem}Overdue", f"time() - max({metric}) > {window * 60}", 5, "critical",
                  f"No successful {job.what} for longer than its schedule allows ({window // 60}h)",
                  firing=(Series(metric, _flat(-window * 60)),), fired_labels=({},),
                  healthy=(Series(metric, _flat(0)),),
                  description=f"{cadence}, longest gap {_span(window - RUN_MARGIN_MINUTES)}, "
                              f"margin {RUN_MARGIN_MINUTES // 60}h: see the {job.job} job's log."),
            # The Pushgateway keeps reports in its file across restarts: nothing there while it has
            # run for longer than the window means the job never reported.
            Alert(f"{stem}NeverReported",
                  f"absent({metric}) and on() (time() - max(process_start_time_seconds{{job=\"{PUSHGATEWAY_JOB}\"}}) "
                  f"> {window * 60})", 5, "critical",
                  f"No {job.what} has reported success in the {window // 60}h the Pushgateway has run",
                  firing=(Series(f'process_start_time_seconds{{job="{PUSHGATEWAY_JOB}"}}', _flat(-window * 60)),),
                  fired_labels=({"job": job.job},),
                  healthy=(Series(f'process_start_time_seconds{{job="{PUSHGATEWAY_JOB}"}}', _flat(-window * 60)),
                           Series(metric, _flat(0)))),
        ]
    return alerts


def stack_alerts(targets: Sequence[MetricsTarget], probes: Sequence[Probe] = (),
                 scheduled: Sequence[ScheduledJob] = (), certificates: bool = False,
                 kubelet_namespace: str | None = None) -> list[Alert]:
    """Every alert of the stack the declared targets, probes and scheduled jobs call for;
    `certificates`: the blackbox exporter probes public HTTPS hostnames."""
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
    if NODE_JOB in jobs or kubelet_namespace is not None:
        alerts += volume_alerts(kubelet_namespace)
    if "blackbox" in jobs and certificates:
        alerts += certificate_alerts()
    if "blackbox" in jobs:
        alerts += call_alerts(probes)
    if PUSHGATEWAY_JOB in jobs:
        alerts += scheduled_job_alerts(scheduled)
    return alerts
