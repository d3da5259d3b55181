"""The bundled PostgreSQL: one server for every database the parts claim (components/part.py
DatabaseClaim). It admits exactly its claimants' clients, sizes its connection limit from their
pools, and one setup service keeps every claimant's role and database, on a new or an existing
cluster. Runs when the Synapse database is bundled (synapse.database.kind)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi

from components import pgpass
from components.part import (
    AFTER_CLUSTER,
    BuildContext,
    Component,
    Contribution,
    DatabaseClaim,
    DatabaseServer,
    MetricsTarget,
    Part,
)
from components.platform.spec import File, HealthCheck, Port, Resources, Service, Volume
from components.view import StackView
from config import images
from config.model import BundledDatabase, StackConfig

from . import pooler, render

# Its name and component label from the days it was the Synapse cluster's own database: a change
# would replace its container, and a StatefulSet's selector cannot change at all.
SERVICE = "synapse-postgres"
COMPONENT = "synapse"
SETUP_SERVICE = f"{SERVICE}-setup"
POOLER_SERVICE = "synapse-pgbouncer"
PORT = 5432
DATA = "/var/lib/postgresql/data"
VOLUME = "synapse-postgres"
# What the setup step runs as: the postgres image's own user (psql needs no root).
IMAGE_USER = images.facts_for(images.POSTGRES).user
STAND_IN = "stand-in"


def _bundled(cfg: StackConfig) -> BundledDatabase | None:
    db = cfg.synapse.database
    return db if isinstance(db, BundledDatabase) else None


class BundledPostgres(Part):
    name = "postgres"
    # After the parts whose claims it keeps: it reads the passwords they generate.
    stage = AFTER_CLUSTER
    switches = ("synapse.database.kind",)
    reads = ("synapse.database", "synapse.workers", "mas.enabled", "mas.database", "mas.syn2mas")
    # Its server was the Synapse cluster's child before the database became a part of its own.
    formerly_part = "synapse"

    def enabled(self, cfg: StackConfig) -> bool:
        return _bundled(cfg) is not None

    def database_server(self, cfg: StackConfig) -> DatabaseServer | None:
        db = _bundled(cfg)
        if db is None:
            return None
        return DatabaseServer(SERVICE, PORT, db.image, (POOLER_SERVICE, pooler.PORT) if db.pooler else None)

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        # postgres_exporter reads the server's statistics views (it logs in with a claim of its own).
        return [MetricsTarget(SERVICE, PORT, "", role="postgres", job="postgres", exporter="postgres")]

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        # The passwords are the claimants' secrets, which they generate: a check sees stand-ins.
        claims = [claim for claim in view.databases if claim.bundled]
        return services(cfg, claims, {claim.password_secret: STAND_IN for claim in claims}, view.database_readers)

    def together(self, cfg: StackConfig, view: StackView, services: list[Service]) -> list[list[str]]:
        # It listens on its host's private network only: every client shares its host.
        clients = [c for claim in view.databases if claim.bundled for c in claim.clients]
        return [[SERVICE, *clients, *(s.name for s in services if s.name != SERVICE)]]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        shared: dict[str, pulumi.Input[str]] = {}
        for built in ctx.built:
            shared.update(built.shared_secrets)
        claims = [claim for claim in ctx.view.databases if claim.bundled]
        component = Component("BundledPostgres", self.name)
        component.register_outputs({"databases": [claim.database for claim in claims]})
        return Contribution(parent=component,
                            services=services(cfg, claims, {c.password_secret: shared[c.password_secret]
                                                            for c in claims}, ctx.view.database_readers))


def services(cfg: StackConfig, claims: Sequence[DatabaseClaim],
             passwords: Mapping[str, pulumi.Input[str]], readers: Sequence[str] = ()) -> list[Service]:
    """The server and, when a claimant besides the owner needs a role and a database, the setup
    service that keeps them. `passwords` maps each claim's password secret to its value;
    `readers` dial every database without a claim (view.database_readers: the backup's dump)."""
    db = _bundled(cfg)
    assert db is not None
    owner = next(claim for claim in claims if claim.owner)
    guests = [claim for claim in claims if not claim.owner]
    pooled = [claim for claim in claims if claim.pooled] if db.pooler else []
    # The pooled claims' clients dial the pooler alone; it dials the server for them.
    clients: list[str] = [POOLER_SERVICE] if pooled else []
    for claim in claims:
        if claim not in pooled:
            clients += [c for c in claim.clients if c not in clients]
    if guests:
        clients.append(SETUP_SERVICE)
    clients += [r for r in readers if r not in clients]
    server = Service(
        name=SERVICE,
        component=COMPONENT,
        image=db.image,
        args=("postgres", "-c", f"max_connections={render.max_connections(claims, pooled)}", "-c", "listen_addresses=*"),
        env={
            "POSTGRES_USER": owner.user,
            "POSTGRES_DB": owner.database,
            # Synapse refuses databases without C collation and UTF8 (docs/postgres.md).
            "POSTGRES_INITDB_ARGS": "--encoding=UTF8 --locale=C",
            "PGDATA": f"{DATA}/pgdata",
            # Its entrypoint reads the superuser's password from the file (file_env) when it
            # creates the cluster.
            "POSTGRES_PASSWORD_FILE": render.SUPERUSER_PASSWORD_FILE,
        },
        files=[File(render.SUPERUSER_PASSWORD_FILE, passwords[owner.password_secret], secret=True, mode=0o400)],
        ports=[Port("postgres", PORT)],
        volumes=[Volume(VOLUME, DATA, size=db.size)],
        health=HealthCheck(("pg_isready", "-U", owner.user, "-d", owner.database)),
        resources=Resources(cpu_request="250m", memory_request="512Mi", memory_limit="4Gi"),
        # Started as the image's user, its entrypoint neither chowns nor steps down (it does both
        # only as root), so it needs no capability: PGDATA is a directory it creates itself
        # inside the volume, which is its group's (Kubernetes: fsGroup; Docker: the image's own
        # directory, postgres-owned), and a cluster the root entrypoint made is postgres's already.
        # fsGroup's first walk of such a cluster adds group rwx to PGDATA, which PostgreSQL refuses;
        # the entrypoint's `chmod 00700 "$PGDATA"`, on every start before its init branch, undoes it.
        user=images.facts_for(db.image).user,
        # PostgreSQL writes only PGDATA (the volume), its socket and lock in /var/run/postgresql
        # and temporary files in /tmp (docker-library/postgres: mkdir -p /var/run/postgresql).
        read_only_root=True,
        writable_paths=("/var/run/postgresql", "/tmp"),
        allowed_clients=tuple(clients),
        data_store=True,
    )
    extra = [pooler_service(db, pooled, passwords)] if pooled else []
    if not guests:
        return [server, *extra]
    logins = render.setup_logins(SERVICE, PORT, owner, guests)
    login_passwords = [passwords[owner.password_secret], *(passwords[claim.password_secret] for claim in guests)]
    setup = Service(
        name=SETUP_SERVICE,
        component=COMPONENT,
        image=db.image,
        entrypoint=("/bin/sh",),
        args=("-c", render.setup_script(SERVICE, PORT, owner)),
        env={"PGPASSFILE": pgpass.PRIVATE_COPY},
        files=[File(render.SETUP_SQL, render.setup_sql(guests)),
               File(render.SETUP_PGPASS, pgpass.content(logins, login_passwords), secret=True, mode=0o400),
               *(File(render.password_file(claim), passwords[claim.password_secret], secret=True, mode=0o400)
                 for claim in guests)],
        health=HealthCheck(render.ready_command(SERVICE, PORT, guests), interval_s=30),
        user=IMAGE_USER,
        read_only_root=True,
        writable_paths=("/tmp",),
        resources=Resources(cpu_request="10m", memory_request="16Mi", memory_limit="64Mi"),
        # Nothing connects to it.
        allowed_clients=(),
    )
    return [server, *extra, setup]


def pooler_service(db: BundledDatabase, pooled: Sequence[DatabaseClaim],
                   passwords: Mapping[str, pulumi.Input[str]]) -> Service:
    """PgBouncer, in transaction pooling, for the pooled claims' clients (components/postgres/pooler.py)."""
    facts = images.facts_for(images.PGBOUNCER)
    users = [claim.user for claim in pooled]
    secrets = [passwords[claim.password_secret] for claim in pooled]
    if all(isinstance(p, str) for p in secrets):
        auth: pulumi.Input[str] = pooler.auth_file(users, [str(p) for p in secrets])
    else:
        auth = pulumi.Output.secret(pulumi.Output.all(*secrets).apply(lambda values: pooler.auth_file(users, values)))
    clients: list[str] = []
    for claim in pooled:
        clients += [c for c in claim.clients if c not in clients]
    first = pooled[0]
    return Service(
        name=POOLER_SERVICE,
        component=COMPONENT,
        image=images.PGBOUNCER,
        # PgBouncer itself, on the rendered file: the image's entrypoint would only write a
        # config of its own from the environment when none is there.
        entrypoint=("/usr/bin/pgbouncer",),
        args=(pooler.CONFIG,),
        files=[File(pooler.CONFIG, pooler.pgbouncer_ini(SERVICE, PORT, pooled)),
               File(pooler.AUTH_FILE, auth, secret=True, mode=0o400)],
        ports=[Port("postgres", pooler.PORT)],
        # Answers once PgBouncer listens and has logged in to the server at least once.
        health=HealthCheck(("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(pooler.PORT),
                            "-U", first.user, "-d", first.database)),
        resources=Resources(cpu_request="50m", memory_request="32Mi", memory_limit="256Mi"),
        user=facts.user,
        # It writes nothing: no log file, no pid file, no socket file (pgbouncer.ini).
        read_only_root=True,
        allowed_clients=tuple(clients),
        data_store=True,
    )
