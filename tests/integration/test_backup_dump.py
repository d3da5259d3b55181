"""The backup's dump script (components/backup/render.dump_script), run by /bin/sh with the real
pg_dump against a real PostgreSQL cluster, when a table disappears while the dump runs.

Synapse's background updates create work tables (`_temp_populate_user_directory_*` and others)
and drop them when they finish. pg_dump lists the tables, then locks each: a table dropped in
between fails the whole dump ("relation ... does not exist"). The test makes that race
deterministic: a session holds an exclusive lock on such a table, the dump starts and waits for
it, and the session drops the table and commits.

Not skipped anywhere: a missing PostgreSQL fails (cluster.require_binaries).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.backup import render
from components.synapse import homeserver as hs
from stack import parse

from .cluster import PG_BIN
from .postgres_server import SUPERUSER_PASSWORD, Postgres, running

# The Kubernetes form: the script dumps once and exits (the Docker form loops on requests).
RAW = {"server_name": "localhost", "backup": {"enabled": True},
       "target": {"kind": "kubernetes", "cert_manager_issuer": "le"}}
WORK_TABLE = "_temp_populate_user_directory_rooms"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with running("backup-dump-") as pg:
        yield pg


def _relocated(text: str, root: Path) -> str:
    """Every container path of the script (all under /backup/) moved under root."""
    assert render.SCRATCH.startswith("/backup/") and render.SECRETS.startswith("/backup/")
    return text.replace("/backup/", f"{root}/backup/")


def _script(pg: Postgres, raw: dict[str, Any], root: Path, password: str) -> tuple[Path, Path]:
    """The script rendered for `raw` with its container paths under `root`, the password file it
    copies (with `password`), and where it writes Synapse's dump."""
    database = render.Database(hs.DATABASE_NAME, "127.0.0.1", pg.port, hs.DATABASE_USER, sslmode="disable")
    text = _relocated(render.dump_script(parse(raw, ()), [database]), root)
    pgpass = Path(f"{root}{render.PGPASS_FILE}")
    pgpass.parent.mkdir(parents=True, exist_ok=True)
    pgpass.write_text(f"127.0.0.1:{pg.port}:{hs.DATABASE_NAME}:{hs.DATABASE_USER}:{password}\n")
    Path(f"{root}{render.SCRATCH}").mkdir(parents=True, exist_ok=True)
    script = root / "dump.sh"
    script.write_text(text)
    return script, Path(f"{root}{database.dump_path}")


def _pg_dump_waits(pg: Postgres) -> bool:
    waiting = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                      "AND wait_event_type = 'Lock'")
    return waiting.stdout.strip() not in ("", "0")


def _holds_the_lock(pg: Postgres) -> bool:
    held = pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                   f"WHERE c.relname = '{WORK_TABLE}' AND l.mode = 'AccessExclusiveLock' AND l.granted",
                   database=hs.DATABASE_NAME)
    return held.stdout.strip() == "1"


def test_a_table_dropped_while_the_dump_runs_does_not_fail_the_backup(postgres: Postgres) -> None:
    postgres.psql(f"CREATE TABLE {WORK_TABLE} (room_id text)", database=hs.DATABASE_NAME)
    script, dump = _script(postgres, RAW, postgres.base / "backup", SUPERUSER_PASSWORD)
    env = {**os.environ, "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
    # The background update's session: holds the table until it drops it.
    holder = subprocess.Popen(
        [str(PG_BIN / "psql"), "-qAt", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(postgres.port),
         "-U", hs.DATABASE_USER, "-d", hs.DATABASE_NAME],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**env, "PGPASSWORD": SUPERUSER_PASSWORD})
    assert holder.stdin is not None
    holder.stdin.write(f"BEGIN;\nLOCK TABLE {WORK_TABLE} IN ACCESS EXCLUSIVE MODE;\n")
    holder.stdin.flush()
    # The dump starts only once the session holds the lock: psql connects and locks on its own
    # time, and a dump that got there first would never meet the race.
    deadline = time.monotonic() + 30
    while not _holds_the_lock(postgres):
        assert holder.poll() is None, holder.communicate()[0]
        assert time.monotonic() < deadline, "the session never took the work table's lock"
        time.sleep(0.1)
    run = subprocess.Popen(["/bin/sh", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env)
    deadline = time.monotonic() + 30
    while not _pg_dump_waits(postgres):
        assert run.poll() is None, f"the dump ended before it reached the locked table:\n{run.communicate()[0]}"
        assert time.monotonic() < deadline, "pg_dump never waited for the work table's lock"
        time.sleep(0.1)
    holder.communicate(f"DROP TABLE {WORK_TABLE};\nCOMMIT;\n", timeout=30)
    output = run.communicate(timeout=120)[0]
    assert f'relation "public.{WORK_TABLE}" does not exist' in output, output  # the race happened
    assert run.returncode == 0, output
    listed = subprocess.run([str(PG_BIN / "pg_restore"), "-l", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE public users" in listed.stdout and WORK_TABLE not in listed.stdout


def test_the_docker_form_answers_failed_when_the_database_refuses(postgres: Postgres) -> None:
    """On Docker the script waits for requests and answers .done or .failed; a dump that cannot
    be taken (here: a wrong password, on every attempt) must answer .failed, or the backup would
    snapshot the previous dump as if it were fresh."""
    root = postgres.base / "docker"
    script, _dump = _script(postgres, {**RAW, "target": {"kind": "docker"}}, root, "not-the-password")
    scratch = Path(f"{root}{render.SCRATCH}")
    (scratch / ".request").touch()
    run = subprocess.Popen(["/bin/sh", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PATH": f"{PG_BIN}:{os.environ['PATH']}"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((scratch / ".done").exists() or (scratch / ".failed").exists()):
            assert run.poll() is None and time.monotonic() < deadline, "the dump service never answered"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, 15)
        output = run.communicate(timeout=30)[0]
    assert (scratch / ".failed").exists() and not (scratch / ".done").exists(), output
    assert output.count("password authentication failed") == render.DUMP_ATTEMPTS, output
