"""The Synapse cluster as target-neutral services: PostgreSQL, Redis, main, every worker, and the
routing proxy. Derived from the typed config and the worker table; secrets come in as values
(Pulumi Outputs in a deployment, stand-ins in tests) and only ever land in secret files or env.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components import image_facts
from components.part import derive
from components.platform.spec import Edge, File, HealthCheck, Port, Resources, Service, Site, Volume, Wait
from components.tls import PROXY_RUN, proxy_run_script
from components.tls.plan import proxy_terminates_tls
from config import images
from config.model import BundledDatabase, StackConfig

from . import homeserver as hs
from . import routing
from .workers import Process

COMPONENT = "synapse"
# The user the image's start.py steps down to; we start Synapse as that user directly.
SYNAPSE_USER = images.facts_for(images.SYNAPSE).user or "991:991"
MAIN_START_PERIOD_S = 3600
WORKER_START_PERIOD_S = 300
PROXY_SERVICE = "synapse-proxy"
ROLE_LABEL = "matrix-stack.synapse-role"
METRICS_PATH = "/_synapse/metrics"
SHARED_GROUP = "synapse-shared"
# Every Synapse process reads the same secret env (the database password): stored once.
ENV_GROUP = f"{SHARED_GROUP}-env"
POSTGRES_DATA = "/var/lib/postgresql/data"
REDIS_CONF = "/conf/redis.conf"
REDIS_ACL = "/secrets/users.acl"
# PostgreSQL's password reaches libpq as PGPASSWORD; every other generated secret is a file.
SECRET_ENV_ONLY = ("postgres",)


def secret_names(cfg: StackConfig) -> tuple[str, ...]:
    """The secrets the cluster generates (see homeserver.SECRET_FILES); replication and Redis
    exist only with workers."""
    names = ("signing_key", "macaroon", "form", "registration", "postgres")
    return names + (("replication", "redis") if hs.topology(cfg).workers else ())


@dataclass
class Inputs:
    """What other components hand the Synapse cluster."""

    homeserver: dict[str, Any] = field(default_factory=dict)  # extra shared keys (Element Call, TURN)
    well_known_client: dict[str, object] = field(default_factory=dict)
    # secret files other components provide to every Synapse process (path -> value)
    secret_files: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    # The proxy's certificates (components/tls): files, shared ACME volumes, and whether nginx
    # must reload when ACME renews a certificate.
    proxy_files: list[File] = field(default_factory=list)
    proxy_volumes: list[Volume] = field(default_factory=list)
    proxy_watches_acme: bool = False


def addresses(cfg: StackConfig) -> dict[str, str]:
    """Synapse processes, PostgreSQL and Redis share one private network: dial by name."""
    names = [p.name for p in hs.topology(cfg).processes] + [hs.POSTGRES_SERVICE, hs.REDIS_SERVICE]
    db = cfg.synapse.database
    address = {name: name for name in names}
    if not isinstance(db, BundledDatabase):
        address[hs.POSTGRES_SERVICE] = db.host
    return address


def shared_files(cfg: StackConfig, inputs: Inputs) -> list[File]:
    from config import pem

    shared = hs.shared_config(cfg, addresses(cfg), inputs.homeserver)
    files = [
        File(hs.SHARED_CONFIG, hs.dump(shared), group=SHARED_GROUP),
        File(hs.LOG_CONFIG, hs.dump(hs.log_config()), group=SHARED_GROUP),
    ]
    for i, path in enumerate(cfg.synapse.federation.trusted_ca_files or []):
        files.append(File(hs.federation_ca_path(i), pem.read_text(path), group=SHARED_GROUP))
    return files


def secret_files(cfg: StackConfig, secrets: Mapping[str, pulumi.Input[str]], inputs: Inputs) -> list[File]:
    files = [
        File(hs.secret_path(name), secrets[name], secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets")
        for name in secret_names(cfg)
        if name not in SECRET_ENV_ONLY
    ]
    if cfg.synapse.smtp is not None:
        email = hs.email_config(cfg, password_placeholder="@@SMTP_PASSWORD@@")
        text = hs.dump(email or {})
        content = derive(secrets["smtp"], lambda pw: text.replace("@@SMTP_PASSWORD@@", pw.replace("'", "''"))) \
            if "smtp" in secrets else text
        files.append(File(hs.EMAIL_CONFIG, content, secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets"))
    if cfg.synapse.ldap and cfg.synapse.ldap.bind_dn and "ldap_bind" in secrets:
        files.append(File(hs.secret_path("ldap_bind"), secrets["ldap_bind"], secret=True, mode=0o400,
                          group=f"{SHARED_GROUP}-secrets"))
    for path, value in sorted(inputs.secret_files.items()):
        files.append(File(path, value, secret=True, mode=0o400, group=f"{SHARED_GROUP}-secrets"))
    return files


def _postgres_wait(cfg: StackConfig) -> Wait:
    """A login as Synapse's own database user (libpq reads PGPASSWORD): the server is up, past
    recovery, and the database exists."""
    db = cfg.synapse.database
    host, port, user, name = (hs.POSTGRES_SERVICE, hs.POSTGRES_PORT, hs.DATABASE_USER, hs.DATABASE_NAME) \
        if isinstance(db, BundledDatabase) else (db.host, db.port, db.user, db.name)
    probe = (f"import psycopg2; psycopg2.connect(host={host!r}, port={port}, user={user!r}, dbname={name!r}, "
             "connect_timeout=3).close()")
    return Wait(hs.POSTGRES_SERVICE, ("python", "-c", probe))


def synapse_waits(cfg: StackConfig, process: Process) -> tuple[Wait, ...]:
    """Main starts once PostgreSQL (and Redis, with workers) answer; workers start once main is
    healthy, i.e. has prepared the schema (a worker exits on an uninitialised database)."""
    topo = hs.topology(cfg)
    if process.is_main:
        waits = [_postgres_wait(cfg)]
        if topo.workers:
            probe = f"import socket; socket.create_connection(({hs.REDIS_SERVICE!r}, {hs.REDIS_PORT}), 3).close()"
            waits.append(Wait(hs.REDIS_SERVICE, ("python", "-c", probe)))
        return tuple(waits)
    main = topo.processes[0]
    return (Wait(main.name, ("curl", "-fsS", f"http://{main.name}:{main.port}/health")),)


def synapse_process(cfg: StackConfig, process: Process, common: list[File],
                    secrets: Mapping[str, pulumi.Input[str]]) -> Service:
    files = list(common)
    # A process's own file joins the shared group too: each path is its process's alone, so the
    # group stays one object (one ConfigMap on Kubernetes, not one per process) while every pod
    # mounts, and its checksum covers, only the files it reads.
    if not process.is_main:
        files.append(File(hs.worker_config_path(process), hs.dump(hs.worker_config(process, metrics=cfg.synapse.metrics)),
                          group=SHARED_GROUP))
    elif (own := hs.main_config(cfg)) is not None:
        files.append(File(hs.MAIN_CONFIG, hs.dump(own), group=SHARED_GROUP))
    volumes = [Volume("synapse-media", hs.MEDIA_STORE, size=cfg.synapse.media_size, owner=SYNAPSE_USER)] \
        if hs.uses_media_store(cfg, process) else []
    role = process.role
    ports = [Port("http", process.port)]
    if process.is_main and hs.topology(cfg).workers:
        ports.append(Port("replication", process.replication_port))
    command = hs.command(cfg, process)
    return Service(
        name=process.name,
        component=COMPONENT,
        image=cfg.synapse.image,
        entrypoint=command[:3],
        args=command[3:],
        secret_env={"PGPASSWORD": secrets["postgres"]},
        secret_env_group=ENV_GROUP,
        files=files,
        ports=ports,
        volumes=volumes,
        # Main applies schema migrations before it listens: an upgrade may take many minutes, and
        # a probe that gives up earlier would restart the migration in a loop.
        health=image_facts.http_check(cfg.synapse.image, process.port,
                                      start_period_s=MAIN_START_PERIOD_S if process.is_main else WORKER_START_PERIOD_S),
        user=SYNAPSE_USER,
        read_only_root=True,
        writable_paths=("/tmp",),
        resources=Resources(cpu_request="250m" if process.is_main else "100m",
                            memory_request="512Mi" if process.is_main else "256Mi",
                            memory_limit="4Gi" if process.is_main else "2Gi"),
        init_args=("python", "-m", "synapse.config", *command[3:]),
        waits=synapse_waits(cfg, process),
        scalable=bool(role and not role.single),
        metrics_port=process.metrics_port if cfg.synapse.metrics else None,
        metrics_path=METRICS_PATH,
        # A role's processes are monitored, guarded from disruption and admitted together.
        role_label=ROLE_LABEL,
        labels={ROLE_LABEL: role.name if role else "main"},
    )


def postgres_service(cfg: StackConfig, secrets: Mapping[str, pulumi.Input[str]], clients: tuple[str, ...]) -> Service:
    db = cfg.synapse.database
    assert isinstance(db, BundledDatabase)
    return Service(
        name=hs.POSTGRES_SERVICE,
        component=COMPONENT,
        image=db.image,
        args=("postgres", "-c", f"max_connections={hs.max_connections(cfg)}", "-c", "listen_addresses=*"),
        env={
            "POSTGRES_USER": hs.DATABASE_USER,
            "POSTGRES_DB": hs.DATABASE_NAME,
            # Synapse refuses databases without C collation and UTF8 (docs/postgres.md).
            "POSTGRES_INITDB_ARGS": "--encoding=UTF8 --locale=C",
            "PGDATA": f"{POSTGRES_DATA}/pgdata",
        },
        secret_env={"POSTGRES_PASSWORD": secrets["postgres"]},
        ports=[Port("postgres", hs.POSTGRES_PORT)],
        volumes=[Volume("synapse-postgres", POSTGRES_DATA, size=db.size)],
        health=HealthCheck(("pg_isready", "-U", hs.DATABASE_USER, "-d", hs.DATABASE_NAME)),
        resources=Resources(cpu_request="250m", memory_request="512Mi", memory_limit="4Gi"),
        # The entrypoint chowns PGDATA and steps down to the postgres user itself.
        drop_capabilities=not images.facts_for(db.image).steps_down,
        allowed_clients=clients,
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
    )




def sites(cfg: StackConfig) -> list[Site]:
    """The parts' virtual hosts the proxy forwards (components/catalog.endpoints)."""
    from components.catalog import endpoints

    return [site for _host, endpoint in endpoints(cfg) if (site := endpoint.site(cfg)) is not None]


