"""The Synapse cluster as target-neutral services: Redis, main and every worker (the bundled
PostgreSQL is components/postgres, the routing proxy components/edge). Derived from the typed config and the worker table; secrets come in as values
(Pulumi Outputs in a deployment, stand-ins in tests) and only ever land in secret files or env.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components import image_facts
from components.network import host_network
from components.part import DatabaseServer, EdgeRoutes, MetricsTarget, derive
from components.platform.spec import File, Gate, HealthCheck, ImageBuild, Port, Resources, Service, Volume, Wait
from config import images
from config.model import BundledDatabase, StackConfig

from . import homeserver as hs
from . import routing
from .upgrade import worker_wait_probe
from .workers import Process

COMPONENT = "synapse"
# The user the image's start.py steps down to; we start Synapse as that user directly.
SYNAPSE_USER = images.facts_for(images.SYNAPSE).user or "991:991"
MAIN_START_PERIOD_S = 3600
WORKER_START_PERIOD_S = 300
ROLE_LABEL = "matrix-stack.synapse-role"
METRICS_PATH = "/_synapse/metrics"
# Every process's series carry one job: alerts and panels select the cluster by it, a role by `role`.
METRICS_JOB = "synapse"
# What the main process's start waits for when the database is the operator's own.
EXTERNAL_DATABASE = "synapse-postgres"
SHARED_GROUP = "synapse-shared"
REDIS_CONF = "/conf/redis.conf"
REDIS_ACL = "/secrets/users.acl"
# PostgreSQL's password reaches Synapse inside its database config file (homeserver.DATABASE_CONFIG).
IN_DATABASE_CONFIG = ("postgres",)


def secret_names(cfg: StackConfig) -> tuple[str, ...]:
    """The secrets the cluster generates (see homeserver.SECRET_FILES); replication and Redis
    exist only with workers."""
    names = ("signing_key", "macaroon", "form", "registration", "postgres")
    return names + (("replication", "redis") if hs.topology(cfg).workers else ())


@dataclass
class Inputs:
    """What other parts hand the Synapse cluster."""

    homeserver: dict[str, Any] = field(default_factory=dict)  # extra shared keys (Element Call, TURN)
    # secret files other parts provide to every Synapse process (path -> value)
    secret_files: dict[str, pulumi.Input[str]] = field(default_factory=dict)


def addresses(cfg: StackConfig) -> dict[str, str]:
    """Synapse's processes and Redis share one private network: dial by name."""
    names = [p.name for p in hs.topology(cfg).processes] + [hs.REDIS_SERVICE]
    return {name: name for name in names}


def shared_files(cfg: StackConfig, inputs: Inputs, server: DatabaseServer | None) -> list[File]:
    from config import pem

    shared = hs.shared_config(cfg, addresses(cfg), inputs.homeserver, server=server)
    files = [
        File(hs.SHARED_CONFIG, hs.dump(shared), group=SHARED_GROUP),
        File(hs.LOG_CONFIG, hs.dump(hs.log_config()), group=SHARED_GROUP),
    ]
    for i, path in enumerate(cfg.synapse.federation.trusted_ca_files or []):
        files.append(File(hs.federation_ca_path(i), pem.read_text(path), group=SHARED_GROUP))
    if cfg.synapse.media.s3:
        files.append(File(hs.S3_CONFIG, hs.s3_config(cfg), group=SHARED_GROUP))
    return files


def synapse_image(cfg: StackConfig) -> tuple[str, ImageBuild | None]:
    """The image every Synapse process runs, and how it is built: the configured one, or with
    media in a bucket the image derived from it with the storage provider (every process loads
    the provider's module when it reads homeserver.yaml, not only the media holders)."""
    if not cfg.synapse.media.s3:
        return cfg.synapse.image, None
    build = ImageBuild(images.SYNAPSE_S3_RECIPE, (("SYNAPSE_IMAGE", cfg.synapse.image),
                                                  ("S3_STORAGE_PROVIDER_VERSION", images.S3_STORAGE_PROVIDER_VERSION)))
    return images.synapse_s3(cfg.synapse.image, cfg.synapse.media.image_registry), build


