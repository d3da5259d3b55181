"""Backups with restic: the scripts the backup jobs run, the restore procedure and the command
that lists snapshots. Pure functions of the typed config.

A backup is two steps sharing one scratch directory:
  1. `dump.sh`, in the pinned PostgreSQL image (the server's own image, so pg_dump is the
     server's major version): `pg_dump -Fc` of every database the stack owns.
  2. `backup.sh`, in the pinned restic image: one snapshot of the dumps, the key files that can
     never be regenerated (Synapse's signing key) and the media store; then `restic forget
     --prune` with the configured retention. `backup.sh check` runs `restic check`.
Kubernetes runs them as a CronJob (the dump as its init container). Docker has no scheduler:
BusyBox crond in the restic image runs backup.sh on its schedule, and backup.sh asks the dump
container, which waits in a loop, for fresh dumps through marker files in the scratch volume.

The snapshot holds absolute container paths (SCRATCH/dumps/<database>.dump, KEYS/<file>,
the media store), which the restore procedure reads back by the same paths.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from components.platform.contract import Handover, Mount, OneShot, OperatorStep, Workload
from components.platform.targets import target_of
from components.view import StackView
from config import images
from config.model import (
    S3Repository,
    SftpRepository,
    StackConfig,
    VolumeRepository,
)

BACKUP_SERVICE = "backup"
CHECK_SERVICE = "backup-check"
DUMP_SERVICE = "backup-dump"
COMPONENT = "backup"
# Every snapshot is taken under this host name, so `latest` and retention see one series
# whichever container or pod took it (Docker gives containers random host names).
SNAPSHOT_HOST = "matrix-stack"

BIN = "/backup/bin"
DUMP_SCRIPT = f"{BIN}/dump.sh"
BACKUP_SCRIPT = f"{BIN}/backup.sh"
CRONTAB_DIR = "/backup/crontabs"
CRONTAB = f"{CRONTAB_DIR}/root"
SCRATCH = "/backup/scratch"
DUMPS = f"{SCRATCH}/dumps"
KEYS = "/backup/keys"
SECRETS = "/backup/secrets"
PASSWORD_FILE = f"{SECRETS}/restic-password"
PGPASS_FILE = f"{SECRETS}/pgpass"
S3_ENV_FILE = f"{SECRETS}/s3.env"
SFTP_KEY_FILE = f"{SECRETS}/sftp-key"
KNOWN_HOSTS_FILE = "/backup/conf/known_hosts"
CACHE = f"{SCRATCH}/cache"
# Private copies of the mounted credentials: libpq and ssh refuse files others may read.
PRIVATE_PGPASS = f"{SCRATCH}/.pgpass"
PRIVATE_SFTP_KEY = f"{SCRATCH}/.sftp-key"
REPOSITORY_MOUNT = "/repository"
# A dump that fails is tried again (a table dropped while it runs), this many times in all.
DUMP_ATTEMPTS = 3
DUMP_RETRY_S = 5
# The series the backup pushes after each success (the metrics push target keeps the last):
# METRICS_JOB_last_success_timestamp_seconds, METRICS_JOB_last_size_bytes (what the snapshot
# holds) and METRICS_JOB_last_added_bytes (what it added to the repository).
METRICS_JOB = "backup"
SUMMARY = f"{SCRATCH}/backup-summary.json"
METRICS_FILE = f"{SCRATCH}/backup-metrics.prom"
# Docker: how long backup.sh waits for the dump container before it gives up.
DUMP_WAIT_S = 3600


@dataclass(frozen=True)
class Database:
    """A PostgreSQL database the stack owns, dumped to DUMPS/<name>.dump."""

    name: str
    host: str
    port: int
    user: str
    # The service that runs the server, when the stack runs it (restore execs into it).
    service: str | None = None
    sslmode: str = "prefer"
    # The shared secret holding the password (components/part.DatabaseClaim.password_secret).
    password_secret: str = ""

    @property
    def dump_path(self) -> str:
        return f"{DUMPS}/{self.name}.dump"

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.name} user={self.user} sslmode={self.sslmode}"


def databases(view: StackView) -> list[Database]:
    """Every database the stack's parts claim (Synapse's, MAS's ...), in the view's order."""
    found: list[Database] = []
    for claim in view.databases:
        if claim.external is not None:
            ext = claim.external
            found.append(Database(claim.database, ext.host, ext.port, claim.user, sslmode=ext.sslmode,
                                  password_secret=claim.password_secret))
        else:
            server = view.database_server
            assert server is not None
            found.append(Database(claim.database, server.service, server.port, claim.user, service=server.service,
                                  sslmode="disable", password_secret=claim.password_secret))
    return found


def key_files(view: StackView) -> dict[str, str]:
    """Name in the snapshot (under KEYS) -> the file its part reads: what cannot be regenerated
    without breaking something (Synapse's federation identity; MAS's tokens and encrypted data)."""
    return {kept.name: kept.path for kept in view.kept_files}


def dump_image(view: StackView) -> str:
    """The image that runs pg_dump: the bundled server's own; with only external databases, the
    pinned PostgreSQL image (the operator keeps the server at its major version)."""
    return view.database_server.image if view.database_server is not None else images.POSTGRES


# ---------------------------------------------------------------- the repository


def repository_url(cfg: StackConfig) -> str:
    repo = cfg.backup.repository
    if isinstance(repo, S3Repository):
        return f"s3:{repo.endpoint}/{repo.bucket}" + (f"/{repo.path.strip('/')}" if repo.path.strip("/") else "")
    if isinstance(repo, SftpRepository):
        return f"sftp:{repo.user}@{repo.host}:{repo.path}"
    return REPOSITORY_MOUNT


def bucket_lookup(repo: S3Repository) -> str:
    """restic's option for how the bucket is addressed: path-style (<endpoint>/<bucket>), or by
    DNS (<bucket>.<endpoint>); restic's own `auto` guesses from the endpoint's name."""
    return f"s3.bucket-lookup={'path' if repo.path_style else 'dns'}"


def sftp_command(cfg: StackConfig, key_file: str, known_hosts: str) -> str:
    """The ssh command restic's sftp backend runs: the pinned host key, this key only."""
    repo = cfg.backup.repository
    assert isinstance(repo, SftpRepository)
    return (f"ssh -i {key_file} -o IdentitiesOnly=yes -o UserKnownHostsFile={known_hosts} "
            f"-o StrictHostKeyChecking=yes -p {repo.port} {repo.user}@{repo.host} -s sftp")


