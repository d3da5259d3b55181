"""The Synapse cluster: main, every worker role from the worker table, Redis and the secrets they
share; its routes on the routing proxy, its database claim, media store and key file. The other
parts' contributions are its inputs."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping

import pulumi

from components.part import (
    CLUSTER,
    BuildContext,
    Component,
    Contribution,
    DatabaseClaim,
    EdgeRoutes,
    Endpoint,
    ExternalServer,
    Homeserver,
    KeptFile,
    MediaStore,
    MetricsTarget,
    Part,
    ScheduledJob,
    Writer,
    merge_homeserver,
)
from components.platform.contract import Target
from components.platform.spec import Service
from components.platform.targets import target_of
from components.view import StackView
from config.model import ExternalDatabase, StackConfig

from . import homeserver, upgrade
from .services import (
    MEDIA_VOLUME,
    METRICS_JOB,
    METRICS_PATH,
    REDIS_METRICS,
    SYNAPSE_USER,
    CacheCleaning,
    Inputs,
    cluster_services,
    routes,
    secret_names,
)


class SynapseCluster(Part):
    name = "synapse"
    stage = CLUSTER
    reads = ("synapse", "server_name", "hostnames", "target", "media_s3_access_key_id", "media_s3_secret_access_key")

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        # The proxy answers both itself: the client and federation APIs, and the well-known files.
        return [Endpoint("server"), Endpoint("matrix")]

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        return secret_names(cfg) + (("smtp",) if cfg.smtp_password is not None else ()) + \
            (("ldap_bind",) if cfg.ldap_bind_password is not None else ()) + \
            (("s3_credentials",) if _media_credentials(cfg) is not None else ())

    def edge_routes(self, cfg: StackConfig) -> list[EdgeRoutes]:
        return [routes(cfg)]

    def database_claims(self, cfg: StackConfig) -> list[DatabaseClaim]:
        db = cfg.synapse.database
        processes = tuple(p.name for p in homeserver.topology(cfg).processes)
        # Pools stay small per process: they multiply by the process count.
        pool = db.cp_max * len(processes)
        if cleans_media_cache(cfg):
            processes += (homeserver.MEDIA_CACHE_CLEANER,)
            pool += 1  # s3_media_upload's one connection
        if isinstance(db, ExternalDatabase):
            return [DatabaseClaim(db.name, db.user, processes, pool, "postgres",
                                  external=ExternalServer(db.host, db.port, db.sslmode))]
        # The bundled server's owner: its image creates Synapse's role and database.
        # psycopg2 keeps nothing in a session between transactions: its processes may be pooled.
        return [DatabaseClaim(homeserver.DATABASE_NAME, homeserver.DATABASE_USER, processes, pool, "postgres",
                              owner=True, pooled=True)]

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        topology = homeserver.topology(cfg)
        targets = [MetricsTarget(p.name, p.metrics_port, METRICS_PATH, p.role.name if p.role else "main",
                                 job=METRICS_JOB)
                   for p in topology.processes] if cfg.synapse.metrics else []
        if topology.workers:
            targets.append(REDIS_METRICS)
        return targets

    def kept_files(self, cfg: StackConfig) -> list[KeptFile]:
        # A new signing key breaks the server's federation identity.
        return [KeptFile("signing_key", homeserver.secret_path("signing_key"))]

    def media_store(self, cfg: StackConfig) -> MediaStore | None:
        if cfg.synapse.media.s3:
            return None  # the bucket holds the media; the processes keep only caches
        topology = homeserver.topology(cfg)
        holders = tuple(p.name for p in topology.processes if homeserver.uses_media_store(cfg, p))
        return MediaStore(MEDIA_VOLUME, homeserver.MEDIA_STORE, SYNAPSE_USER, holders)

    def writers(self, cfg: StackConfig) -> list[Writer]:
        return [Writer(p.name, homeserver.keeps_media(cfg, p)) for p in homeserver.topology(cfg).processes]

    def homeserver(self, cfg: StackConfig) -> Homeserver | None:
        topology = homeserver.topology(cfg)
        main = topology.processes[0]
        return Homeserver(tuple(p.name for p in topology.processes), f"http://{main.name}:{main.port}/",
                          homeserver.tool_config(cfg))

    def scheduled_jobs(self, cfg: StackConfig) -> list[ScheduledJob]:
        if not cleans_media_cache(cfg):
            return []
        return [ScheduledJob(homeserver.MEDIA_CACHE_CLEAN_JOB, "", "media cache clean-up",
                             every_minutes=cfg.synapse.media.cache.clean_every_minutes)]

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return cluster_services(cfg, secrets, Inputs(), view.database_server, upgrade.gate(cfg, view),
                                cache_cleaning(cfg, view))

    def together(self, cfg: StackConfig, view: StackView, services: list[Service]) -> list[list[str]]:
        # One private network: the processes dial each other and Redis by name.
        return [[s.name for s in services]]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        from components import secrets as gen

        component = Component("SynapseCluster", self.name)
        values: dict[str, pulumi.Input[str]] = {}
        for secret in secret_names(cfg):
            if secret == "signing_key" and cfg.signing_key is not None:
                # A server's identity brought back from a backup (README, "Backups").
                values[secret] = pulumi.Output.secret(cfg.signing_key.get_secret_value().strip() + "\n")
            elif secret == "signing_key":
                values[secret] = gen.ed25519_signing_key(f"{self.name}-signing-key", component, protect=cfg.protect)
            elif secret == "postgres" and cfg.database_password is not None:
                values[secret] = pulumi.Output.secret(cfg.database_password.get_secret_value())
            else:
                values[secret] = gen.password(f"{self.name}-{secret}", component, protect=cfg.protect)
        if cfg.smtp_password is not None:
            values["smtp"] = pulumi.Output.secret(cfg.smtp_password.get_secret_value())
        if cfg.ldap_bind_password is not None:
            values["ldap_bind"] = pulumi.Output.secret(cfg.ldap_bind_password.get_secret_value())
        if (credentials := _media_credentials(cfg)) is not None:
            values["s3_credentials"] = pulumi.Output.secret(homeserver.s3_credentials(*credentials))
        topology = homeserver.topology(cfg)
        component.register_outputs({"processes": [p.name for p in topology.processes]})
        outputs: dict[str, object] = {
            "server_name": cfg.server_name,
            "homeserver_url": cfg.url("matrix"),
            "synapse_processes": [p.name for p in topology.processes],
        }
        if cfg.synapse.media.s3:
            outputs.update(media_commands(cfg, ctx.view.target))
        if not cfg.mas.owns_logins:
            # Synapse has no shared-secret registration while MAS owns accounts: MAS's part
            # outputs the command that makes the admin.
            outputs["create_admin_command"] = create_admin_command(cfg, ctx.view.target)
        return Contribution(
            parent=component,
            # Redis's password: its exporter logs in with it (REDIS_METRICS).
            shared_secrets={name: values[name] for name in ("postgres", "signing_key", "redis") if name in values},
            services=cluster_services(cfg, values, inputs(ctx.built), ctx.view.database_server,
                                      upgrade.gate(cfg, ctx.view), cache_cleaning(cfg, ctx.view)),
            outputs=outputs,
        )


def cleans_media_cache(cfg: StackConfig) -> bool:
    """Media in a bucket on a target whose cache volume outlives the processes (Docker): the
    cache cleaner runs."""
    return cfg.synapse.media.s3 and target_of(cfg).shares_caches


def cache_cleaning(cfg: StackConfig, view: StackView) -> CacheCleaning | None:
    """The cache cleaner's report target: the view's metrics push target, when monitoring runs one."""
    if not cleans_media_cache(cfg):
        return None
    push = view.metrics_push_target
    if push is None:
        return CacheCleaning()
    host, port, _crosses = view.target.reach(homeserver.MEDIA_CACHE_CLEANER, push.service, push.port)
    return CacheCleaning(f"http://{host}:{port}/metrics/job/{homeserver.MEDIA_CACHE_CLEAN_JOB}",
                         ((push.service, push.port),))


def _media_credentials(cfg: StackConfig) -> tuple[str, str] | None:
    """The media bucket's (access key id, secret access key), when media lives in a bucket."""
    key_id, key = cfg.media_s3_access_key_id, cfg.media_s3_secret_access_key
    if not cfg.synapse.media.s3 or key_id is None or key is None:
        return None
    return key_id.get_secret_value(), key.get_secret_value()


