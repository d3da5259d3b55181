"""Monitoring: Prometheus scrapes every metrics endpoint the parts declare (view.metrics_targets),
with an exporter in front of those that speak no Prometheus (nginx's stub_status, PostgreSQL,
Redis); its alert rules come from the same declarations (alerts.py); Alertmanager delivers to
the stack's own ntfy topic as a publisher with a password of its own, and by email through the
stack's SMTP when asked to."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pulumi

from components import image_facts
from components.part import (
    AFTER_CLUSTER,
    BuildContext,
    Component,
    Contribution,
    DatabaseClaim,
    Endpoint,
    MetricsTarget,
    OAuthClient,
    Part,
    derive,
)
from components.platform.spec import File, Port, Service, Volume
from components.view import StackView
from config.checks import Finding
from config.model import StackConfig

from . import alerts as alert_table
from . import grafana, render

COMPONENT = "monitoring"
# postgres_exporter's own role and database: it reads the server's statistics views, which any
# role may read, and owns nothing else.
DATABASE = "monitoring"
DATABASE_PASSWORD = "monitoring_database"
# Shared secrets other parts generate (Contribution.shared_secrets).
NTFY_ALERTS_PASSWORD = "ntfy_alerts_password"
REDIS_PASSWORD = "redis"
STAND_IN = "stand-in"


def ntfy_base(view: StackView) -> str | None:
    """ntfy on the private network (Alertmanager does not go through the public proxy)."""
    for _host, endpoint in view.endpoints:
        if endpoint.key == "ntfy" and endpoint.upstream_service:
            return f"http://{endpoint.upstream_service}:{endpoint.upstream_port}"
    return None


class Monitoring(Part):
    name = "monitoring"
    # After the cluster (it reads Redis's password), before the bundled PostgreSQL, which reads
    # its exporter's database password.
    stage = AFTER_CLUSTER
    switches = ("monitoring.enabled",)
    reads = ("monitoring", "synapse.smtp", "ntfy.enabled", "mas.enabled", "hostnames")

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.monitoring.enabled

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        return [MetricsTarget(render.PROMETHEUS, render.PROMETHEUS_PORT, role="prometheus", job="prometheus"),
                MetricsTarget(render.ALERTMANAGER, render.ALERTMANAGER_PORT, role="alertmanager", job="alertmanager")]

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        return [grafana.endpoint()] if cfg.monitoring.grafana.enabled else []

    def oauth_clients(self, cfg: StackConfig) -> list[OAuthClient]:
        return [grafana.oauth_client(cfg)] if grafana.logs_in_through_mas(cfg) else []

    def database_claims(self, cfg: StackConfig) -> list[DatabaseClaim]:
        if cfg.synapse.database.kind != "bundled":
            return []
        return [DatabaseClaim(DATABASE, DATABASE, ("postgres-exporter",), 1, DATABASE_PASSWORD)]

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        return (DATABASE_PASSWORD, NTFY_ALERTS_PASSWORD, REDIS_PASSWORD, "smtp", *grafana_secret_names(cfg))

    def check(self, cfg: StackConfig, view: StackView) -> list[Finding]:
        findings: list[Finding] = []
        if cfg.monitoring.email is not None and cfg.synapse.smtp is None:
            findings.append(("monitoring.email", cfg.monitoring.email.to,
                             "alerts by email need a synapse.smtp block to send them"))
        if ntfy_base(view) is None and cfg.monitoring.email is None:
            findings.append(("monitoring.enabled", True,
                             "alerts need somewhere to go: ntfy.enabled: true or monitoring.email"))
        return findings

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return services(cfg, view, secrets)

    def together(self, cfg: StackConfig, view: StackView, services: list[Service]) -> list[list[str]]:
        return [[render.PROMETHEUS, render.ALERTMANAGER]]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        from components import secrets as gen

        component = Component("Monitoring", self.name)
        shared: dict[str, pulumi.Input[str]] = {}
        for built in ctx.built:
            shared.update(built.shared_secrets)
        values: dict[str, pulumi.Input[str]] = {k: v for k, v in shared.items()
                                                if k in (NTFY_ALERTS_PASSWORD, REDIS_PASSWORD)}
        mine: dict[str, pulumi.Input[str]] = {}
        if self.database_claims(cfg):
            mine[DATABASE_PASSWORD] = gen.password(f"{self.name}-database-password", component, protect=cfg.protect)
        values.update(mine)
        if cfg.smtp_password is not None:
            values["smtp"] = pulumi.Output.secret(cfg.smtp_password.get_secret_value())
        outputs: dict[str, object] = {}
        if cfg.monitoring.grafana.enabled:
            values.update({k: v for k, v in shared.items() if k in grafana_secret_names(cfg)})
            admin = gen.password(f"{self.name}-grafana-admin-password", component, protect=cfg.protect)
            values[grafana.ADMIN_PASSWORD] = admin
            values[grafana.SECRET_KEY] = gen.password(f"{self.name}-grafana-secret-key", component, protect=cfg.protect)
            outputs = {"grafana_url": cfg.url(grafana.ENDPOINT_KEY), "grafana_admin_user": grafana.ADMIN_USER,
                       "grafana_admin_password": admin}
        component.register_outputs({})
        return Contribution(parent=component, services=services(cfg, ctx.view, values), shared_secrets=mine,
                            outputs=outputs)


def grafana_secret_names(cfg: StackConfig) -> tuple[str, ...]:
    if not cfg.monitoring.grafana.enabled:
        return ()
    client = (grafana.oauth_client(cfg).secret,) if grafana.logs_in_through_mas(cfg) else ()
    return (grafana.ADMIN_PASSWORD, grafana.SECRET_KEY, *client)


def services(cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
    m = cfg.monitoring
    targets = view.metrics_targets
    alerts = alert_table.stack_alerts(targets)
    scraped = render.scrape_targets(cfg, targets)
    reaches = tuple(sorted({(service, port) for _t, service, port, _p in scraped if service != render.PROMETHEUS}))
    ntfy = ntfy_base(view)

    def address(service: str, port: int) -> str:
        # A target on another Docker host is dialled at that host's published port.
        host, number, _crosses = view.target.reach(render.PROMETHEUS, service, port)
        return f"{host}:{number}"

    prometheus = Service(
        name=render.PROMETHEUS,
        component=COMPONENT,
        image=m.prometheus_image,
        args=(f"--config.file={render.PROMETHEUS_CONFIG}", f"--storage.tsdb.path={render.PROMETHEUS_DATA}",
              f"--storage.tsdb.retention.time={m.retention_days}d", f"--web.listen-address=:{render.PROMETHEUS_PORT}"),
        files=[File(render.PROMETHEUS_CONFIG, render.prometheus_yml(cfg, targets, address)),
               File(render.RULES, render.rules_yml(alerts))],
        ports=[Port("http", render.PROMETHEUS_PORT)],
        volumes=[Volume("prometheus-data", render.PROMETHEUS_DATA, size="10Gi",
                        owner=image_facts.non_root_user(m.prometheus_image))],
        health=image_facts.http_check(m.prometheus_image, render.PROMETHEUS_PORT),
        user=image_facts.non_root_user(m.prometheus_image),
        read_only_root=True,
        reaches=reaches,
    )
    am_files = [File(render.ALERTMANAGER_CONFIG, render.alertmanager_yml(cfg, ntfy))]
    if ntfy is not None:
        am_files.append(File(render.NTFY_PASSWORD_FILE, secrets[NTFY_ALERTS_PASSWORD], secret=True, mode=0o400))
    if m.email is not None and cfg.synapse.smtp is not None and cfg.synapse.smtp.user and "smtp" in secrets:
        am_files.append(File(render.SMTP_PASSWORD_FILE, secrets["smtp"], secret=True, mode=0o400))
    alertmanager = Service(
        name=render.ALERTMANAGER,
        component=COMPONENT,
        image=m.alertmanager_image,
        # One instance: no gossip cluster to listen for.
        args=(f"--config.file={render.ALERTMANAGER_CONFIG}", f"--storage.path={render.ALERTMANAGER_DATA}",
              f"--web.listen-address=:{render.ALERTMANAGER_PORT}", "--cluster.listen-address="),
        files=am_files,
        ports=[Port("http", render.ALERTMANAGER_PORT)],
        volumes=[Volume("alertmanager-data", render.ALERTMANAGER_DATA, size="1Gi",
                        owner=image_facts.non_root_user(m.alertmanager_image))],
        health=image_facts.http_check(m.alertmanager_image, render.ALERTMANAGER_PORT),
        user=image_facts.non_root_user(m.alertmanager_image),
        read_only_root=True,
        reaches=((ntfy.split("//")[1].split(":")[0], int(ntfy.rsplit(":", 1)[1])),) if ntfy else (),
        # SMTP relays may sit anywhere.
        egress_internet=("alert emails",) if m.email is not None else (),
        allowed_clients=(render.PROMETHEUS,),
    )
    out = [prometheus, alertmanager]
    if m.grafana.enabled:
        out.append(grafana.service(cfg, view, alerts, secrets, STAND_IN))
    for target in targets:
        if target.exporter:
            out.append(exporter_service(cfg, target, secrets))
    return out


def exporter_service(cfg: StackConfig, target: MetricsTarget, secrets: Mapping[str, pulumi.Input[str]]) -> Service:
    kind = target.exporter
    image = getattr(cfg.monitoring, render.EXPORTER_IMAGES[kind])
    port = render.exporter_port(cfg, kind)
    args: tuple[str, ...] = ()
    env: dict[str, pulumi.Input[str]] = {}
    files: list[File] = []
    if kind == "nginx":
        args = (f"-nginx.scrape-uri=http://{target.service}:{target.port}{target.path}",)
    elif kind == "postgres":
        env = {"DATA_SOURCE_URI": f"{target.service}:{target.port}/{DATABASE}?sslmode=disable",
               "DATA_SOURCE_USER": DATABASE, "DATA_SOURCE_PASS_FILE": render.POSTGRES_PASSWORD_FILE}
        files = [File(render.POSTGRES_PASSWORD_FILE, secrets.get(DATABASE_PASSWORD, STAND_IN), secret=True, mode=0o400)]
    elif kind == "redis":
        address = f"redis://{target.service}:{target.port}"
        # redis_exporter's password file maps each address it scrapes to that server's password.
        passwords = derive(secrets.get(REDIS_PASSWORD, STAND_IN), lambda pw: json.dumps({address: pw}))
        args = (f"--redis.addr={address}", f"--redis.password-file={render.REDIS_PASSWORD_FILE}")
        files = [File(render.REDIS_PASSWORD_FILE, passwords, secret=True, mode=0o400)]
    return Service(
        name=target.exporter_service,
        component=COMPONENT,
        image=image,
        args=args,
        env=env,
        files=files,
        # Its one port is its metrics port (a target admits scrapers there; see MetricsTarget).
        health=image_facts.http_check(image, port, "/metrics"),
        user=image_facts.non_root_user(image),
        read_only_root=True,
        reaches=((target.service, target.port),),
        metrics_port=port,
    )