def known_hosts(cfg: StackConfig) -> str:
    repo = cfg.backup.repository
    assert isinstance(repo, SftpRepository)
    host = repo.host if repo.port == 22 else f"[{repo.host}]:{repo.port}"
    return f"{host} {repo.known_hosts}"


def s3_env(access_key_id: str, secret_access_key: str) -> str:
    """The bucket's credentials as a file backup.sh sources (crond gives jobs no environment)."""
    return (f"export AWS_ACCESS_KEY_ID={shlex.quote(access_key_id)}\n"
            f"export AWS_SECRET_ACCESS_KEY={shlex.quote(secret_access_key)}\n")


def pgpass(databases: Sequence[Database], passwords: Sequence[str]) -> str:
    """libpq's password file: one line per database (':' and '\\' escaped)."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    return "".join(f"{esc(d.host)}:{d.port}:{esc(d.name)}:{esc(d.user)}:{esc(p)}\n"
                   for d, p in zip(databases, passwords, strict=True))


def retention_flags(cfg: StackConfig) -> list[str]:
    keep = cfg.backup.retention
    flags: list[str] = []
    for name, count in (("daily", keep.daily), ("weekly", keep.weekly), ("monthly", keep.monthly)):
        if count:
            flags += [f"--keep-{name}", str(count)]
    return flags


def snapshot_paths(view: StackView) -> list[str]:
    """What one snapshot holds, in restic's argument order."""
    return [DUMPS, KEYS, *((view.media_store.path,) if view.media_store is not None else ())]


# ---------------------------------------------------------------- the scripts