def proxy_service(cfg: StackConfig, inputs: Inputs) -> Service:
    from components.platform.targets import target_of

    target = target_of(cfg)
    topo = hs.topology(cfg)
    served = sites(cfg)
    # A site on another Docker host is dialled at that host's address (a published port).
    site_addresses = {}
    for site in served:
        host, _port, crosses = target.reach(PROXY_SERVICE, site.upstream_service, site.upstream_port)
        if crosses:
            site_addresses[site.upstream_service] = host
    address = {**addresses(cfg), **site_addresses}
    conf = routing.render_nginx(cfg, topo, address, sites=served,
                                well_known_client_extra=inputs.well_known_client)
    ports = [Port("http", routing.PROXY_HTTP_PORT, public=True, host_port=target.proxy_host_port("http"))]
    if proxy_terminates_tls(cfg):
        ports.append(Port("https", routing.PROXY_HTTPS_PORT, public=True, host_port=target.proxy_host_port("https")))
    ports.append(Port("status", routing.PROXY_STATUS_PORT))
    # nginx resolves upstream names once: its run script waits for them, reloads nginx when an
    # address changes (Docker restarting a container) and, with ACME, when a certificate renews.
    # The names nginx dials: its upstream pools and the sites (not processes without routes).
    pools = routing.plan(topo, address).upstreams.values()
    upstream_hosts = tuple(sorted({server.rsplit(":", 1)[0] for pool in pools for server in pool.servers}
                                  | {address.get(site.upstream_service, site.upstream_service)
                                     for site in served}))
    main = topo.processes[0]
    status = f"http://127.0.0.1:{routing.PROXY_STATUS_PORT}/health"
    run_script = File(PROXY_RUN, proxy_run_script(routing.NGINX_CONF, inputs.proxy_watches_acme, upstream_hosts,
                                                  health_url=status), mode=0o555)
    return Service(
        name=PROXY_SERVICE,
        component=COMPONENT,
        image=images.NGINX,
        entrypoint=("/bin/sh",),
        args=(PROXY_RUN,),
        files=[File(routing.NGINX_CONF, conf), run_script, *inputs.proxy_files],
        volumes=list(inputs.proxy_volumes),
        ports=ports,
        # Healthy only while nginx holds every upstream's current address (Kubernetes probes the
        # status path: its Services keep their addresses).
        health=dataclasses.replace(image_facts.http_check(images.NGINX, routing.PROXY_STATUS_PORT, "/health"),
                                   command=("/bin/sh", PROXY_RUN, "health")),
        user=image_facts.user(images.NGINX),
        read_only_root=True,
        writable_paths=("/tmp",),
        waits=(Wait(main.name, ("wget", "-qO-", f"http://{main.name}:{main.port}/health")),),
        restarts_with=tuple(sorted(_routed(address, served))),
        reaches=tuple((site.upstream_service, site.upstream_port) for site in served),
        edge=Edge(_edge_hostnames(cfg, served), tls=cfg.tls_mode != "none"),
        scalable=True,
        replicas=1,
    )


