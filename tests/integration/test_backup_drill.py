"""The restore drill: back up a used cluster with the rendered jobs, lose its database cluster,
media store and signing key, restore with the rendered procedure only, boot again and find
everything. Not skipped anywhere; a missing binary fails with a clear message.

Prints the figures: backup time and repository size, restore time to a healthy cluster, and
the incremental backup's added bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nio
import pytest

from components import postgres
from components.backup import render as backup_render
from components.synapse import homeserver as hs
from tests.conftest import stack_view

from .backup_drill import (
    STACK,
    BackupRun,
    Jobs,
    Restore,
    backup_entries,
    crontab_jobs,
    database_dir,
    du_bytes,
    materialize_backup,
    relocation,
    require_restic,
)
from .cluster import PROXY_URL, Cluster, boot_config, render
from .s3_server import Bucket, seaweedfs
from .workload import PASSWORD, Facts, run_workload

COUNTS = {"event_persister": 1, "media_repository": 1}
# Random bytes: nothing for restic to compress or deduplicate within the first backup.
MEDIA_SIZES = (1024, 200 * 1024, 3 * 1024 * 1024, 5 * 1024 * 1024)
# The repository's password when the stack renders no backup service of its own.
RESTIC_PASSWORD = "drill-repository-password"


def drill_config(media: Bucket | None = None, repository: Bucket | None = None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The drill's stack: a restic repository on a volume, or in `repository`, a bucket of the S3
    server, with media in its `media` bucket (synapse.media.storage: s3)."""
    raw = boot_config(COUNTS)
    raw["backup"] = {"enabled": True}
    secret_keys: tuple[str, ...] = ()
    if repository is not None:
        raw["backup"]["repository"] = {"kind": "s3", "endpoint": repository.endpoint, "bucket": repository.name,
                                       "path": "drill", "region": repository.region, "path_style": True}
        raw.update(backup_s3_access_key_id=repository.access_key_id,
                   backup_s3_secret_access_key=repository.secret_access_key)
        secret_keys += ("backup_s3_access_key_id", "backup_s3_secret_access_key")
    if media is not None:
        raw["synapse"]["media"] = {"storage": "s3", "bucket": media.name, "endpoint": media.endpoint,
                                   "region": media.region, "path_style": True}
        raw.update(media_s3_access_key_id=media.access_key_id, media_s3_secret_access_key=media.secret_access_key)
        secret_keys += ("media_s3_access_key_id", "media_s3_secret_access_key")
    return raw, secret_keys


@dataclass
class Drill:
    facts: Facts
    in_buckets: bool = False  # the repository and the media in the S3 server's buckets
    media: dict[str, str] = field(default_factory=dict)  # mxc -> sha256
    signing_key: bytes = b""
    restored_key: bytes = b""  # what the procedure brought back from the repository
    served_key: bytes = b""  # the file Synapse reads after the restore
    generated_keys: list[str] = field(default_factory=lambda: ["(not redeployed)"])
    first: BackupRun | None = None
    second: BackupRun | None = None
    repository_bytes: int = 0
    restore_s: float = 0.0
    check_output: str = ""
    messages_seen: set[str] = field(default_factory=set)
    downloaded: dict[str, str] = field(default_factory=dict)
    served_key_ids: set[str] = field(default_factory=set)
    original_key_ids: set[str] = field(default_factory=set)
    snapshots_listed: str = ""
    steps: list[str] = field(default_factory=list)
    dump_owners: set[tuple[int, int]] = field(default_factory=set)  # of the dumps the dump service wrote
    dump_user: str = ""  # the dump service's declared user
    job_users: set[str] = field(default_factory=set)  # whom crond starts the backup and check jobs as
    repository_owners: set[tuple[int, int]] = field(default_factory=set)  # of a volume repository's files


async def _upload(user: str) -> dict[str, str]:
    client = nio.AsyncClient(PROXY_URL, f"@{user}:localhost")
    try:
        login = await client.login(PASSWORD, device_name="drill")
        assert isinstance(login, nio.LoginResponse), login
        media: dict[str, str] = {}
        for i, size in enumerate(MEDIA_SIZES):
            blob = os.urandom(size)
            upload, _keys = await client.upload(io.BytesIO(blob), content_type="application/octet-stream",
                                                filename=f"drill-{i}.bin", filesize=len(blob))
            assert isinstance(upload, nio.UploadResponse), upload
            media[upload.content_uri] = hashlib.sha256(blob).hexdigest()
        return media
    finally:
        await client.close()