def dump_script(cfg: StackConfig, databases: Sequence[Database]) -> str:
    """pg_dump -Fc of every database into DUMPS, each written beside and renamed when complete.
    On Docker it waits for requests (SCRATCH/.request) and answers with .done or .failed."""
    lines = [
        "#!/bin/sh",
        "# Dumps every database the stack owns (pg_dump -Fc, the server's major version).",
        "set -eu",
        # libpq ignores a password file others may read, and a mounted Secret is group-readable
        # (fsGroup): a private copy.
        f"cp {PGPASS_FILE} {PRIVATE_PGPASS}",
        f"chmod 600 {PRIVATE_PGPASS}",
        f"export PGPASSFILE={PRIVATE_PGPASS}",
        "",
        # Synapse's background updates create work tables (_temp_*) and drop them when done:
        # pg_dump lists the tables, then locks each, and one dropped in between fails the whole
        # dump. The next attempt lists them again. Every failure is returned explicitly: the
        # Docker loop calls dump inside `if`, where `set -e` does not apply.
        "dump_database() {  # name, conninfo, file",
        "  attempt=1",
        '  until pg_dump -Fc -Z 0 -d "$2" -f "$3.partial"; do',
        f'    if [ "$attempt" -ge {DUMP_ATTEMPTS} ]; then',
        f'      echo "pg_dump of $1 failed {DUMP_ATTEMPTS} times" >&2',
        "      return 1",
        "    fi",
        "    attempt=$((attempt + 1))",
        f'    echo "pg_dump of $1 failed; attempt $attempt of {DUMP_ATTEMPTS} in {DUMP_RETRY_S} s" >&2',
        f"    sleep {DUMP_RETRY_S}",
        "  done",
        '  mv "$3.partial" "$3" || return 1',
        '  echo "dumped $1: $(wc -c < "$3") bytes"',
        "}",
        "",
        "dump() {",
        f"  mkdir -p {DUMPS} || return 1",
    ]
    for db in databases:
        # Uncompressed (-Z 0): restic compresses, and finds the tables that did not change since
        # the last snapshot (a compressed dump differs throughout).
        lines.append(f"  dump_database {db.name} {shlex.quote(db.conninfo)} {db.dump_path} || return 1")
    lines.append("}")
    lines.append("")
    if not target_of(cfg).scheduled_steps:
        lines += [
            "# Docker: backup.sh, run by crond on its schedule, asks for fresh dumps.",
            "while :; do",
            f"  if [ -e {SCRATCH}/.request ]; then",
            f"    rm -f {SCRATCH}/.request {SCRATCH}/.done {SCRATCH}/.failed",
            f"    if (dump); then touch {SCRATCH}/.done; else touch {SCRATCH}/.failed; fi",
            "  fi",
            "  sleep 2",
            "done",
        ]
    else:
        lines.append("dump")
    return "\n".join(lines) + "\n"


def _repository_lines(cfg: StackConfig) -> list[str]:
    repo = cfg.backup.repository
    lines = [
        f"export RESTIC_REPOSITORY={shlex.quote(repository_url(cfg))}",
        f"export RESTIC_PASSWORD_FILE={PASSWORD_FILE}",
        f"export RESTIC_CACHE_DIR={CACHE}",
    ]
    if isinstance(repo, S3Repository):
        lines.append(f". {S3_ENV_FILE}")
        if repo.region:
            lines.append(f"export AWS_DEFAULT_REGION={shlex.quote(repo.region)}")
    if isinstance(repo, SftpRepository):
        option = f"sftp.command={sftp_command(cfg, PRIVATE_SFTP_KEY, KNOWN_HOSTS_FILE)}"
        lines += [f"cp {SFTP_KEY_FILE} {PRIVATE_SFTP_KEY}", f"chmod 600 {PRIVATE_SFTP_KEY}",
                  f"set -- -o {shlex.quote(option)}"]
    elif isinstance(repo, S3Repository):
        lines.append(f"set -- -o {bucket_lookup(repo)}")
    else:
        lines.append("set --")
    return lines


