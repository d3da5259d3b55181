"""Media through the proxy's media routes, with plain HTTP: login, upload, download, thumbnail.
Shared by the S3 boot test and the restore drill against a bucket."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .cluster import PROXY_URL

SERVER = "localhost"
TIMEOUT_S = 60


def _request(method: str, path: str, *, token: str | None = None, body: bytes | None = None,
             content_type: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(PROXY_URL + path, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def login(user: str, password: str) -> str:
    body = json.dumps({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                       "password": password}).encode()
    status, data, _ = _request("POST", "/_matrix/client/v3/login", body=body, content_type="application/json")
    assert status == 200, (status, data)
    return str(json.loads(data)["access_token"])


def png(width: int = 320, height: int = 240) -> bytes:
    """A real image (Synapse thumbnails only images it can decode): a gradient, so every upload's
    bytes and every thumbnail differ from a blank one."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x % 256, y % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Upload:
    media_id: str
    sha256: str
    size: int


def upload(token: str, blob: bytes, content_type: str = "image/png") -> Upload:
    status, data, _ = _request("POST", "/_matrix/media/v3/upload?filename=picture.png", token=token, body=blob,
                               content_type=content_type)
    assert status == 200, (status, data)
    uri = json.loads(data)["content_uri"]
    assert uri.startswith(f"mxc://{SERVER}/"), uri
    return Upload(uri.rsplit("/", 1)[1], hashlib.sha256(blob).hexdigest(), len(blob))


def download(token: str, media_id: str) -> tuple[int, bytes]:
    status, data, _ = _request("GET", f"/_matrix/client/v1/media/download/{SERVER}/{urllib.parse.quote(media_id)}",
                               token=token)
    return status, data


def thumbnail(token: str, media_id: str, width: int = 32, height: int = 32) -> tuple[int, bytes, str]:
    """A cropped thumbnail: Synapse pregenerates 32x32 crops of every image upload."""
    status, data, headers = _request(
        "GET", f"/_matrix/client/v1/media/thumbnail/{SERVER}/{urllib.parse.quote(media_id)}"
               f"?width={width}&height={height}&method=crop", token=token)
    return status, data, headers.get("Content-Type", "")


def dimensions(image: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(image)) as decoded:
        return decoded.size


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_content_key(media_id: str) -> str:
    """Where Synapse's media store (and so the bucket) keeps a local upload
    (synapse/media/filepath.py, local_media_filepath_rel)."""
    return f"local_content/{media_id[0:2]}/{media_id[2:4]}/{media_id[4:]}"


def empty(directory: Any) -> int:
    """Removes every file under `directory` (the process's media cache); returns how many."""
    removed = 0
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            path.unlink()
            removed += 1
        elif path.is_dir():
            path.rmdir()
    return removed
