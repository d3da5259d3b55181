"""MAS's database in the bundled PostgreSQL, on a real PostgreSQL cluster that already exists
(the image's init scripts would not run there): the setup SQL the bundled PostgreSQL's setup service runs,
executed by the real psql the way its loop runs it, creates the role and the database, is
idempotent, follows a rotated password, and grants Synapse-database read access only in
migration mode.

Not skipped anywhere: a missing PostgreSQL fails (cluster.require_binaries).
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import postgres as bundled_postgres
from components.mas import render
from components.postgres import render as postgres_render
from components.synapse import homeserver as hs
from stack import parse
from tests.conftest import stack_view

from .cluster import PG_BIN, require_binaries

SUPERUSER_PASSWORD = "superuser-stand-in"
RAW: dict[str, Any] = {"server_name": "localhost", "mas": {"enabled": True}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A PostgreSQL cluster as the bundled one is after its first start: the superuser is
    Synapse's role (POSTGRES_USER), which owns the synapse database (UTF8, C collation)."""

    def __init__(self, base: Path):
        require_binaries()
        self.base = base
        self.port = _free_port()
        self.data = base / "data"
        self.sock = base / "sock"
        for d in (self.data, self.sock):
            d.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(d, "postgres", "postgres")
        pwfile = base / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        os.chmod(pwfile, 0o644)
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", hs.DATABASE_USER,
                                     f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                                     "--encoding=UTF8", "--locale=C"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen(_as_postgres([str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                                   "-k", str(self.sock), "-c", "listen_addresses=127.0.0.1"]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("PostgreSQL did not start")
            time.sleep(0.2)
        self.psql(f"CREATE DATABASE {hs.DATABASE_NAME} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        self.psql("CREATE TABLE users (name text)", database=hs.DATABASE_NAME)
        self.psql("INSERT INTO users VALUES ('@alice:localhost')", database=hs.DATABASE_NAME)

    def psql(self, sql: str, *, user: str = hs.DATABASE_USER, password: str = SUPERUSER_PASSWORD,
             database: str = "postgres") -> subprocess.CompletedProcess[str]:
        """Over TCP with a password, as every service of the stack connects."""
        return subprocess.run([str(PG_BIN / "psql"), "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", user, "-d", database, "-c", sql],
                              env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)

    def setup(self, raw: dict[str, Any], mas_password: str) -> subprocess.CompletedProcess[str]:
        """One pass of the bundled PostgreSQL's setup service's loop: its rendered SQL, password
        file and password files, run by psql with the service's own arguments and environment
        (host, port and paths rewritten for loopback)."""
        cfg = parse(copy.deepcopy(raw), ())
        claims = [claim for claim in stack_view(cfg).databases if claim.bundled]
        owner = next(claim for claim in claims if claim.owner)
        passwords = {claim.password_secret: SUPERUSER_PASSWORD if claim.owner else mas_password for claim in claims}
        setup = next(s for s in bundled_postgres.services(cfg, claims, passwords)
                     if s.name == bundled_postgres.SETUP_SERVICE)
        server = f"{bundled_postgres.SERVICE}:{bundled_postgres.PORT}:"

        def relocated(path: str) -> str:
            return str(self.base / path.lstrip("/"))

        for f in setup.files:
            text = str(f.content)
            for other in setup.files:
                text = text.replace(other.path, relocated(other.path))
            target = Path(relocated(f.path))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text.replace(server, f"127.0.0.1:{self.port}:"))
            os.chmod(target, 0o600 if f.secret else 0o644)  # the service's private copy (components/pgpass.py)
        script = postgres_render.setup_script(bundled_postgres.SERVICE, bundled_postgres.PORT, owner)
        psql = script.split("while true; do ", 1)[1].split(" || ", 1)[0].split()
        assert psql[:2] == ["psql", "-q"] and postgres_render.SETUP_SQL in psql
        args = [relocated(a) if a == postgres_render.SETUP_SQL else a for a in psql]
        args[args.index("-h") + 1] = "127.0.0.1"
        args[args.index("-p") + 1] = str(self.port)
        args[0] = str(PG_BIN / "psql")
        assert set(setup.env) == {"PGPASSFILE"}
        return subprocess.run(args, env={**os.environ, "PGPASSFILE": relocated(postgres_render.SETUP_PGPASS)},
                              capture_output=True, text=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    base = Path(tempfile.mkdtemp(prefix="mas-database-"))
    os.chmod(base, 0o755)
    pg = Postgres(base)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


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
