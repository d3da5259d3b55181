"""Media in a real S3 bucket (SeaweedFS, tests/integration/s3_server.py), one boot with Synapse,
its storage provider at the pinned version, a media worker behind the proxy, and the bucket:

- a stack with local media serves some uploads; then it moves to `synapse.media.storage: s3`
  one Synapse process at a time while the proxy, PostgreSQL and the other processes keep
  serving, and the stack's own migration command copies the existing media to the bucket;
- an upload through the proxy lands in the bucket; with the local cache emptied the same bytes,
  and a thumbnail, still come through the proxy, for new and migrated media alike;
- the media worker killed and started again loses nothing.

Never skipped (cluster.require_binaries, s3_server.weed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.synapse import homeserver

from . import media_s3
from .backup_drill import shell_text
from .cluster import Cluster, boot_config, render
from .s3_server import Bucket, seaweedfs
from .workload import PASSWORD

COUNTS = {"media_repository": 1}
MEDIA_WORKER = "synapse-media-repository-1"
PREFIX = "media/"
SECRET_KEYS = ("media_s3_access_key_id", "media_s3_secret_access_key")


def s3_config(bucket: Bucket) -> dict[str, Any]:
    raw = boot_config(COUNTS)
    raw["synapse"]["media"] = {"storage": "s3", "bucket": bucket.name, "endpoint": bucket.endpoint,
                               "region": bucket.region, "path_style": True, "prefix": PREFIX}
    raw["media_s3_access_key_id"] = bucket.access_key_id
    raw["media_s3_secret_access_key"] = bucket.secret_access_key
    return raw


@dataclass
class Stack:
    cluster: Cluster
    bucket: Bucket
    token: str
    before: list[media_s3.Upload]  # uploaded while media was local
    migration: str  # the migration command's output


def environment(cluster: Cluster, service: str) -> dict[str, str]:
    """`service`'s environment, with container paths moved as the harness moves them, and the
    PATH of the Python that runs Synapse and its storage provider here."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return env | {k: cluster.reloc.path(v) if v.startswith("/") else v for k, v in cluster.env_of(service).items()}


