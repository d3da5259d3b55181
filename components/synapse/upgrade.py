"""Upgrading Synapse: what runs before main starts another release on an existing database.

Synapse's upgrade notes (docs/upgrade.md, docs/workers.md) order an upgrade: main first, which
applies the schema migrations as it starts, then the workers at the same release (a worker
refuses a schema main has not migrated yet). Synapse records in its database the oldest schema
version a release must know to read it (`schema_compat_version`, from SCHEMA_COMPAT_VERSION); a
release whose SCHEMA_VERSION is below it refuses to start on it.

So before main is replaced with a new image, the gate (spec.Gate, run where `pulumi` runs, in the
target's operator verbs):
  1. reads the database's schema version and compatibility version;
  2. refuses, with the reason, a release that cannot read that schema (the old main keeps
     running: the update stops before it is touched);
  3. dumps the database (pg_dump -Fc) to a file beside the operator and prints its name;
  4. with backups on, takes a backup snapshot now and prints its id.
Workers wait for main to answer at their own release (worker_wait), on both targets.
"""

from __future__ import annotations

import shlex

from components.platform.contract import Handover, OneShot
from components.platform.spec import Gate
from components.view import StackView
from config import images
from config.model import StackConfig

GATE = "synapse-upgrade-gate"
UNCHANGED = "Synapse's image is unchanged: no schema check or database dump"
# What the operator sees when a release cannot read the database (the test matches it).
REFUSAL = "refusing to start"
# A release's own SCHEMA_VERSION, asked of the image when the image table does not know its tag.
# Its schema module alone is run (not the synapse package, whose imports need the release's own
# dependencies): it holds plain constants in every release.
SCHEMA_PROBE = ("import importlib.util as u, os.path as p, runpy; "
                "d = u.find_spec('synapse').submodule_search_locations[0]; "
                "print(runpy.run_path(p.join(d, 'storage', 'schema', '__init__.py'))['SCHEMA_VERSION'])")
SCHEMA_RUN = "synapse-schema-version"
READ_ATTEMPTS = 30


def release_label(image: str) -> str:
    """The image's tag (or the start of its digest), for a file name."""
    name, _, digest = image.partition("@")
    if digest:
        return digest.replace("sha256:", "")[:12]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _psql_words(view: StackView) -> tuple[str, list[str]]:
    """(where it runs, the psql/pg_dump connection arguments) for Synapse's database: inside the
    bundled server's service, or where `pulumi` runs for an external server (libpq then reads the
    operator's own ~/.pgpass or PGPASSFILE)."""
    assert view.homeserver is not None
    claim = next(c for c in view.databases if set(view.homeserver.processes) <= set(c.clients))
    if claim.external is not None:
        ext = claim.external
        return "", ["-h", ext.host, "-p", str(ext.port), "-U", claim.user, "-d", claim.database]
    assert view.database_server is not None
    return view.database_server.service, ["-U", claim.user, "-d", claim.database]


def _in_database(view: StackView, words: list[str]) -> str:
    service, _ = _psql_words(view)
    command = shlex.join(words)
    return view.target.exec_command(service, True, command) if service else command


def _query(view: StackView, sql: str) -> str:
    _, conn = _psql_words(view)
    return _in_database(view, ["psql", *conn, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])


def _image_schema(cfg: StackConfig, view: StackView) -> str:
    """The SCHEMA_VERSION of the image main is about to run: the image table's for the pinned tag,
    else the image's own answer (run once, before anything is replaced)."""
    image = cfg.synapse.image
    known = images.image_schema_version(image)
    if known is not None:
        return f"{known}  # config/images.py: {image}"
    handover = Handover(name=SCHEMA_RUN, purpose="schema check", secret_env=(), secrets_text="No secret")
    run = OneShot(name=SCHEMA_RUN, container="synapse", image=image, args=("python", "-c", SCHEMA_PROBE),
                  handover=handover, command=True, replaces_entrypoint=True)
    return f"$({view.target.run_once(run)})"


def gate_script(cfg: StackConfig, view: StackView) -> str:
    image = cfg.synapse.image
    dump = _in_database(view, ["pg_dump", *_psql_words(view)[1], "-Fc"])
    lines = [
        "set -eu",
        f"# Before main starts {image} on Synapse's database (components/synapse/upgrade.py).",
        "fail() { echo \"synapse upgrade: $*\" >&2; exit 1; }",
        # A first deployment's server may still be creating the database: a minute's grace.
        "tries=0",
        "until tables=$(" + _query(view, "SELECT to_regclass('schema_version') IS NOT NULL, "
                                         "to_regclass('schema_compat_version') IS NOT NULL") + "); do",
        "  tries=$((tries + 1))",
        f"  [ \"$tries\" -lt {READ_ATTEMPTS} ] || fail \"cannot read Synapse's database, so cannot tell whether "
        f"{image} can read it\"",
        "  sleep 2",
        "done",
        'case "$tables" in',
        f"  f\\|*) echo \"Synapse's database has no schema yet: nothing to check or dump before {image}.\"; exit 0;;",
        "esac",
        "version=$(" + _query(view, "SELECT version FROM schema_version") + ")",
        "compat=0",
        'case "$tables" in',
        "  *\\|t) compat=$(" + _query(view, "SELECT coalesce(max(compat_version), 0) FROM schema_compat_version") + ");;",
        "esac",
        f"image_schema={_image_schema(cfg, view)}",
        'if [ "$compat" -gt "$image_schema" ]; then',
        f'  fail "{REFUSAL} {image} on this database. The database is at schema $version and only a Synapse '
        f'whose schema version is $compat or later can read it (its schema_compat_version); {image} reads '
        'schema versions up to $image_schema. Main keeps running its current release: set synapse.image '
        'back to a release at least that new."',
        "fi",
        f"dump=\"synapse-before-{release_label(image)}-$(date -u +%Y%m%dT%H%M%SZ).dump\"",
        f"{dump} > \"$dump.partial\" || fail \"the database dump failed: nothing was replaced\"",
        'mv "$dump.partial" "$dump"',
        f"echo \"Synapse's database (schema $version) dumped before main starts {image}: $PWD/$dump\"",
    ]
    if view.backup_now is not None:
        lines += [
            f"echo \"A backup snapshot before main starts {image} (its snapshot_id below):\"",
            f"{view.backup_now} || fail \"the backup snapshot failed: nothing was replaced\"",
        ]
    return "\n".join(lines) + "\n"


def gate(cfg: StackConfig, view: StackView) -> Gate:
    """Main's gate: replaced, and so run, whenever Synapse's image changes; after the database
    server (and the backup's job, with backups on) run."""
    server, _ = _psql_words(view)
    return Gate(GATE, gate_script(cfg, view), trigger=cfg.synapse.image,
                after=tuple(name for name in (server,) if name), unchanged=UNCHANGED)


def worker_wait_probe(main_name: str, main_port: int) -> str:
    """Python run in a worker's image until it succeeds, before the worker starts: main answers
    at the worker's own release. Main listens only once it has migrated the schema, so a worker
    of a new release starts after main's migrations (docs/workers.md), and never against a main
    still at the old release (Synapse names its release in every response's Server header,
    "Synapse/1.163.2", followed by git details when it runs from a checkout)."""
    return ("import importlib.metadata as m, urllib.request as u; "
            f"r = u.urlopen('http://{main_name}:{main_port}/health', timeout=3); "
            "s = r.headers['Server']; "
            "assert s.split()[0] == 'Synapse/' + m.version('matrix-synapse'), s")
