"""PgBouncer in front of the bundled PostgreSQL: its pgbouncer.ini and its auth file. Pure.

Why a pooler: when PostgreSQL restarts, every connection Synapse pools is dead, and Synapse finds
out only by failing a transaction on it (its retry reuses the same connection), one failed
request per pooled connection. In transaction pooling, Synapse's connections end at PgBouncer,
which outlives the restart; PgBouncer drops the server connections that closed and checks each
one it hands out (server_check_delay = 0: `server_check_query` before every transaction), so a
transaction after the server is healthy meets a live connection.

Transaction pooling is safe for the claims that say so (DatabaseClaim.pooled): Synapse talks
psycopg2, which sends no prepared statements and sets the isolation level with each BEGIN (since
psycopg2 2.7, not as a session default); the session settings Synapse makes on a new connection
(synapse/storage/engines/postgres.py on_new_connection) are made by PgBouncer on every server
connection instead (`connect_query`, SESSION_SETTINGS), so no transaction runs without them.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.part import DatabaseClaim

from . import render

CONFIG = "/conf/pgbouncer/pgbouncer.ini"
AUTH_FILE = "/secrets/pgbouncer-users"
PORT = 6432
# What Synapse sets on each new connection, with its defaults (the stack sets none of them):
# bytea as escape, statements aborted after 10 minutes, idle transactions after 30 minutes.
SESSION_SETTINGS = (("bytea_output", "escape"), ("statement_timeout", "600000"),
                    ("idle_in_transaction_session_timeout", "1800000"))
# While a login to the server fails, PgBouncer fails and disconnects every client that asks for
# a server connection ("server login has been failing"), and Synapse then reuses that closed
# connection once more. So the pooler logs in again as soon as the server is back: it keeps a
# server connection open (min_pool_size), and retries a failed login at once (default 15 s),
# on each of its maintenance rounds (three a second).
SERVER_LOGIN_RETRY_S = 0
MIN_POOL_SIZE = 1


# Client connections PgBouncer accepts, in steps of this many (a change restarts the pooler).
CLIENT_CONNECTIONS_STEP = 1000


def client_connections(claims: Sequence[DatabaseClaim]) -> int:
    """Connections the pooled clients may open to PgBouncer: their pools twice over (room for a
    change that starts new processes before it stops the old ones), rounded up to a step so that
    adding a worker rarely changes it. Each costs PgBouncer a few kilobytes, no server connection."""
    needed = 2 * sum(claim.pool for claim in claims)
    return max(CLIENT_CONNECTIONS_STEP, -(-needed // CLIENT_CONNECTIONS_STEP) * CLIENT_CONNECTIONS_STEP)


def pgbouncer_ini(host: str, port: int, claims: Sequence[DatabaseClaim]) -> str:
    """One database entry per pooled claim, with as many server connections as PostgreSQL's
    max_connections counts for it (render.server_connections)."""
    connect_query = "; ".join(f"SET {name} = {value}" for name, value in SESSION_SETTINGS)
    databases = []
    for claim in claims:
        size = render.server_connections(claim, pooled=True)
        databases.append(f"{claim.database} = host={host} port={port} dbname={claim.database} "
                         f"pool_size={size} max_db_connections={size} connect_query='{connect_query}'")
    settings = [
        ("listen_addr", "*"),
        ("listen_port", str(PORT)),
        # TCP only: nothing here dials a socket file, and the root is read-only.
        ("unix_socket_dir", ""),
        ("auth_type", "scram-sha-256"),
        ("auth_file", AUTH_FILE),
        ("pool_mode", "transaction"),
        ("max_client_conn", str(client_connections(claims))),
        ("server_check_delay", "0"),
        ("server_check_query", "select 1"),
        ("server_login_retry", str(SERVER_LOGIN_RETRY_S)),
        ("min_pool_size", str(MIN_POOL_SIZE)),
    ]
    lines = ["[databases]", *databases, "", "[pgbouncer]", *(f"{key} = {value}" for key, value in settings), ""]
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def auth_file(users: Sequence[str], passwords: Sequence[str]) -> str:
    """PgBouncer's auth_file: `"user" "password"` per line, a '"' doubled. The plain password
    lets PgBouncer both check its clients (SCRAM) and log in to the server as them."""
    return "".join(f"{_quote(user)} {_quote(password)}\n" for user, password in zip(users, passwords, strict=True))