def secret_files(cfg: StackConfig, secrets: Mapping[str, pulumi.Input[str]], inputs: Inputs,
                 server: DatabaseServer | None) -> list[File]:
    files = [
        File(hs.secret_path(name), secrets[name], secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets")
        for name in secret_names(cfg)
        if name not in IN_DATABASE_CONFIG
    ]
    files.append(File(hs.DATABASE_CONFIG, derive(secrets["postgres"], lambda pw: hs.database_config(cfg, server, pw)),
                      secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets"))
    if cfg.synapse.smtp is not None:
        email = hs.email_config(cfg, password_placeholder="@@SMTP_PASSWORD@@")
        text = hs.dump(email or {})
        content = derive(secrets["smtp"], lambda pw: text.replace("@@SMTP_PASSWORD@@", pw.replace("'", "''"))) \
            if "smtp" in secrets else text
        files.append(File(hs.EMAIL_CONFIG, content, secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets"))
    if cfg.synapse.media.s3 and "s3_credentials" in secrets:
        files.append(File(hs.S3_CREDENTIALS, secrets["s3_credentials"], secret=True, mode=0o400,
                          group=f"{SHARED_GROUP}-secrets"))
    if cfg.synapse.ldap and cfg.synapse.ldap.bind_dn and "ldap_bind" in secrets:
        files.append(File(hs.secret_path("ldap_bind"), secrets["ldap_bind"], secret=True, mode=0o400,
                          group=f"{SHARED_GROUP}-secrets"))
    for path, value in sorted(inputs.secret_files.items()):
        files.append(File(path, value, secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets"))
    return files


def _postgres_wait(cfg: StackConfig, server: DatabaseServer | None) -> Wait:
    """A login as Synapse's own database user, with the arguments Synapse connects with (its
    database config file, password included): the server (through its pooler, when one runs) is
    up, past recovery, and the database exists."""
    probe = (f"import psycopg2, yaml; a = yaml.safe_load(open({hs.DATABASE_CONFIG!r}))['database']['args']; "
             "psycopg2.connect(host=a['host'], port=a['port'], user=a['user'], dbname=a['database'], "
             "password=a['password'], sslmode=a.get('sslmode', 'prefer'), connect_timeout=3).close()")
    # Named after the bundled server's service, which an external server stands in for.
    return Wait(server.address(pooled=True)[0] if server is not None else EXTERNAL_DATABASE, ("python", "-c", probe))


def synapse_waits(cfg: StackConfig, process: Process, server: DatabaseServer | None) -> tuple[Wait, ...]:
    """Main starts once PostgreSQL (and Redis, with workers) answer; workers start once main
    answers at their release, i.e. has prepared the schema for it (a worker exits on an
    uninitialised or not yet migrated database)."""
    topo = hs.topology(cfg)
    if process.is_main:
        waits = [_postgres_wait(cfg, server)]
        if topo.workers:
            probe = f"import socket; socket.create_connection(({hs.REDIS_SERVICE!r}, {hs.REDIS_PORT}), 3).close()"
            waits.append(Wait(hs.REDIS_SERVICE, ("python", "-c", probe)))
        return tuple(waits)
    main = topo.processes[0]
    # Main at this worker's own release: after a new image, once main has migrated the schema.
    return (Wait(main.name, ("python", "-c", worker_wait_probe(main.name, main.port))),)


MEDIA_VOLUME = "synapse-media"


def egress(cfg: StackConfig, process: Process, whitelist: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(why it dials the internet, the private networks off the cluster it dials): the worker
    table's reasons, with the private ranges Synapse's ip_range_whitelist opens to its outbound
    requests (a private federation, ntfy on a private address), and an external database."""
    reasons = process.egress_internet
    networks = tuple(whitelist) if reasons else ()
    db = cfg.synapse.database
    if not isinstance(db, BundledDatabase):
        networks += host_network(db.host)
        if not host_network(db.host):
            # A name: resolved at run time; only a public address is reachable (the internet).
            reasons += ("external PostgreSQL",)
    return reasons, tuple(dict.fromkeys(networks))


def synapse_process(cfg: StackConfig, process: Process, common: list[File],
                    secrets: Mapping[str, pulumi.Input[str]], server: DatabaseServer | None,
                    whitelist: list[str] | None = None, gate: Gate | None = None) -> Service:
    files = list(common)
    # A process's own file joins the shared group too: each path is its process's alone, so the
    # group stays one object (one ConfigMap on Kubernetes, not one per process) while every pod
    # mounts, and its checksum covers, only the files it reads.
    if not process.is_main:
        files.append(File(hs.worker_config_path(process), hs.dump(hs.worker_config(process, metrics=cfg.synapse.metrics)),
                          group=SHARED_GROUP))
    elif (own := hs.main_config(cfg)) is not None:
        files.append(File(hs.MAIN_CONFIG, hs.dump(own), group=SHARED_GROUP))
    media = cfg.synapse.media
    volumes = [Volume(MEDIA_VOLUME, hs.MEDIA_STORE, size=media.cache.size if media.s3 else cfg.synapse.media_size,
                      owner=SYNAPSE_USER, cache=media.s3)] \
        if hs.uses_media_store(cfg, process) else []
    image, build = synapse_image(cfg)
    role = process.role
    ports = [Port("http", process.port)]
    if process.is_main and hs.topology(cfg).workers:
        ports.append(Port("replication", process.replication_port))
    command = hs.command(cfg, process)
    dials_out, networks = egress(cfg, process, whitelist or [])
    return Service(
        name=process.name,
        component=COMPONENT,
        image=image,
        build=build,
        entrypoint=command[:3],
        args=command[3:],
        env=dict(hs.s3_environment()) if media.s3 else {},
        files=files,
        ports=ports,
        volumes=volumes,
        # Main applies schema migrations before it listens: an upgrade may take many minutes, and
        # a probe that gives up earlier would restart the migration in a loop.
        health=image_facts.http_check(image, process.port,
                                      start_period_s=MAIN_START_PERIOD_S if process.is_main else WORKER_START_PERIOD_S),
        user=SYNAPSE_USER,
        read_only_root=True,
        writable_paths=("/tmp",),
        resources=Resources(cpu_request="250m" if process.is_main else "100m",
                            memory_request="512Mi" if process.is_main else "256Mi",
                            memory_limit="4Gi" if process.is_main else "2Gi"),
        init_args=("python", "-m", "synapse.config", *command[3:]),
        waits=synapse_waits(cfg, process, server),
        scalable=bool(role and not role.single),
        # Two mains at once would both migrate the schema; two instances of a single-writer role
        # would both write its stream.
        exclusive=not (role and not role.single),
        start_before_stop=bool(role and role.interchangeable),
        metrics_port=process.metrics_port if cfg.synapse.metrics else None,
        metrics_path=METRICS_PATH,
        metrics_labels=(("job", METRICS_JOB), ("role", role.name if role else "main")),
        # A role's processes are monitored, guarded from disruption and admitted together.
        role_label=ROLE_LABEL,
        labels={ROLE_LABEL: role.name if role else "main"},
        egress_internet=dials_out,
        egress_networks=networks,
        # Main alone migrates the schema: its gate runs before it starts another release.
        gates=(gate,) if gate is not None and process.is_main else (),
    )


def redis_config() -> str:
    # Persistence off: Redis only carries replication traffic between Synapse processes.
    return "\n".join([
        "port 6379",
        "bind 0.0.0.0",
        "protected-mode no",
        'save ""',
        "appendonly no",
        f"aclfile {REDIS_ACL}",
        "",
    ])


# Redis speaks no Prometheus: its exporter reads it (MetricsTarget.exporter).
REDIS_METRICS = MetricsTarget(hs.REDIS_SERVICE, hs.REDIS_PORT, "", role="redis", job="redis", exporter="redis")


def redis_acl(password: pulumi.Input[str]) -> pulumi.Input[str]:
    return derive(password, lambda pw: f"user default on >{pw} ~* &* +@all\n")


def redis_service(cfg: StackConfig, secrets: Mapping[str, pulumi.Input[str]], clients: tuple[str, ...]) -> Service:
    return Service(
        name=hs.REDIS_SERVICE,
        component=COMPONENT,
        image=cfg.synapse.redis.image,
        args=("valkey-server", REDIS_CONF),
        files=[File(REDIS_CONF, redis_config()), File(REDIS_ACL, redis_acl(secrets["redis"]), secret=True, mode=0o400)],
        ports=[Port("redis", hs.REDIS_PORT)],
        health=HealthCheck(("sh", "-c", "valkey-cli --no-auth-warning -a \"$(sed -n 's/.*>\\([^ ]*\\).*/\\1/p' "
                            f"{REDIS_ACL})\" ping | grep -q PONG")),
        # Run directly as the image's redis user (the entrypoint would step down to it).
        user=image_facts.user(cfg.synapse.redis.image),
        read_only_root=True,
        # The image's entrypoint refuses an unwritable WORKDIR (its facts); nothing is saved there.
        writable_paths=tuple(p for p in (images.facts_for(cfg.synapse.redis.image).writable_workdir,) if p),
        allowed_clients=clients,
        data_store=True,
    )




def routes(cfg: StackConfig) -> EdgeRoutes:
    """Synapse's routes on the proxy; the proxy starts once main is healthy."""
    topo = hs.topology(cfg)
    main = topo.processes[0]
    waits = (Wait(main.name, ("wget", "-qO-", f"http://{main.name}:{main.port}/health")),)
    return routing.edge_routes(cfg, topo, addresses(cfg), waits)


@dataclass(frozen=True)
class CacheCleaning:
    """A target whose media cache outlives the processes (Docker) runs the cache cleaner; it
    reports each success to `report_url` (a Pushgateway's), dialling `reaches`."""

    report_url: str | None = None
    reaches: tuple[tuple[str, int], ...] = ()


def media_cache_cleaner(cfg: StackConfig, holder: Service, cleaning: CacheCleaning) -> Service:
    """The service that keeps the shared media cache bounded: the image, user, media volume and
    egress of `holder` (the first process that holds the media store), with only the files
    s3_media_upload reads (the database config, the bucket's credentials and settings)."""
    reads = {hs.DATABASE_CONFIG, hs.S3_CREDENTIALS, hs.S3_CONFIG}
    return Service(
        name=hs.MEDIA_CACHE_CLEANER,
        component=COMPONENT,
        image=holder.image,
        build=holder.build,
        entrypoint=("sh", "-c", hs.media_cache_clean_loop(cfg, cleaning.report_url)),
        env=dict(holder.env),
        files=[f for f in holder.files if f.path in reads],
        volumes=list(holder.volumes),
        user=SYNAPSE_USER,
        read_only_root=True,
        writable_paths=("/tmp",),  # s3_media_upload's list of media (cache.db)
        resources=Resources(cpu_request="50m", memory_request="128Mi", memory_limit="512Mi"),
        egress_internet=holder.egress_internet,
        egress_networks=holder.egress_networks,
        reaches=cleaning.reaches,
    )


def cluster_services(
    cfg: StackConfig,
    secrets: Mapping[str, pulumi.Input[str]],
    inputs: Inputs,
    server: DatabaseServer | None,
    gate: Gate | None = None,
    cleaning: CacheCleaning | None = None,
) -> list[Service]:
    """`gate`: what runs before main starts another release (upgrade.gate); `cleaning`: the
    target keeps one media cache per host, which the cache cleaner empties (media in a bucket)."""
    topo = hs.topology(cfg)
    common = shared_files(cfg, inputs, server) + secret_files(cfg, secrets, inputs, server)
    # The private networks Synapse's outbound requests may dial (homeserver.shared_config).
    whitelist = list(inputs.homeserver.get("ip_range_whitelist", []))
    whitelist += [c for c in cfg.synapse.federation.private_networks if c not in whitelist]
    processes = [synapse_process(cfg, p, common, secrets, server, whitelist, gate) for p in topo.processes]
    clients = tuple(p.name for p in topo.processes)
    if cfg.monitoring.enabled:
        # Its exporter (the cluster's metrics target for Redis) logs in too.
        clients += (REDIS_METRICS.exporter_service,)
    services: list[Service] = []
    if topo.workers:
        services.append(redis_service(cfg, secrets, clients))
    services += processes
    if cleaning is not None and cfg.synapse.media.s3:
        holder = next(s for s, p in zip(processes, topo.processes, strict=True) if hs.uses_media_store(cfg, p))
        services.append(media_cache_cleaner(cfg, holder, cleaning))
    return services
