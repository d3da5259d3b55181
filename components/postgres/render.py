"""The bundled PostgreSQL's setup step and its limits, from the parts' database claims. Pure."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from components import pgpass
from components.part import DatabaseClaim

SETUP_SQL = "/conf/databases.sql"
SECRETS_DIR = "/secrets"
# The superuser's password, read by the image's entrypoint when it creates the cluster
# (POSTGRES_PASSWORD_FILE, config/images.py).
SUPERUSER_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-password"
# The setup service's logins: the owner's (its own) and each claimant's (its health check).
SETUP_PGPASS = f"{SECRETS_DIR}/pgpass"
SETUP_INTERVAL_S = 60
# Room for the operator's own sessions (psql, pg_dump) beside every claimant's pool.
ADMIN_CONNECTIONS = 20


# The server connections the pooler opens for a pooled claim at most, whatever its clients pool:
# in transaction pooling a server connection is held only for a transaction, and a fixed figure
# keeps pgbouncer.ini (whose change restarts the pooler) unchanged when a worker is added.
POOLED_SERVER_CONNECTIONS = 50


def server_connections(claim: DatabaseClaim, pooled: bool) -> int:
    """The connections a claim holds on the server: its clients' pools, or, through the pooler,
    POOLED_SERVER_CONNECTIONS (the pooler's pool_size and max_db_connections)."""
    return POOLED_SERVER_CONNECTIONS if pooled else claim.pool


def max_connections(claims: Sequence[DatabaseClaim], pooled: Sequence[DatabaseClaim] = ()) -> int:
    """Every claimant's server connections plus room for admin tools, rounded up to a hundred so
    that adding a worker rarely changes it (a change restarts PostgreSQL). `pooled`: the claims
    whose clients dial the pooler."""
    needed = sum(server_connections(claim, claim in pooled) for claim in claims) + ADMIN_CONNECTIONS
    return max(100, -(-needed // 100) * 100)


def password_file(claim: DatabaseClaim) -> str:
    """The file holding a claimant's password in the setup service, which sets its role's."""
    return f"{SECRETS_DIR}/{claim.user}-password"


def setup_sql(guests: Sequence[DatabaseClaim]) -> str:
    """Idempotent SQL (psql) that keeps each claimant's role, password and database. The image's
    init scripts run only when the cluster is first created, so a stack that adds a claimant
    later needs this on an existing cluster; it runs at every start and then every minute (a
    restored or recreated cluster gets it back)."""
    lines = [r"\set ON_ERROR_STOP on"]
    for claim in guests:
        variable = f"{claim.user}_password"
        lines += [
            # psql reads the file through the shell (a backquoted \set), never from the environment.
            f"\\set {variable} `cat {password_file(claim)}`",
            f"SELECT format('CREATE ROLE %I LOGIN', '{claim.user}') "
            f"WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{claim.user}') \\gexec",
            f"ALTER ROLE {claim.user} WITH LOGIN PASSWORD :'{variable}';",
            # UTF8 with C collation, as Synapse's database requires.
            f"SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L LC_COLLATE %L LC_CTYPE %L TEMPLATE template0', "
            f"'{claim.database}', '{claim.user}', 'UTF8', 'C', 'C') "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{claim.database}') \\gexec",
            # Read access to every database only while the claimant needs it (PostgreSQL 14+).
            f"{'GRANT' if claim.reads_all_data else 'REVOKE'} pg_read_all_data "
            f"{'TO' if claim.reads_all_data else 'FROM'} {claim.user};",
        ]
    lines.append("")
    return "\n".join(lines)


def setup_logins(host: str, port: int, owner: DatabaseClaim,
                 guests: Sequence[DatabaseClaim]) -> list[tuple[str, str, str, str]]:
    """The setup service's password file's logins: the owner's to any database, each claimant's
    to its own (the health check's)."""
    return [(host, str(port), "*", owner.user), *((host, str(port), c.database, c.user) for c in guests)]


def setup_script(host: str, port: int, owner: DatabaseClaim) -> str:
    """The setup service's loop: psql as the server's owner, retried until PostgreSQL answers,
    then again every minute. libpq takes the password from its private copy of the password
    file (PGPASSFILE, components/pgpass.py)."""
    psql = shlex.join(["psql", "-q", "-h", host, "-p", str(port), "-U", owner.user, "-d", "postgres", "-f", SETUP_SQL])
    return (f"{pgpass.private_copy(SETUP_PGPASS)} && "
            f"while true; do {psql} || echo 'database setup failed; retrying'; sleep {SETUP_INTERVAL_S}; done")


def ready_command(host: str, port: int, guests: Sequence[DatabaseClaim]) -> tuple[str, ...]:
    """Healthy once every claimant's own role logs in to its database."""
    checks = []
    for claim in guests:
        checks.append(f"pg_isready -q -h {host} -p {port} -U {claim.user} -d {claim.database} && "
                      f"psql -qAt -h {host} -p {port} -U {claim.user} -d {claim.database} "
                      "-c 'SELECT 1' >/dev/null")
    return ("sh", "-c", " && ".join(checks))