def backup_script(cfg: StackConfig, view: StackView, databases: Sequence[Database]) -> str:
    """`backup.sh backup`: a snapshot, then forget --prune; `backup.sh check`: restic check."""
    paths = " ".join(snapshot_paths(view))
    lines = [
        "#!/bin/sh",
        "# One restic snapshot of the database dumps, the key files and the media store.",
        "set -eu",
        'mode="${1:-backup}"',
        *_repository_lines(cfg),
        "",
        f"mkdir -p {CACHE}",
        "if ! restic \"$@\" cat config >/dev/null 2>&1; then",
        '  if [ "$mode" != backup ]; then echo "no restic repository at $RESTIC_REPOSITORY" >&2; exit 1; fi',
        '  restic "$@" init',
        "fi",
        "",
        'if [ "$mode" = check ]; then',
        '  exec restic "$@" check',
        "fi",
        "",
    ]
    if not target_of(cfg).scheduled_steps:
        lines += [
            f"# Docker: ask the {DUMP_SERVICE} container for fresh dumps and wait for them.",
            f"rm -f {SCRATCH}/.done {SCRATCH}/.failed",
            f"touch {SCRATCH}/.request",
            "waited=0",
            f"until [ -e {SCRATCH}/.done ]; do",
            f"  if [ -e {SCRATCH}/.failed ]; then echo \"the database dump failed: see the {DUMP_SERVICE} container's log\" >&2; exit 1; fi",
            f"  if [ \"$waited\" -ge {DUMP_WAIT_S} ]; then echo \"no database dump within {DUMP_WAIT_S}s: is {DUMP_SERVICE} running?\" >&2; exit 1; fi",
            "  sleep 2",
            "  waited=$((waited + 2))",
            "done",
            "",
        ]
    missing = " ".join(db.dump_path for db in databases)
    lines += [
        f"for dump in {missing}; do",
        '  if [ ! -s "$dump" ]; then echo "missing database dump $dump" >&2; exit 1; fi',
        "done",
        f"restic \"$@\" backup --json --host {SNAPSHOT_HOST} --tag {SNAPSHOT_HOST} {paths} > {SUMMARY}",
        f"cat {SUMMARY}",
        f"restic \"$@\" forget --host {SNAPSHOT_HOST} {' '.join(retention_flags(cfg))} --prune",
        *report_lines(view),
    ]
    return "\n".join(lines) + "\n"


def metrics_text(timestamp: str, size: str, added: str) -> str:
    """The backup's report in Prometheus's text format (values may be shell expansions)."""
    out = []
    for name, value, help_text in (("last_success_timestamp_seconds", timestamp, "When the last backup succeeded."),
                                   ("last_size_bytes", size, "What the last snapshot holds."),
                                   ("last_added_bytes", added, "What the last snapshot added to the repository.")):
        metric = f"{METRICS_JOB}_{name}"
        out += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge", f"{metric} {value}"]
    return "\n".join(out) + "\n"


def report_lines(view: StackView) -> list[str]:
    """After a success: the report to the view's metrics push target (Prometheus's Pushgateway,
    which keeps the last one for Prometheus to scrape). A report that cannot be delivered does
    not fail the backup: the overdue alert says so once the schedule's window has passed."""
    push = view.metrics_push_target
    if push is None:
        return []
    host, port, _crosses = view.target.reach(BACKUP_SERVICE, push.service, push.port)
    url = f"http://{host}:{port}/metrics/job/{METRICS_JOB}"
    summary = "select(.message_type == \"summary\")"
    return [
        "",
        "# Report the success to monitoring (a report that fails leaves the backup a success).",
        "report() {",
        f"  size=$(jq -r '{summary} | .total_bytes_processed' {SUMMARY})",
        f"  added=$(jq -r '{summary} | .data_added' {SUMMARY})",
        f"  cat > {METRICS_FILE} <<EOF",
        metrics_text("$(date +%s)", "$size", "$added").rstrip("\n"),
        "EOF",
        f"  wget -q -O /dev/null --post-file={METRICS_FILE} {url}",
        "}",
        f"report || echo \"could not report the backup to {url}\" >&2",
    ]


# ---------------------------------------------------------------- restoring
#
# Written in the target's operator verbs (contract.Target): the target says how a command runs
# in a service, stops and starts services, runs an image once and hands the operator's secrets
# and files to those runs.


Step = OperatorStep

# What the restore's runs are called where the target names them (pods), and what it stores the
# operator's secrets and files in.
RESTORE = "backup-restore"
SFTP_FILES = (("sftp-key", SFTP_KEY_FILE), ("known_hosts", KNOWN_HOSTS_FILE))


def _password_step(stack: str) -> Step:
    return Step("The repository's password, a Pulumi secret of the stack.",
                f"export RESTIC_PASSWORD=\"$(pulumi stack output --stack {stack} --show-secrets backup_repository_password)\"")


def _credential_steps(cfg: StackConfig, stack: str) -> list[Step]:
    repo = cfg.backup.repository
    get = f"pulumi config get --stack {stack} matrix-stack"
    if isinstance(repo, S3Repository):
        return [Step("The bucket's credentials, secret config of the stack.",
                     f"export AWS_ACCESS_KEY_ID=\"$({get}:backup_s3_access_key_id)\" "
                     f"AWS_SECRET_ACCESS_KEY=\"$({get}:backup_s3_secret_access_key)\"")]
    if isinstance(repo, SftpRepository):
        return [Step("The SFTP key and the server's pinned host key, in files the restore containers mount.",
                     f"umask 077 && {get}:backup_sftp_private_key > sftp-key && "
                     f"printf '%s\\n' {shlex.quote(known_hosts(cfg))} > known_hosts")]
    return []