async def _read_back(user: str, room_id: str, media: dict[str, str]) -> tuple[set[str], dict[str, str]]:
    """Every event id /messages returns for the room, and each media file's sha256."""
    client = nio.AsyncClient(PROXY_URL, f"@{user}:localhost")
    try:
        login = await client.login(PASSWORD, device_name="drill-after-restore")
        assert isinstance(login, nio.LoginResponse), login
        seen: set[str] = set()
        token: str | None = None
        for _ in range(50):
            page = await client.room_messages(room_id, start=token, limit=50)
            assert isinstance(page, nio.RoomMessagesResponse), page
            seen.update(e.event_id for e in page.chunk)
            if not page.chunk or not page.end:
                break
            token = page.end
        downloaded: dict[str, str] = {}
        for mxc in media:
            got = await client.download(mxc=mxc)
            assert isinstance(got, nio.MemoryDownloadResponse), got
            downloaded[mxc] = hashlib.sha256(got.body).hexdigest()
        return seen, downloaded
    finally:
        await client.close()


def _server_key_ids() -> set[str]:
    from .workload import well_known

    keys, _cors = well_known("/_matrix/key/v2/server")
    return set(keys["verify_keys"])


@pytest.fixture(scope="module", params=["volume", "s3"])
def drill(request: pytest.FixtureRequest) -> Iterator[Drill]:
    """The drill on a volume repository with media on a volume, and once against the S3 server:
    the repository and the media each in a bucket of their own."""
    base = Path(tempfile.mkdtemp(prefix="backup-drill-"))
    if request.param == "s3":
        with seaweedfs(base / "s3", ("media", "backups")) as (media, repository):
            yield from _drill(base, media, repository)
    else:
        yield from _drill(base)


def _drill(base: Path, media: Bucket | None = None, repository: Bucket | None = None) -> Iterator[Drill]:
    require_restic()
    raw, secret_keys = drill_config(media, repository)
    result = render(raw, secret_keys)
    entries = backup_entries(result, RESTIC_PASSWORD)
    # What the backup service received: the stack output the procedure's first step reads.
    restic_password = next(f["content"] for e in entries for f in e["files"]
                           if f["path"] == backup_render.PASSWORD_FILE)
    reloc = relocation(result, entries, base)
    cluster = Cluster(result, workdir=base)
    materialize_backup(entries, reloc)
    # crond's jobs as the Docker target schedules them.
    crontab = crontab_jobs(result)
    assert {name: job.schedule for name, job in crontab.items()} == {
        backup_render.BACKUP_SERVICE: result.cfg.backup.schedule,
        backup_render.CHECK_SERVICE: result.cfg.backup.check_schedule}
    jobs = Jobs(entries, reloc, base, crontab)
    ok = False
    try:
        # 1. Boot, use it.
        cluster.start()
        facts = run_workload(cluster)
        outcome = Drill(facts, in_buckets=repository is not None)
        outcome.media = asyncio.run(_upload("alice"))
        outcome.original_key_ids = _server_key_ids()
        outcome.signing_key = cluster.file(hs.secret_path("signing_key")).read_bytes()

        # 2. The backup job, as crond runs it; the check job.
        outcome.first = jobs.backup()
        dumps = Path(reloc.path(backup_render.DUMPS))
        outcome.dump_owners = {(p.stat().st_uid, p.stat().st_gid) for p in dumps.iterdir()}
        outcome.dump_user = str(jobs.services[backup_render.DUMP_SERVICE].user)
        outcome.job_users = {job.user for job in crontab.values()}
        if repository is None:
            outcome.repository_owners = {(p.stat().st_uid, p.stat().st_gid)
                                         for p in Path(reloc.path(backup_render.REPOSITORY_MOUNT)).rglob("*")}
        outcome.check_output = jobs.check()
        if repository is not None:
            listed = repository.client().list_objects_v2(Bucket=repository.name, Prefix="drill/")
            outcome.repository_bytes = sum(o["Size"] for o in listed.get("Contents", []))
        else:
            outcome.repository_bytes = du_bytes(Path(reloc.path(backup_render.REPOSITORY_MOUNT)))

        # 3. Stop everything; lose the database cluster, the media store, the signing key and
        #    the backup's scratch space (the repository is elsewhere).
        cluster.stop()
        shutil.rmtree(database_dir(cluster))
        shutil.rmtree(cluster.file(hs.MEDIA_STORE))
        cluster.file(hs.secret_path("signing_key")).unlink()
        shutil.rmtree(reloc.path(backup_render.SCRATCH))
        Path(reloc.path(backup_render.SCRATCH)).mkdir()

        # 4. The documented procedure, step by step.
        steps = backup_render.restore_procedure(result.cfg, stack_view(result.cfg), backup_render.databases(stack_view(result.cfg))[:1], STACK)
        outcome.steps = [s.command for s in steps]
        started = time.monotonic()
        state: dict[str, Any] = {"cluster": None}

        def redeploy() -> Cluster:
            """What `pulumi up` does after the loss: the containers again (PostgreSQL on an
            empty volume, created as the image creates it), with the config as it is now."""
            restored_raw = dict(raw)
            restored_keys = secret_keys
            if "signing_key" in restore.config_set:
                restored_raw["signing_key"] = restore.config_set["signing_key"]
                restored_keys += ("signing_key",)
            redeployed = render(restored_raw, restored_keys)
            outcome.generated_keys = [r.name for r in redeployed.resources if r.name.startswith("synapse-signing-key")]
            again = Cluster(redeployed, workdir=base)
            state["cluster"] = again  # stopped by the fixture's teardown, however far it starts
            materialize_backup(entries, reloc)  # the cluster wrote the backup's files unrelocated
            again.start_postgres()
            again.start_pooler()
            # The redeployed Synapse starts on the empty database and creates its schema, which
            # the restore then replaces (pg_restore --clean).
            again.start_redis()
            again.start_main()
            return again

        def stop(names: list[str]) -> None:
            expected = set(cluster.synapse_names()) | {"synapse-proxy"}
            assert set(names) == expected, f"the procedure stops {names}, the cluster runs {sorted(expected)}"
            if state["cluster"] is None:
                redeploy()
            state["cluster"].stop_processes(names)

        def start(names: list[str]) -> None:
            again = state["cluster"]
            assert names[0] == "synapse-main", names
            again.start_main()
            again.start_workers()
            again.start_proxy()

        restore = Restore(result.cfg, {e["service"].name: e["service"] for e in [*result.services, *entries]},
                          reloc, base, restic_password, stop, start, base / "pg-socket",
                          postgres.PORT, secret_config={k: str(raw[k]) for k in secret_keys})
        for step in steps:
            restore.step(step.command)
            if " snapshots " in step.command + " ":
                outcome.snapshots_listed = restore.outputs[-1]
        outcome.restore_s = time.monotonic() - started
        cluster = state["cluster"]
        outcome.restored_key = restore.config_set.get("signing_key", "").encode()
        outcome.served_key = cluster.file(hs.secret_path("signing_key")).read_bytes()

        # 5. Read everything back; 6. a second backup.
        outcome.served_key_ids = _server_key_ids()
        outcome.messages_seen, outcome.downloaded = asyncio.run(
            _read_back("alice", facts.room_id, outcome.media))
        outcome.second = jobs.backup()
        print(f"\nbackup drill ({'S3 repository, media in S3' if repository else 'volume repository'}): first backup {outcome.first.seconds:.1f} s, repository "
              f"{outcome.repository_bytes / 1e6:.2f} MB ({outcome.first.summary['data_added']} bytes added, "
              f"{outcome.first.summary['total_bytes_processed']} processed); restore to a healthy cluster "
              f"{outcome.restore_s:.1f} s; second backup {outcome.second.seconds:.1f} s, "
              f"{outcome.second.summary['data_added']} bytes added")
        ok = True
        yield outcome
    finally:
        state_cluster = locals().get("state", {}).get("cluster")
        if state_cluster is not None:
            state_cluster.stop()
        cluster.stop()
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"drill files kept in {base}")


