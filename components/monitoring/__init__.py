"""Monitoring: Prometheus scrapes every metrics endpoint the parts declare (view.metrics_targets),
with an exporter in front of those that speak no Prometheus (nginx's stub_status, PostgreSQL,
Redis); node exporter reads a Docker host's filesystems, the blackbox exporter probes every public
HTTPS hostname's certificate and the services users dial directly (view.probes), and a Pushgateway
keeps what scheduled jobs report (view.scheduled_jobs); its alert rules come from the same
declarations (alerts.py); Alertmanager delivers to
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
from components.platform.targets import target_of
from components.view import PUSHGATEWAY_ROLE, StackView
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
        own = [MetricsTarget(render.PROMETHEUS, render.PROMETHEUS_PORT, role="prometheus", job="prometheus"),
               MetricsTarget(render.ALERTMANAGER, render.ALERTMANAGER_PORT, role="alertmanager", job="alertmanager"),
               MetricsTarget(render.BLACKBOX_EXPORTER, render.BLACKBOX_PORT, role="blackbox", job="blackbox"),
               MetricsTarget(render.PUSHGATEWAY, render.PUSHGATEWAY_PORT, role=PUSHGATEWAY_ROLE, job="pushgateway")]
        target = target_of(cfg)
        if not target.reports_volume_usage:
            # One per machine: each host's volumes live on its own filesystems.
            own += [MetricsTarget(name, render.NODE_EXPORTER_PORT, role="node", job=alert_table.NODE_JOB)
                    for name in target.per_machine(render.NODE_EXPORTER)]
        return own

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


def certificate_hostnames(view: StackView) -> list[str]:
    """Every public HTTPS hostname: those the stack's certificates cover."""
    return render.certificate_hostnames([h for c in view.certificates for h in c.hostnames])


def kubelet_namespace(cfg: StackConfig, view: StackView) -> str | None:
    """The namespace whose claims the kubelet reports on, where the target reports volume usage."""
    return getattr(cfg.target, "namespace", None) if view.target.reports_volume_usage else None


def stack_alerts(cfg: StackConfig, view: StackView) -> list[alert_table.Alert]:
    return alert_table.stack_alerts(view.metrics_targets, view.probes, view.scheduled_jobs,
                                    bool(certificate_hostnames(view)), kubelet_namespace(cfg, view))


def services(cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
    m = cfg.monitoring
    targets = view.metrics_targets
    alerts = stack_alerts(cfg, view)
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
        alert_rules=tuple(render.rules(alerts)["groups"]),
        probe_jobs=tuple(render.probe_groups(view.probes, certificate_hostnames(view))),
        files=[File(render.PROMETHEUS_CONFIG, render.prometheus_yml(cfg, targets, address, probes=view.probes,
                                                                    hostnames=certificate_hostnames(view))),
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
    out = [prometheus, alertmanager, blackbox_service(cfg, view), pushgateway_service(cfg)]
    out += [node_exporter_service(cfg, t.service) for t in targets if t.role == "node"]
    if m.grafana.enabled:
        out.append(grafana.service(cfg, view, alerts, secrets, STAND_IN))
    for target in targets:
        if target.exporter:
            out.append(exporter_service(cfg, target, secrets))
    return out


def node_exporter_service(cfg: StackConfig, name: str = render.NODE_EXPORTER) -> Service:
    """Node exporter on a Docker host (`name`: the one of that host, Target.per_machine): the
    host's root read-only at HOST_ROOT (its filesystems' free space, Docker's volume directory
    among them), the filesystem collector alone (it reads nothing else of the host)."""
    image = cfg.monitoring.node_exporter_image
    return Service(
        name=name,
        component=COMPONENT,
        image=image,
        args=(f"--path.rootfs={render.HOST_ROOT}", "--collector.disable-defaults", "--collector.filesystem",
              f"--web.listen-address=:{render.NODE_EXPORTER_PORT}"),
        host_paths=(("/", render.HOST_ROOT),),
        health=image_facts.http_check(image, render.NODE_EXPORTER_PORT),
        user=image_facts.non_root_user(image),
        read_only_root=True,
        metrics_port=render.NODE_EXPORTER_PORT,
        metrics_labels=(("job", alert_table.NODE_JOB), ("role", "node")),
    )


def blackbox_service(cfg: StackConfig, view: StackView) -> Service:
    """The blackbox exporter: Prometheus names the target of each probe (prometheus.yml)."""
    image = cfg.monitoring.blackbox_exporter_image
    return Service(
        name=render.BLACKBOX_EXPORTER,
        component=COMPONENT,
        image=image,
        args=(f"--config.file={render.BLACKBOX_CONFIG}", f"--web.listen-address=:{render.BLACKBOX_PORT}"),
        files=[File(render.BLACKBOX_CONFIG, render.blackbox_yml())],
        health=image_facts.http_check(image, render.BLACKBOX_PORT),
        user=image_facts.non_root_user(image),
        read_only_root=True,
        reaches=tuple(dict.fromkeys((p.service, p.port) for p in view.probes)),
        # The public hostnames, as clients reach them.
        egress_internet=("certificate probes of the public hostnames",) if certificate_hostnames(view) else (),
        metrics_port=render.BLACKBOX_PORT,
        metrics_labels=(("job", "blackbox"), ("role", "blackbox")),
    )


def pushgateway_service(cfg: StackConfig) -> Service:
    """The Pushgateway: scheduled jobs push their last success here; its file keeps them across
    restarts, so a restart does not look like a missing backup."""
    image = cfg.monitoring.pushgateway_image
    user = image_facts.non_root_user(image)
    return Service(
        name=render.PUSHGATEWAY,
        component=COMPONENT,
        image=image,
        args=(f"--persistence.file={render.PUSHGATEWAY_FILE}", f"--web.listen-address=:{render.PUSHGATEWAY_PORT}"),
        volumes=[Volume("pushgateway-data", render.PUSHGATEWAY_DATA, size="1Gi", owner=user)],
        metrics_honor_labels=True,
        health=image_facts.http_check(image, render.PUSHGATEWAY_PORT),
        user=user,
        read_only_root=True,
        metrics_port=render.PUSHGATEWAY_PORT,
        metrics_labels=(("job", "pushgateway"), ("role", PUSHGATEWAY_ROLE)),
    )


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
        metrics_labels=(("job", target.job_name), ("role", target.role), ("instance", target.service)),
    )
