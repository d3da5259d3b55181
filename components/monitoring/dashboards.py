"""The stack's Grafana dashboards, built in code with grafana-foundation-sdk from the metrics
targets the parts declare (the view) and the alert table (alerts.py): an overview of the stack's
health, Synapse by role (one row per role of the worker table), federation, the edge, and calls
and push (LiveKit, coturn, ntfy, MAS).

Each dashboard counts its own firing alerts (Prometheus's ALERTS series, filtered to the alerts of
the table that concern it), lists them (Grafana's alert list over the Prometheus data source, whose
rules Grafana shows) and links to Grafana's alerting page for them. A panel appears only when the
targets it reads are declared, so no panel of a rendered dashboard is empty by construction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DashboardLinkType, DataSourceRef

from components.part import MetricsTarget

from .alerts import SYNAPSE_JOB, Alert, roles

# The provisioned Prometheus data source (grafana.py provisions it under this uid and name).
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
DATASOURCE_NAME = "Prometheus"
# Grafana widens it to at least four scrape intervals, so a rate always has two samples.
RATE = "$__rate_interval"
TAG = "matrix-stack"
# Grafana's home dashboard (grafana.ini).
HOME = "matrix-stack-overview"

REQUESTS = "synapse_http_server_requests_received_total"
RESPONSES = "synapse_http_server_responses_total"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    # The alerts of the table that concern this board (by name).
    alerts: tuple[str, ...]


def _regex(names: Sequence[str]) -> str:
    return "|".join(sorted(names))


def _alerts_about(alerts: Sequence[Alert], concerns: Callable[[Alert], bool]) -> tuple[str, ...]:
    return tuple(a.name for a in alerts if concerns(a))


def _firing(names: Sequence[str]) -> Panel:
    selector = f'ALERTS{{alertstate="firing",alertname=~"{_regex(names)}"}}' if names else 'ALERTS{alertstate="firing"}'
    # No firing alert is no ALERTS series at all: the count reads 0 then.
    return Panel("Firing alerts", (Query(f"count({selector}) or vector(0)", "firing"),), kind="stat",
                 description="Prometheus's firing alerts of this dashboard (the alert list below names them).")


def _jobs(targets: Sequence[MetricsTarget]) -> set[str]:
    return {t.job_name for t in targets}


def overview(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> Board:
    jobs = _jobs(targets)
    health = [
        _firing([a.name for a in alerts]),
        Panel("Targets up", (Query("sum(up)", "up"),), kind="stat",
              description=f"Of {len(targets)} declared metrics targets."),
        Panel("Targets up by job", (Query("sum by (job) (up)", "{{job}}"),)),
    ]
    synapse: list[Panel] = []
    if SYNAPSE_JOB in jobs:
        sel = f'job="{SYNAPSE_JOB}"'
        synapse = [
            Panel("Requests per second by role",
                  (Query(f"sum by (role) (rate({REQUESTS}{{{sel}}}[{RATE}]))", "{{role}}"),), unit="reqps"),
            Panel("Share of 5xx responses",
                  (Query(f'(sum(rate({RESPONSES}{{{sel},code=~"5.."}}[{RATE}])) or vector(0))'
                         f" / sum(rate({RESPONSES}{{{sel}}}[{RATE}]))", "5xx"),), unit="percentunit"),
            Panel("CPU by role", (Query(f"sum by (role) (rate(process_cpu_seconds_total{{{sel}}}[{RATE}]))",
                                        "{{role}}"),), unit="percentunit"),
            Panel("Resident memory by role",
                  (Query(f"sum by (role) (process_resident_memory_bytes{{{sel}}})", "{{role}}"),), unit="bytes"),
        ]
    stores: list[Panel] = []
    if "postgres" in jobs:
        stores.append(Panel("PostgreSQL connections", (
            Query("sum(pg_stat_database_numbackends)", "in use"),
            Query("max(pg_settings_max_connections)", "limit"))))
    if "redis" in jobs:
        stores.append(Panel("Redis clients", (Query("sum(redis_connected_clients)", "clients"),)))
    rows = [("Health", tuple(health))]
    if synapse:
        rows.append(("Synapse", tuple(synapse)))
    if stores:
        rows.append(("Data stores", tuple(stores)))
    if "edge" in jobs:
        rows.append(("Edge", edge_panels()))
    return Board(HOME, "Matrix stack: overview",
                 "The stack's health at a glance: alerts, targets, Synapse's load, the data stores and the edge.",
                 tuple(rows), tuple(a.name for a in alerts))


def synapse_roles(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> Board | None:
    by_role = roles(targets)
    if not by_role:
        return None
    rows = []
    for role, members in by_role.items():
        sel = f'job="{SYNAPSE_JOB}",role="{role}"'
        rows.append((f"{role} ({len(members)})", (
            Panel(f"{role}: instances up", (Query(f"sum(up{{{sel}}})", "up"),), kind="stat",
                  description=f"Of {len(members)}: " + ", ".join(t.service for t in members)),
            # A role the proxy routes nothing to serves no requests: its rate reads 0.
            Panel(f"{role}: requests per second",
                  (Query(f"sum(rate({REQUESTS}{{{sel}}}[{RATE}])) or vector(0)", "requests"),), unit="reqps"),
            Panel(f"{role}: CPU by instance",
                  (Query(f"sum by (instance) (rate(process_cpu_seconds_total{{{sel}}}[{RATE}]))", "{{instance}}"),),
                  unit="percentunit"),
            Panel(f"{role}: resident memory by instance",
                  (Query(f"sum by (instance) (process_resident_memory_bytes{{{sel}}})", "{{instance}}"),),
                  unit="bytes"),
        )))
    concerned = _alerts_about(alerts, lambda a: "synapse" in a.expr)
    return Board("matrix-stack-synapse", "Matrix stack: Synapse by role",
                 "Every role of the worker table: its instances, requests, CPU and memory.",
                 (("Alerts", (_firing(concerned),)), *rows), concerned)


def federation(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> Board | None:
    if SYNAPSE_JOB not in _jobs(targets):
        return None
    sel = f'job="{SYNAPSE_JOB}"'
    concerned = _alerts_about(alerts, lambda a: "synapse_federation" in a.expr or "event_processing" in a.expr)
    panels = (
        _firing(concerned),
        Panel("Events waiting to be sent",
              (Query(f"sum(synapse_federation_transaction_queue_pending_pdus{{{sel}}}) or vector(0)", "events"),)),
        Panel("Federation requests received per second",
              (Query(f'sum by (role) (rate({REQUESTS}{{{sel},servlet=~"Federation.*"}}[{RATE}])) or vector(0)',
                     "{{role}}"),), unit="reqps"),
        Panel("Event processing lag", (Query(f"max by (name) (synapse_event_processing_lag{{{sel}}})", "{{name}}"),),
              unit="ms", description="How late each stream's handlers read persisted events."),
    )
    return Board("matrix-stack-federation", "Matrix stack: federation",
                 "What the server sends to and receives from other servers.", (("Federation", panels),), concerned)


def edge_panels() -> tuple[Panel, ...]:
    return (
        Panel("Proxy up", (Query("max(nginx_up)", "up"),), kind="stat"),
        Panel("Requests per second", (Query(f"sum(rate(nginx_http_requests_total[{RATE}]))", "requests"),),
              unit="reqps"),
        Panel("Connections", tuple(Query(f"sum(nginx_connections_{state})", state)
                                   for state in ("active", "reading", "writing", "waiting"))),
    )


def edge(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> Board | None:
    if "edge" not in _jobs(targets):
        return None
    concerned = _alerts_about(alerts, lambda a: "nginx" in a.expr)
    return Board("matrix-stack-edge", "Matrix stack: edge",
                 "The routing proxy every public site goes through.",
                 (("Edge", (_firing(concerned), *edge_panels())),), concerned)


# The call and push services' scrape jobs (their parts' MetricsTarget.job).
LIVEKIT_JOB, COTURN_JOB, NTFY_JOB, MAS_JOB = "livekit", "coturn", "ntfy", "mas"
CALL_JOBS = (LIVEKIT_JOB, COTURN_JOB, NTFY_JOB, MAS_JOB)
# Series the call board reads that concern it in an alert's expression.
CALL_METRIC_PREFIXES = ("livekit_", "turn_", "ntfy_", "http_server_duration")


def _rate(metric: str, sel: str, by: str = "") -> str:
    """A per-second rate summed (by `by`), 0 while the counter has no series yet (a labelled
    counter appears with its first increment)."""
    return f"sum{f' by ({by})' if by else ''} (rate({metric}{{{sel}}}[{RATE}])) or vector(0)"


def livekit_panels() -> tuple[Panel, ...]:
    # livekit-server v1.13.5, pkg/telemetry/prometheus (namespace "livekit"): rooms.go's gauges
    # room_total, participant_total and track_published_total{kind} (each a current count despite
    # the suffix); packets.go's counters packet_total{direction}, nack_total{direction} and
    # packet_loss_total{direction}.
    sel = f'job="{LIVEKIT_JOB}"'
    return (
        Panel("Rooms", (Query(f"sum(livekit_room_total{{{sel}}})", "rooms"),), kind="stat"),
        Panel("Participants", (Query(f"sum(livekit_participant_total{{{sel}}})", "participants"),), kind="stat"),
        Panel("Published tracks by kind",
              (Query(f"sum by (kind) (livekit_track_published_total{{{sel}}}) or vector(0)", "{{kind}}"),)),
        Panel("Packets per second by direction",
              (Query(_rate("livekit_packet_total", sel, "direction"), "{{direction}}"),), unit="pps"),
        Panel("NACKs and lost packets per second", (
            Query(_rate("livekit_nack_total", sel), "NACKs"),
            Query(_rate("livekit_packet_loss_total", sel), "lost")), unit="pps",
              description="Retransmission requests and packets lost, both directions: rising while the "
                          "packet rate holds means the network between the SFU and its clients drops."),
    )


def coturn_panels() -> tuple[Panel, ...]:
    # coturn 4.17.0, src/apps/relay/prom_server.c: turn_total_allocations{type} (a gauge of current
    # allocations), turn_total_traffic_rcvb and _sentb (counters of finished sessions' bytes).
    sel = f'job="{COTURN_JOB}"'
    return (
        Panel("TURN allocations",
              (Query(f"sum by (type) (turn_total_allocations{{{sel}}}) or vector(0)", "{{type}}"),)),
        Panel("TURN relayed bytes per second (finished sessions)", (
            Query(_rate("turn_total_traffic_rcvb", sel), "received"),
            Query(_rate("turn_total_traffic_sentb", sel), "sent")), unit="Bps"),
    )


def ntfy_panels() -> tuple[Panel, ...]:
    # ntfy v2.13.0, server/server_metrics.go: ntfy_messages_published_success and _failure, and
    # ntfy_matrix_published_success and _failure (Synapse's pushes), counters registered at start;
    # ntfy_subscribers_total, a gauge.
    sel = f'job="{NTFY_JOB}"'
    return (
        Panel("Messages published per second", (
            Query(_rate("ntfy_messages_published_success", sel), "published"),
            Query(_rate("ntfy_messages_published_failure", sel), "failed")), unit="reqps"),
        Panel("Matrix pushes per second", (
            Query(_rate("ntfy_matrix_published_success", sel), "delivered"),
            Query(_rate("ntfy_matrix_published_failure", sel), "failed")), unit="reqps",
              description="What Synapse's pusher hands ntfy's Matrix push gateway."),
        Panel("Subscribers", (Query(f"sum(ntfy_subscribers_total{{{sel}}})", "subscribers"),), kind="stat"),
    )


def mas_panels() -> tuple[Panel, ...]:
    # MAS v1.22.0, crates/cli/src/server.rs: every listener's requests recorded in the histogram
    # http.server.duration with http.response.status_code; its Prometheus exporter names it
    # http_server_duration (no unit given, so no unit suffix) with http_response_status_code.
    sel = f'job="{MAS_JOB}"'
    requests = "http_server_duration_count"
    return (
        Panel("MAS requests per second by status",
              (Query(_rate(requests, sel, "http_response_status_code"), "{{http_response_status_code}}"),),
              unit="reqps"),
        Panel("MAS share of 5xx responses",
              (Query(f'(sum(rate({requests}{{{sel},http_response_status_code=~"5.."}}[{RATE}])) or vector(0))'
                     f" / (sum(rate({requests}{{{sel}}}[{RATE}])) > 0) or vector(0)", "5xx"),), unit="percentunit"),
    )


def calls(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> Board | None:
    jobs = _jobs(targets) & set(CALL_JOBS)
    if not jobs:
        return None
    present = [job for job in CALL_JOBS if job in jobs]
    concerned = _alerts_about(alerts, lambda a: a.name in ("CallServiceUnreachable", "ScrapeTargetDown")
                              or any(prefix in a.expr for prefix in CALL_METRIC_PREFIXES))
    health = (_firing(concerned),
              Panel("Call and push services up",
                    (Query(f'sum by (job) (up{{job=~"{_regex(present)}"}})', "{{job}}"),)))
    rows: list[tuple[str, tuple[Panel, ...]]] = [("Alerts", health)]
    for job, title, panels in ((LIVEKIT_JOB, "LiveKit (Element Call's SFU)", livekit_panels),
                               (COTURN_JOB, "TURN (coturn)", coturn_panels),
                               (NTFY_JOB, "Push (ntfy)", ntfy_panels),
                               (MAS_JOB, "Authentication (MAS)", mas_panels)):
        if job in jobs:
            rows.append((title, panels()))
    return Board("matrix-stack-calls", "Matrix stack: calls and push",
                 "Element Call's SFU, TURN, push notifications and the authentication service.",
                 tuple(rows), concerned)


def boards(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> list[Board]:
    built = [overview(targets, alerts), synapse_roles(targets, alerts), federation(targets, alerts),
             edge(targets, alerts), calls(targets, alerts)]
    return [b for b in built if b is not None]


# ---------------------------------------------------------------- the SDK's dashboards


def _alerts_link() -> board.DashboardLink:
    # Grafana's alerting page lists the data source's rules (the stack's rule file), read-only.
    search = urlencode({"search": f"datasource:{DATASOURCE_NAME}"})
    return (board.DashboardLink("Alerts").type(DashboardLinkType.LINK).url(f"/alerting/list?{search}")
            .icon("bell").tooltip("The stack's alert rules in Grafana's alerting page"))


def _alert_list(names: Sequence[str]) -> board.Panel:
    # Grafana's alert-list panel (no typed builder in the SDK): firing and pending instances of
    # the data source's rules, narrowed to this dashboard's alerts.
    options = {"viewMode": "list", "groupMode": "default", "maxItems": 20, "sortOrder": 1,
               "dashboardAlerts": False, "alertName": "", "datasource": DATASOURCE_NAME,
               "alertInstanceLabelFilter": f'{{alertname=~"{_regex(names)}"}}' if names else "",
               "stateFilter": {"firing": True, "pending": True, "error": True, "noData": False, "normal": False},
               "showInstances": True}
    return board.Panel().type("alertlist").title("Alerts").options(options).height(8).span(24)


def _panel(panel: Panel, width: int) -> Any:
    builder: Any = stat.Panel() if panel.kind == "stat" else timeseries.Panel()
    builder = builder.title(panel.title).datasource(DATASOURCE).unit(panel.unit).height(8).span(width)
    if panel.description:
        builder = builder.description(panel.description)
    for index, query in enumerate(panel.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def dashboard(spec: Board) -> dict[str, Any]:
    """The dashboard's JSON model, as Grafana's provisioning reads it."""
    built = (board.Dashboard(spec.title).uid(spec.uid).description(spec.description).tags([TAG])
             .refresh("1m").time("now-6h", "now").timezone("browser").readonly()
             .link(_alerts_link()))
    for title, panels in spec.rows:
        built = built.with_row(board.Row(title))
        width = max(6, 24 // max(1, len(panels)))
        for panel in panels:
            built = built.with_panel(_panel(panel, width))
    built = built.with_row(board.Row("Alert list")).with_panel(_alert_list(spec.alerts))
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(built.build()))


def dashboards(targets: Sequence[MetricsTarget], alerts: Sequence[Alert]) -> dict[str, str]:
    """File name -> dashboard JSON, for every board the targets call for."""
    return {f"{spec.uid}.json": json.dumps(dashboard(spec), indent=2, sort_keys=True) + "\n"
            for spec in boards(targets, alerts)}


def queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of a dashboard's JSON model."""
    return [(panel.get("title", ""), target["expr"]) for panel in model.get("panels", [])
            for target in panel.get("targets") or [] if "expr" in target]