def _restore_secret_keys(cfg: StackConfig) -> list[str]:
    return ["RESTIC_PASSWORD"] + (["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
                                  if isinstance(cfg.backup.repository, S3Repository) else [])


def _handover(cfg: StackConfig, databases: Sequence[Database] = ()) -> Handover:
    """What the restore's runs take from the operator's shell: the repository's password and
    credentials, an external database's password (PGPASSWORD), the SFTP files."""
    keys = _restore_secret_keys(cfg) + (["PGPASSWORD"] if any(db.service is None for db in databases) else [])
    files = SFTP_FILES if isinstance(cfg.backup.repository, SftpRepository) else ()
    return Handover(RESTORE, "restore", tuple(keys), "The password (and credentials)", files, "sftp", "the SFTP files")


def _restic(cfg: StackConfig, handover: Handover, args: str, mounts: Sequence[Mount] = (), stdin: bool = False) -> str:
    """The pinned restic image run once against the repository, beside the backup jobs."""
    target = target_of(cfg)
    repo = cfg.backup.repository
    env: tuple[tuple[str, str], ...] = ()
    if isinstance(repo, S3Repository) and repo.region:
        env = (("AWS_DEFAULT_REGION", repo.region),)
    if isinstance(repo, VolumeRepository):
        mounts = (*mounts, Mount(repo.name, REPOSITORY_MOUNT, read_only=True))
    repo_args = ["-r", repository_url(cfg)]
    if isinstance(repo, S3Repository):
        repo_args += ["-o", bucket_lookup(repo)]
    if isinstance(repo, SftpRepository):
        files = target.hand_over(handover).files
        repo_args += ["-o", f"sftp.command={sftp_command(cfg, files['sftp-key'], files['known_hosts'])}"]
    return target.run_once(OneShot(
        RESTORE, "restic", cfg.backup.image, (*repo_args, *args.split()), handover,
        secret_env=tuple(_restore_secret_keys(cfg)), env=env, mounts=tuple(mounts),
        files=isinstance(repo, SftpRepository), stdin=stdin, beside=BACKUP_SERVICE, network_as=BACKUP_SERVICE))


def _stopped(view: StackView) -> list[Workload]:
    """The services that write the databases or the media store, or let clients in, in start
    order (main first): stopped during a restore (PostgreSQL keeps running to take the dumps)."""
    return [Workload(writer.service, writer.stateful) for writer in view.writers]


def _pg_restore(db: Database) -> str:
    return (f"pg_restore -U {db.user} -d {db.name} --clean --if-exists --no-owner --role={db.user} "
            "--single-transaction --exit-on-error")


def _pg_restore_target(cfg: StackConfig, view: StackView, handover: Handover, db: Database) -> str:
    """The command that reads a dump on stdin and restores it: inside the bundled server, else in
    the pinned PostgreSQL image run once against the external server (with PGPASSWORD)."""
    target = target_of(cfg)
    if db.service:
        return target.exec_command(db.service, True, _pg_restore(db), stdin=True)
    return target.run_once(OneShot(
        "backup-pg-restore", "pg-restore", dump_image(view),
        (*shlex.split(_pg_restore(db)), "-h", db.host, "-p", str(db.port)), handover,
        command=True, secret_env=("PGPASSWORD",), stdin=True, network_as=BACKUP_SERVICE))


def _key_steps(cfg: StackConfig, stack: str, restic: object) -> list[Step]:
    assert callable(restic)
    path = f"{KEYS}/signing_key"
    return [Step("Only when the Pulumi state that generated it is lost too: bring Synapse's signing key (its "
                 "federation identity) back into the stack, then run `pulumi up` to recreate what was lost.",
                 f"{restic(f'dump --host {SNAPSHOT_HOST} latest {path}')} | "
                 f"pulumi config set --stack {stack} --secret matrix-stack:signing_key")]


def restore_procedure(cfg: StackConfig, view: StackView, databases: Sequence[Database], stack: str) -> list[Step]:
    target = target_of(cfg)
    terms = target.terms
    handover = _handover(cfg, databases)
    session = target.hand_over(handover)
    steps = [_password_step(stack), *_credential_steps(cfg, stack), *session.before]
    steps.append(Step("The snapshots in the repository; `latest` below is the newest.", snapshots_command(cfg)))
    steps += _key_steps(cfg, stack, lambda args: _restic(cfg, handover, args))
    workloads = _stopped(view)
    steps += [Step("Stop every Synapse process, the proxy (and MAS); PostgreSQL keeps running. After a lost "
                   f"{terms.place}, run `pulumi up` first: it recreates the {terms.workloads} and empty "
                   f"{terms.volume}s.", command) for command in target.stop(workloads)]
    for db in databases:
        latest = _restic(cfg, handover, f"dump --host {SNAPSHOT_HOST} latest {db.dump_path}", stdin=True)
        steps.append(Step(f"Restore the {db.name} database from its dump, replacing what it holds, in one "
                          "transaction.", f"{latest} | {_pg_restore_target(cfg, view, handover, db)}"))
    media = view.media_store
    if media is not None:
        steps.append(Step(f"Restore the media store into its {terms.volume} (files keep their owner).",
                          _restic(cfg, handover, f"restore --host {SNAPSHOT_HOST} latest --target / --include "
                                  f"{media.path}", mounts=[Mount(media.volume, media.path)])))
    # Media in a bucket is no part of the snapshots (media_bucket_warnings): the bucket still
    # holds every file the restored database names, and its versions what was deleted since.
    why = ("Start Synapse again: main first, then the workers and the proxy." if terms.starts_in_order
           else "Start Synapse again with the stack's replica counts.")
    steps += [Step(why, command) for command in target.start(workloads, stack)]
    return [*steps, *session.after]


def procedure_text(steps: Sequence[Step]) -> str:
    """The steps as a shell script to read and run in order: `# why` above each command."""
    return "".join(f"# {i}. {step.why}\n{step.command}\n" for i, step in enumerate(steps, 1))


def backup_now_command(cfg: StackConfig) -> str:
    """A snapshot now, as the schedule takes it; restic prints the snapshot's id
    (`"snapshot_id"` in its JSON summary)."""
    return target_of(cfg).run_scheduled(BACKUP_SERVICE, f"/bin/sh {BACKUP_SCRIPT} backup", jobs_user(cfg))


NOBODY = "65534:65534"


def jobs_user(cfg: StackConfig) -> str | None:
    """Who runs the jobs where the target schedules them in their own container (Docker: crond
    starts each as this user), or None where each run is a pod that says its user itself:
    nobody, the one unprivileged user the restic image's /etc/passwd names (crond needs a name),
    and the dump too, as both write the scratch volume and a Docker volume has one owner."""
    return None if target_of(cfg).scheduled_steps else NOBODY


def snapshots_command(cfg: StackConfig) -> str:
    """The command that lists the snapshots, once RESTIC_PASSWORD (and the repository's
    credentials) are exported as the restore procedure's first steps do."""
    return _restic(cfg, _handover(cfg), f"snapshots --host {SNAPSHOT_HOST}")


# ---------------------------------------------------------------- warnings


def same_host_warnings(cfg: StackConfig, view: StackView) -> list[tuple[str, object, str]]:
    """A volume repository on the Docker host of the database shares its fate."""
    if not cfg.backup.enabled or not isinstance(cfg.backup.repository, VolumeRepository):
        return []
    target = target_of(cfg)
    backup = target.host_of(BACKUP_SERVICE)
    server = view.database_server
    database = target.host_of(server.service) if server is not None else None
    if backup is None or database is None or backup.name != database.name:
        return []
    return [("backup.repository.kind", "volume",
             f"the restic repository is a volume on '{backup.name}', the Docker host that runs the database: losing "
             "that host loses the backups with it; use kind s3 or sftp for a copy elsewhere")]


def media_bucket_warnings(cfg: StackConfig) -> list[tuple[str, object, str]]:
    """Media in a bucket is not in the snapshots: only the bucket's own versioning or replication
    keeps a deleted or overwritten media file, and the operator owns both."""
    if not cfg.backup.enabled or not cfg.synapse.media.s3:
        return []
    return [("synapse.media.storage", "s3",
             f"media lives in the bucket '{cfg.synapse.media.bucket}' and is not copied into the backups: turn on "
             "the bucket's versioning (with a lifecycle rule for old versions) or replication to another "
             "bucket, or a lost or overwritten media file cannot be brought back")]


def warnings(cfg: StackConfig, view: StackView) -> list[str]:
    from config import Problem

    found = same_host_warnings(cfg, view) + media_bucket_warnings(cfg)
    return [str(Problem(key, advice, str(value))) for key, value, advice in found]