def inputs(built: list[Contribution]) -> Inputs:
    """What the parts built before the cluster hand it, merged in build order."""
    collected = Inputs()
    for part in built:
        merge_homeserver(collected.homeserver, part.homeserver)
        collected.secret_files.update(part.secret_files)
    return collected


def media_commands(cfg: StackConfig, target: Target) -> dict[str, str]:
    """The operator's commands for media in a bucket, run in the first process that holds the
    media store: copy every local file to the bucket (moving a stack's media there, while it
    serves), and empty the cache of what was not accessed for synapse.media.cache.max_age."""
    holder = next(p for p in homeserver.topology(cfg).processes if homeserver.uses_media_store(cfg, p))
    script = functools.partial(homeserver.media_upload_script, cfg)
    return {
        "media_to_bucket_command": target.exec_command(
            holder.name, False, shlex.join(["sh", "-c", script(older_than="0d", delete=False)])),
        "media_cache_clean_command": target.exec_command(
            holder.name, False, shlex.join(["sh", "-c", script(older_than=cfg.synapse.media.cache.max_age,
                                                               delete=True)])),
    }


def create_admin_command(cfg: StackConfig, target: Target, user: str = "admin") -> str:
    """The command that registers the first Synapse admin, run against the main process.

    register_new_matrix_user reads registration_shared_secret_path from homeserver.yaml and talks
    to main's own listener, so it needs neither the secret nor the public URL.
    """
    main = homeserver.topology(cfg).processes[0]
    register = (f"register_new_matrix_user -c {homeserver.SHARED_CONFIG} -a -u {user} "
                f"http://localhost:{main.port}")
    # Main is a StatefulSet when it holds the media store.
    return target.admin_command(main.name, homeserver.keeps_media(cfg, main), register)