def _edge_hostnames(cfg: StackConfig, served: list[Site]) -> tuple[str, ...]:
    """The proxy's hostnames in its server blocks' order: the Matrix host, the server name when
    delegated, then the sites by name."""
    names = [cfg.host("matrix")]
    if cfg.server_name not in names:
        names.append(cfg.server_name)
    return tuple(names + [s.hostname for s in sorted(served, key=lambda s: s.hostname) if s.hostname not in names])


def _routed(address: dict[str, str], served: list[Site]) -> set[str]:
    """The services the proxy sends requests to."""
    return {*address, *(site.upstream_service for site in served)} - {hs.POSTGRES_SERVICE, hs.REDIS_SERVICE}


def database_guests(cfg: StackConfig) -> tuple[str, ...]:
    """Other parts' services that connect to the bundled PostgreSQL: they may connect too
    (NetworkPolicy on Kubernetes)."""
    from components.catalog import bundled_database_clients

    return bundled_database_clients(cfg)


def cluster_services(
    cfg: StackConfig,
    secrets: Mapping[str, pulumi.Input[str]],
    inputs: Inputs,
) -> list[Service]:
    topo = hs.topology(cfg)
    common = shared_files(cfg, inputs) + secret_files(cfg, secrets, inputs)
    processes = [synapse_process(cfg, p, common, secrets) for p in topo.processes]
    clients = tuple(p.name for p in topo.processes)
    services: list[Service] = []
    if isinstance(cfg.synapse.database, BundledDatabase):
        services.append(postgres_service(cfg, secrets, clients + database_guests(cfg)))
    if topo.workers:
        services.append(redis_service(cfg, secrets, clients))
    services += processes
    services.append(proxy_service(cfg, inputs))
    return services
