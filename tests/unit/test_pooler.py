"""PgBouncer in front of the bundled PostgreSQL (components/postgres/pooler.py): its files, who
dials it, and how its pool fits the server's limit. The real PgBouncer reads the rendered files in
tests/integration/test_synapse_boot.py."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from components import postgres
from components.postgres import pooler
from components.postgres import render as postgres_render
from components.synapse import homeserver as hs
from config import images
from config.load import ConfigError
from stack import parse
from tests.conftest import max_connections, stack_view

WORKERS = {"server_name": "localhost", "synapse": {"workers": {"preset": "seed-000"}}}


def _services(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse(raw)
    view = stack_view(cfg)
    claims = [claim for claim in view.databases if claim.bundled]
    passwords = {claim.password_secret: f"<{claim.password_secret}>" for claim in claims}
    return {s.name: s for s in postgres.services(cfg, claims, passwords)}


def _ini(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        elif " = " in line:
            key, _, value = line.partition(" = ")
            current[key] = value
    return sections


def test_synapse_dials_the_pooler_in_transaction_pooling_with_checked_server_connections() -> None:
    services = _services(WORKERS)
    bouncer = services[postgres.POOLER_SERVICE]
    files = {f.path: f for f in bouncer.files}
    ini = _ini(str(files[pooler.CONFIG].content))
    settings = ini["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    # Every server connection is checked before a client gets it: a dead one is dropped.
    assert (settings["server_check_delay"], settings["server_check_query"]) == ("0", "select 1")
    assert settings["auth_file"] == pooler.AUTH_FILE and settings["auth_type"] == "scram-sha-256"
    entry = ini["databases"][hs.DATABASE_NAME]
    assert f"host={postgres.SERVICE} port={postgres.PORT} dbname={hs.DATABASE_NAME}" in entry
    # What Synapse sets on a new connection, PgBouncer sets on every server connection.
    assert "SET bytea_output = escape" in entry and "SET statement_timeout = 600000" in entry
    # The password only in the secret auth file.
    assert files[pooler.AUTH_FILE].secret and files[pooler.AUTH_FILE].mode == 0o400
    assert files[pooler.AUTH_FILE].content == f'"{hs.DATABASE_USER}" "<postgres>"\n'
    assert "<postgres>" not in str(files[pooler.CONFIG].content) and not bouncer.env and not bouncer.secret_env
    # Synapse's processes reach PostgreSQL only through it.
    server = services[postgres.SERVICE]
    assert postgres.POOLER_SERVICE in (server.allowed_clients or ())
    assert "synapse-main" in (bouncer.allowed_clients or ()) and "synapse-main" not in (server.allowed_clients or ())
    # Hardened: the image's non-root user, a read-only root, no capability, a memory limit.
    assert bouncer.user == images.facts_for(images.PGBOUNCER).user == "70:70"
    assert bouncer.read_only_root and bouncer.drop_capabilities and not bouncer.capabilities_add
    assert bouncer.resources.memory_limit and bouncer.data_store
    assert bouncer.health is not None and bouncer.health.command[0] == "pg_isready"


def test_the_pooled_server_connections_fit_max_connections_and_ignore_the_worker_count() -> None:
    cfg = parse(WORKERS)
    bigger = parse({**WORKERS, "synapse": {"workers": {"preset": "seed-000", "counts": {"generic": 12}}}})
    inis = []
    for c in (cfg, bigger):
        claims = [claim for claim in stack_view(c).databases if claim.bundled]
        ini = _ini(pooler.pgbouncer_ini(postgres.SERVICE, postgres.PORT, [x for x in claims if x.pooled]))
        size = postgres_render.POOLED_SERVER_CONNECTIONS
        assert f"pool_size={size} max_db_connections={size}" in ini["databases"][hs.DATABASE_NAME]
        others = sum(x.pool for x in claims if not x.pooled)
        assert max_connections(c) >= size + others + postgres_render.ADMIN_CONNECTIONS
        # Room for every client's pool twice (new processes start before old ones stop).
        assert int(ini["pgbouncer"]["max_client_conn"]) >= 2 * sum(x.pool for x in claims if x.pooled)
        inis.append(ini)
    # Adding workers does not restart the pooler.
    assert inis[0] == inis[1]


def test_the_auth_file_doubles_quotes() -> None:
    assert pooler.auth_file(["synapse"], ['pa"ss']) == '"synapse" "pa""ss"\n'


def test_without_the_pooler_synapse_dials_postgres_and_tools_always_do() -> None:
    off = parse({**WORKERS, "synapse": {**WORKERS["synapse"], "database": {"pooler": False}}})
    assert postgres.POOLER_SERVICE not in _services({**WORKERS, "synapse": {**WORKERS["synapse"],
                                                                           "database": {"pooler": False}}})
    server = stack_view(off).database_server
    args = yaml.safe_load(hs.database_config(off, server, "pw"))["database"]["args"]
    assert (args["host"], args["port"]) == (postgres.SERVICE, postgres.PORT)
    on = parse(WORKERS)
    server = stack_view(on).database_server
    args = yaml.safe_load(hs.database_config(on, server, "pw"))["database"]["args"]
    assert (args["host"], args["port"]) == (postgres.POOLER_SERVICE, pooler.PORT)
    # syn2mas (sqlx prepares statements) reads Synapse's database from the server itself.
    tool = hs.tool_config(on)(server)["database"]["args"]
    assert (tool["host"], tool["port"]) == (postgres.SERVICE, postgres.PORT)


@pytest.mark.parametrize("value", ["maybe", 3])
def test_a_bad_pooler_value_is_refused_with_its_field(value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({**WORKERS, "synapse": {**WORKERS["synapse"], "database": {"pooler": value}}})
    assert any("synapse.database" in str(p) and "pooler" in str(p) for p in caught.value.problems), \
        caught.value.problems


def test_an_external_database_has_no_pooler_setting() -> None:
    raw = {**WORKERS, "synapse": {**WORKERS["synapse"],
                                  "database": {"kind": "external", "host": "db.example.org", "pooler": True}}}
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert any("pooler" in str(p) for p in caught.value.problems), caught.value.problems