def migrate(cluster: Cluster) -> str:
    """The stack's media_to_bucket_command, run as `docker exec` runs it in the media worker: its
    environment, its files, with container paths moved as the harness moves them."""
    script = homeserver.media_upload_script(cluster.result.cfg, older_than="0d", delete=False)
    done = subprocess.run(["sh", "-c", shell_text(cluster.reloc, script)], capture_output=True, text=True,
                          env=environment(cluster, MEDIA_WORKER), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    base = Path(tempfile.mkdtemp(prefix="media-s3-"))
    os.chmod(base, 0o755)  # PostgreSQL's user must reach the cluster's directories below
    (base / "stack").mkdir()
    with seaweedfs(base / "s3", ("media",)) as (bucket,):
        local = Cluster(render(boot_config(COUNTS)), workdir=base / "stack")
        moved: Cluster | None = None
        ok = False
        try:
            local.start()
            local.register("alice", PASSWORD)
            token = media_s3.login("alice", PASSWORD)
            before = [media_s3.upload(token, media_s3.png(160 + i, 120)) for i in range(2)]
            # The change to media in the bucket, as `pulumi up` rolls it: the new files, then each
            # Synapse process replaced in turn (PostgreSQL, Redis and the proxy keep running).
            moved = Cluster(render(s3_config(bucket), SECRET_KEYS), workdir=base / "stack")
            for name in local.synapse_names():
                local.stop_processes([name])
                moved.start_synapse(name)
            output = migrate(moved)
            print(f"\nmedia_to_bucket_command's output:\n{output}")
            yield Stack(moved, bucket, token, before, output)
            ok = True
        finally:
            if moved is not None:
                moved.stop()
            local.stop()
            if ok:
                shutil.rmtree(base, ignore_errors=True)
            else:
                print(f"media-s3 files kept in {base}", file=sys.stderr)


def test_no_secret_in_the_shared_homeserver_yaml(stack: Stack) -> None:
    shared = stack.cluster.file(homeserver.SHARED_CONFIG).read_text()
    assert stack.bucket.secret_access_key not in shared and stack.bucket.access_key_id not in shared
    assert "s3_storage_provider.S3StorageProviderBackend" in shared


def test_the_migration_copies_the_media_uploaded_before_into_the_bucket(stack: Stack) -> None:
    assert f"Uploaded {len(stack.before)} media out of {len(stack.before)}" in stack.migration, stack.migration
    for up in stack.before:
        assert media_s3.sha256(stack.bucket.read(PREFIX + media_s3.local_content_key(up.media_id))) == up.sha256


def test_an_upload_lands_in_the_bucket_and_survives_an_empty_cache(stack: Stack) -> None:
    cluster, bucket, token = stack.cluster, stack.bucket, stack.token
    blob = media_s3.png()
    up = media_s3.upload(token, blob)
    # Synchronous: the upload was acknowledged only once the bucket held it.
    assert media_s3.sha256(bucket.read(PREFIX + media_s3.local_content_key(up.media_id))) == up.sha256
    thumbnails = bucket.keys(f"{PREFIX}local_thumbnails/{up.media_id[0:2]}/{up.media_id[2:4]}/{up.media_id[4:]}/")
    assert thumbnails, "no thumbnail reached the bucket"

    removed = media_s3.empty(cluster.file(homeserver.MEDIA_STORE))
    assert removed >= 1 + len(thumbnails)
    for media in (up, *stack.before):
        status, data = media_s3.download(token, media.media_id)
        assert status == 200
        assert media_s3.sha256(data) == media.sha256
    status, thumb, content_type = media_s3.thumbnail(token, up.media_id)
    assert status == 200, thumb[:200]
    assert content_type.startswith("image/")
    assert media_s3.dimensions(thumb) == (32, 32)  # the pregenerated crop, from the bucket


def test_the_media_worker_restarts_without_loss(stack: Stack) -> None:
    cluster, bucket, token = stack.cluster, stack.bucket, stack.token
    before = media_s3.upload(token, media_s3.png(200, 150))
    proc = cluster.procs[MEDIA_WORKER]
    os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    media_s3.empty(cluster.file(homeserver.MEDIA_STORE))
    cluster.restart_synapse(MEDIA_WORKER)
    status, data = media_s3.download(token, before.media_id)
    assert status == 200 and media_s3.sha256(data) == before.sha256
    after = media_s3.upload(token, media_s3.png(100, 100))
    assert media_s3.sha256(bucket.read(PREFIX + media_s3.local_content_key(after.media_id))) == after.sha256


def test_the_cache_cleaner_empties_what_the_bucket_holds_and_nobody_read(stack: Stack) -> None:
    """The cache cleaner Docker runs (its rendered command, environment and files): media not
    read for cache.max_age leaves the cache and is still served from the bucket; media read since
    stays; a stop ends its wait at once."""
    cluster, token = stack.cluster, stack.token
    stale, recent = media_s3.upload(token, media_s3.png(180, 90)), media_s3.upload(token, media_s3.png(90, 180))
    max_age_days = int(cluster.result.cfg.synapse.media.cache.max_age.removesuffix("d"))
    # Uploaded and last read a day longer ago than the cache keeps media (Synapse records each
    # read; s3_media_upload reads the upload time where there was none).
    long_ago = int((time.time() - (max_age_days + 1) * 86400) * 1000)
    cluster.psql(f"UPDATE local_media_repository SET created_ts = {long_ago}, last_access_ts = {long_ago} "
                 f"WHERE media_id = '{stale.media_id}'")
    store = cluster.file(homeserver.MEDIA_STORE)
    local = {m.media_id: store / media_s3.local_content_key(m.media_id) for m in (stale, recent)}
    assert all(path.is_file() for path in local.values())

    cleaner = cluster.services[homeserver.MEDIA_CACHE_CLEANER]["service"]
    assert cleaner.entrypoint[:2] == ("sh", "-c")
    log = cluster.base / "media-cache-clean.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["sh", "-c", shell_text(cluster.reloc, cleaner.entrypoint[2])], stdout=out,
                                stderr=subprocess.STDOUT, env=environment(cluster, homeserver.MEDIA_CACHE_CLEANER),
                                cwd=cluster.base)
        try:
            deadline = time.monotonic() + 300
            while "media cache clean-up" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
            text = log.read_text()
            assert "media cache clean-up: done" in text, text
            # Waiting for its next run: a stop (docker stop's SIGTERM) ends it at once.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    print(f"\nthe cache cleaner's first run:\n{text}")
    assert not local[stale.media_id].exists(), "media nobody read for cache.max_age stayed in the cache"
    assert local[recent.media_id].is_file(), "media read within cache.max_age left the cache"
    for media in (stale, recent):
        status, data = media_s3.download(token, media.media_id)
        assert status == 200 and media_s3.sha256(data) == media.sha256
