"""MAS's database in the bundled PostgreSQL, on a real PostgreSQL cluster that already exists
(the image's init scripts would not run there): the setup SQL the bundled PostgreSQL's setup service runs,
executed by the real psql the way its loop runs it, creates the role and the database, is
idempotent, follows a rotated password, and grants Synapse-database read access only in
migration mode.

Not skipped anywhere: a missing PostgreSQL fails (cluster.require_binaries).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from components.mas import render
from components.synapse import homeserver as hs

from .postgres_server import Postgres, running

RAW: dict[str, Any] = {"server_name": "localhost", "mas": {"enabled": True}}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running("mas-database-") as pg:
        yield pg


def test_setup_creates_mas_database_on_an_existing_cluster(postgres: Postgres) -> None:
    assert postgres.psql("SELECT 1", user=render.DATABASE_USER, password="first",
                         database=render.DATABASE_NAME).returncode != 0
    done = postgres.setup(RAW, "first")
    assert done.returncode == 0, done.stderr
    owner = postgres.psql(f"SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate FROM pg_database "
                          f"WHERE datname = '{render.DATABASE_NAME}'")
    assert owner.stdout.strip() == f"{render.DATABASE_USER}|UTF8|C"
    # MAS's own role logs in to its database with its password and may create its schema there.
    login = postgres.psql("CREATE TABLE probe (id int); DROP TABLE probe; SELECT current_user",
                          user=render.DATABASE_USER, password="first", database=render.DATABASE_NAME)
    assert login.returncode == 0 and login.stdout.strip() == render.DATABASE_USER, login.stderr


def test_setup_is_idempotent_and_follows_a_rotated_password(postgres: Postgres) -> None:
    for _ in range(2):
        again = postgres.setup(RAW, "second")
        assert again.returncode == 0, again.stderr
    assert postgres.psql("SELECT 1", user=render.DATABASE_USER, password="first",
                         database=render.DATABASE_NAME).returncode != 0
    assert postgres.psql("SELECT 1", user=render.DATABASE_USER, password="second",
                         database=render.DATABASE_NAME).returncode == 0


def test_only_migration_mode_lets_mas_read_synapses_database(postgres: Postgres) -> None:
    def read() -> subprocess.CompletedProcess[str]:
        return postgres.psql("SELECT name FROM users", user=render.DATABASE_USER, password="third",
                             database=hs.DATABASE_NAME)

    assert postgres.setup(RAW, "third").returncode == 0
    assert read().returncode != 0
    migrating = {**RAW, "mas": {"enabled": True, "syn2mas": True, "import_synapse_passwords": True}}
    assert postgres.setup(migrating, "third").returncode == 0
    assert read().stdout.strip() == "@alice:localhost"
    # ... and nothing more than read.
    assert postgres.psql("DELETE FROM users", user=render.DATABASE_USER, password="third",
                         database=hs.DATABASE_NAME).returncode != 0
    assert postgres.setup(RAW, "third").returncode == 0
    assert read().returncode != 0
