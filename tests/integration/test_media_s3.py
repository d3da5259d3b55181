"""Media in a real S3 bucket (SeaweedFS, tests/integration/s3_server.py): the rendered stack with
`synapse.media.storage: s3` boots with Synapse, its storage provider at the pinned version, a
media worker behind the proxy, and the bucket. An upload through the proxy lands in the bucket;
with the local cache emptied the same bytes, and a thumbnail, still come through the proxy; the
media worker killed and started again loses nothing. Never skipped (cluster.require_binaries).
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.synapse import homeserver

from . import media_s3
from .cluster import Cluster, boot_config, render
from .s3_server import Bucket, seaweedfs
from .workload import PASSWORD

MEDIA_WORKER = "synapse-media-repository-1"


def s3_config(bucket: Bucket) -> dict[str, Any]:
    raw = boot_config({"media_repository": 1})
    raw["synapse"]["media"] = {"storage": "s3", "bucket": bucket.name, "endpoint": bucket.endpoint,
                               "region": bucket.region, "path_style": True, "prefix": "media/"}
    raw["media_s3_access_key_id"] = bucket.access_key_id
    raw["media_s3_secret_access_key"] = bucket.secret_access_key
    return raw


SECRET_KEYS = ("media_s3_access_key_id", "media_s3_secret_access_key")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Cluster, Bucket, str]]:
    base = Path(tempfile.mkdtemp(prefix="media-s3-"))
    with seaweedfs(base / "s3", ("media",)) as (bucket,):
        with Cluster(render(s3_config(bucket), SECRET_KEYS)) as cluster:
            cluster.register("alice", PASSWORD)
            yield cluster, bucket, media_s3.login("alice", PASSWORD)


def test_no_secret_in_the_shared_homeserver_yaml(stack: tuple[Cluster, Bucket, str]) -> None:
    cluster, bucket, _token = stack
    shared = cluster.file(homeserver.SHARED_CONFIG).read_text()
    assert bucket.secret_access_key not in shared and bucket.access_key_id not in shared
    assert "s3_storage_provider.S3StorageProviderBackend" in shared


def test_an_upload_lands_in_the_bucket_and_survives_an_empty_cache(stack: tuple[Cluster, Bucket, str]) -> None:
    cluster, bucket, token = stack
    blob = media_s3.png()
    up = media_s3.upload(token, blob)
    # Synchronous: the upload was acknowledged only once the bucket held it.
    key = "media/" + media_s3.local_content_key(up.media_id)
    assert media_s3.sha256(bucket.read(key)) == up.sha256
    thumbnails = bucket.keys(f"media/local_thumbnails/{up.media_id[0:2]}/{up.media_id[2:4]}/{up.media_id[4:]}/")
    assert thumbnails, "no thumbnail reached the bucket"

    removed = media_s3.empty(cluster.file(homeserver.MEDIA_STORE))
    assert removed >= 1 + len(thumbnails)
    status, data = media_s3.download(token, up.media_id)
    assert status == 200
    assert media_s3.sha256(data) == up.sha256
    status, thumb, content_type = media_s3.thumbnail(token, up.media_id)
    assert status == 200, thumb[:200]
    assert content_type.startswith("image/")
    assert media_s3.dimensions(thumb) == (32, 32)  # the pregenerated crop, from the bucket


def test_the_media_worker_restarts_without_loss(stack: tuple[Cluster, Bucket, str]) -> None:
    cluster, bucket, token = stack
    before = media_s3.upload(token, media_s3.png(200, 150))
    proc = cluster.procs[MEDIA_WORKER]
    os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    media_s3.empty(cluster.file(homeserver.MEDIA_STORE))
    cluster.restart_synapse(MEDIA_WORKER)
    status, data = media_s3.download(token, before.media_id)
    assert status == 200 and media_s3.sha256(data) == before.sha256
    after = media_s3.upload(token, media_s3.png(100, 100))
    assert media_s3.sha256(bucket.read("media/" + media_s3.local_content_key(after.media_id))) == after.sha256