def test_every_event_sent_before_the_backup_is_returned_by_messages(drill: Drill) -> None:
    assert len(drill.facts.sent_ids) >= 20
    missing = [e for e in drill.facts.sent_ids if e not in drill.messages_seen]
    assert not missing, f"{len(missing)} event(s) lost: {missing[:5]}"


def test_every_media_file_downloads_with_the_same_sha256(drill: Drill) -> None:
    assert len(drill.media) == len(MEDIA_SIZES)
    assert drill.downloaded == drill.media


def test_the_signing_key_is_byte_identical(drill: Drill) -> None:
    assert drill.restored_key == drill.signing_key
    # The redeployed stack takes the key from the config the procedure set, generating none.
    assert drill.generated_keys == []
    assert drill.served_key == drill.signing_key
    assert drill.served_key_ids == drill.original_key_ids


def test_the_second_backup_is_incremental(drill: Drill) -> None:
    assert drill.first is not None and drill.second is not None
    first, second = drill.first.summary["data_added"], drill.second.summary["data_added"]
    if drill.in_buckets:
        # Media in a bucket is not copied into the snapshots (the bucket's versioning keeps it):
        # each backup is the databases' dumps, rewritten whole by the restore in between.
        assert first < sum(MEDIA_SIZES) and second < sum(MEDIA_SIZES), (first, second)
        return
    assert first > sum(MEDIA_SIZES), first
    assert second * 10 < first, f"second backup added {second} bytes, the first {first}"


def test_the_check_job_finds_no_errors(drill: Drill) -> None:
    assert "no errors were found" in drill.check_output, drill.check_output


def test_the_procedure_lists_the_snapshot(drill: Drill) -> None:
    assert "1 snapshots" in drill.snapshots_listed, drill.snapshots_listed


def test_no_backup_process_runs_as_root(drill: Drill) -> None:
    """Docker's backup runs as nobody throughout: crond starts the backup and check jobs as the
    user its crontab is named after, the dump service writes its dumps as nobody, and what the
    jobs wrote to the repository is nobody's."""
    assert drill.dump_user == "65534:65534" and drill.job_users == {"65534:65534"}, (drill.dump_user, drill.job_users)
    assert drill.dump_owners == {(65534, 65534)}, drill.dump_owners
    if not drill.in_buckets:
        assert drill.repository_owners == {(65534, 65534)}, drill.repository_owners


