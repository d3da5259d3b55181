"""A real PostgreSQL cluster as the bundled one is after its first start, for the tests that run
the stack's rendered SQL and scripts with the real psql and pg_dump (Debian's PostgreSQL)."""

from __future__ import annotations

import contextlib
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

from components import postgres as bundled_postgres
from components.postgres import render as postgres_render
from components.synapse import homeserver as hs
from stack import parse
from tests.conftest import stack_view

from .cluster import PG_BIN, require_binaries

SUPERUSER_PASSWORD = "superuser-stand-in"


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


@contextlib.contextmanager
def running(prefix: str) -> Iterator[Postgres]:
    """A fresh cluster in a temporary directory, stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    pg = Postgres(base)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
