"""Stand-in images under the exact pinned names, built from the same upstream software this
machine can install, and cached as `docker save` tarballs so a warm run loads them in seconds.

No container registry is reachable here, so the real images cannot be pulled. Each stand-in
follows the real image's facts that the deployment relies on (user ids, entrypoint contract,
paths, the tools its health check calls):

- Synapse: the pinned matrix-synapse from PyPI in a Debian rootfs (debootstrap, then pip);
  `python` and `pip` on PATH, curl for the health check, /data owned by 991:991 and no USER (the
  real image starts as root, its start.py steps down to 991; the stack names the user). The
  engine reaches no PyPI: its pip installs from a wheelhouse the image carries (/etc/pip.conf),
  which holds the pinned synapse-s3-storage-provider too, so the project's derived image
  (images/synapse-s3) builds FROM this stand-in with its own `pip install`.
- PgBouncer: Debian's pgbouncer (1.18; the pinned image is 1.25) at the image's /usr/bin path,
  pg_isready, user postgres 70:70 (as in the alpine image).
- PostgreSQL: Debian's server (15; the pinned image is 16) behind an entrypoint honouring the
  postgres image's contract: POSTGRES_USER, POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), POSTGRES_DB,
  POSTGRES_INITDB_ARGS and PGDATA on first start, then `postgres` as user postgres (uid/gid 70,
  as in the alpine image).
- Redis: Debian's redis-server (7.0) under the pinned Valkey image's program names (valkey-server,
  valkey-cli; Debian 12 has no Valkey), user 999:1000, /data.
- nginx: Debian's nginx-light (1.22; the pinned image is 1.29), user nginx 101:101, wget.
- LiveKit: `go install github.com/livekit/livekit-server/cmd/server@<pinned tag>` as
  /livekit-server, the real image's entrypoint.
- element-call, element-web, lk-jwt-service, ntfy: no registry here ships them, so these are
  PLACEHOLDERS that only serve the declared port and health path (busybox httpd); they prove the
  container's wiring, not the software.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from config import images

CACHE = Path(os.environ.get("MATRIX_STACK_CACHE", Path.home() / ".cache" / "matrix-stack"))
IMAGE_CACHE = CACHE / "docker-images"
GO_BIN_CACHE = CACHE / "go-bin"
BASE = "matrix-stack-stand-in/debian:bookworm"
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "--include=ca-certificates", "bookworm"]
MIRROR = "http://deb.debian.org/debian"


Context = dict[str, tuple[bytes, int]]  # build context path -> (content, mode)
Say = Callable[[str], None]
TICK_S = 30.0


@contextmanager
def ticking(say: Say, doing: str, every: float = TICK_S) -> Iterator[Callable[[str], None]]:
    """Says `doing` now, then every `every` seconds how long it has taken, until the block ends:
    a debootstrap, a download or an apt-get inside a build prints nothing of its own for
    minutes. The block may update what it is doing through the function it is given."""
    started = time.monotonic()
    current = [doing]
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            say(f"{current[0]}: {time.monotonic() - started:.0f}s so far")

    say(doing)
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    outcome = "failed after"
    try:
        yield lambda now: current.__setitem__(0, now)
        outcome = "done in"
    finally:
        done.set()
        ticker.join()
        say(f"{doing}: {outcome} {time.monotonic() - started:.0f}s")


@dataclass(frozen=True)
class StandIn:
    ref: str
    dockerfile: str
    files: Context = field(default_factory=dict)
    # Large context made only when building (wheels, binaries); its version is in the Dockerfile.
    extra: Callable[[Say], Context] | None = None
    placeholder: bool = False

    def key(self) -> str:
        h = hashlib.sha256(self.dockerfile.encode())
        for name, (content, mode) in sorted(self.files.items()):
            h.update(name.encode() + content + str(mode).encode())
        return h.hexdigest()[:16]

    def tarball(self) -> Path:
        safe = self.ref.replace("/", "_").replace(":", "_")
        return IMAGE_CACHE / f"{safe}-{self.key()}.tar"


def _apt(*packages: str) -> str:
    return ("RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {' '.join(packages)} >/dev/null && rm -rf /var/lib/apt/lists/*")


POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# The postgres image's contract: initialise PGDATA from POSTGRES_* on first start, then run the
# server as user postgres.
set -eu
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # file_env: POSTGRES_PASSWORD, or the file POSTGRES_PASSWORD_FILE names.
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE"); fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    # shellcheck disable=SC2086
    initdb --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA"
    rm -f "$pwfile"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    db="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"
    if [ "$db" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" -d postgres -c "CREATE DATABASE \"$db\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec "$@"
"""

REDIS_ENTRYPOINT = r"""#!/bin/sh
# The valkey image's contract: as root, hand /data to its user and drop to it.
set -eu
if [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
"""

PLACEHOLDER_ENTRYPOINT = r"""#!/bin/sh
# PLACEHOLDER: serves only the declared port and health path; the real software is not here.
exec busybox httpd -f -p "$PLACEHOLDER_PORT" -h /srv/placeholder
"""


SYNAPSE_REQUIREMENT = f"matrix-synapse[redis]=={images.SYNAPSE_VERSION}"
S3_PROVIDER_REQUIREMENT = f"synapse-s3-storage-provider=={images.S3_STORAGE_PROVIDER_VERSION}"
WHEELHOUSE = "/opt/wheels"


def synapse_wheels(say: Say = print) -> Context:
    """The pinned Synapse, the pinned storage provider and their dependencies from PyPI,
    downloaded by this (Debian 12, Python 3.11) machine's pip for the same Debian and Python the
    image has: the image installs them offline, so it needs no access to PyPI of its own."""
    wheelhouse = CACHE / "synapse-wheels" / f"{images.SYNAPSE_VERSION}-s3-{images.S3_STORAGE_PROVIDER_VERSION}"
    if not (wheelhouse / ".complete").exists():
        shutil.rmtree(wheelhouse, ignore_errors=True)
        wheelhouse.mkdir(parents=True)
        wanted = (SYNAPSE_REQUIREMENT, S3_PROVIDER_REQUIREMENT)
        with ticking(say, f"downloading {', '.join(wanted)} and their dependencies from PyPI (once per version)"):
            subprocess.run(["python3", "-m", "pip", "download", "-q", "-d", str(wheelhouse), *wanted],
                           check=True, timeout=1800)
        (wheelhouse / ".complete").touch()
    return {f"wheels/{p.name}": (p.read_bytes(), 0o644) for p in sorted(wheelhouse.iterdir()) if p.name != ".complete"}


def synapse() -> StandIn:
    return StandIn(images.SYNAPSE, "\n".join([
        f"FROM {BASE}",
        _apt("python3", "python3-venv", "python3-psycopg2", "curl"),
        f"LABEL matrix-stack.stand-in.wheelhouse=\"{SYNAPSE_REQUIREMENT} {S3_PROVIDER_REQUIREMENT}\"",
        f"COPY wheels {WHEELHOUSE}",
        # pip installs from the wheelhouse alone: the engine has no PyPI ({S3_PROVIDER_REQUIREMENT}
        # is there for the derived image).
        f"RUN printf '[global]\\nno-index = true\\nfind-links = {WHEELHOUSE}\\n' > /etc/pip.conf && "
        "python3 -m venv --system-site-packages /opt/synapse && "
        f"/opt/synapse/bin/pip install -q '{SYNAPSE_REQUIREMENT}' && "
        "ln -s /opt/synapse/bin/python /usr/local/bin/python",
        "ENV PATH=/opt/synapse/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "RUN mkdir -p /data && chown 991:991 /data",
        'ENTRYPOINT ["python", "-m", "synapse.app.homeserver"]',
        "",
    ]), extra=synapse_wheels)


def postgres() -> StandIn:
    return StandIn(images.POSTGRES, "\n".join([
        f"FROM {BASE}",
        "RUN groupadd -g 70 postgres && useradd -u 70 -g 70 -d /var/lib/postgresql -s /bin/sh postgres",
        _apt("postgresql-15"),
        "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV PGDATA=/var/lib/postgresql/data",
        "COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh",
        "RUN mkdir -p /var/lib/postgresql/data && chown -R 70:70 /var/lib/postgresql",
        'ENTRYPOINT ["docker-entrypoint.sh"]',
        'CMD ["postgres"]',
        "",
    ]), {"docker-entrypoint.sh": (POSTGRES_ENTRYPOINT.encode(), 0o755)})


def pgbouncer() -> StandIn:
    return StandIn(images.PGBOUNCER, "\n".join([
        f"FROM {BASE}",
        "RUN groupadd -g 70 postgres && useradd -u 70 -g 70 -M -d /var/lib/postgresql -s /bin/sh postgres",
        _apt("pgbouncer", "postgresql-client-15"),
        # The image's path of the program; pg_isready on PATH, as the image's postgresql-client has it.
        "RUN ln -s /usr/sbin/pgbouncer /usr/bin/pgbouncer && ln -s /usr/lib/postgresql/15/bin/pg_isready /usr/local/bin/",
        "USER 70:70",
        'ENTRYPOINT ["/usr/bin/pgbouncer"]',
        "",
    ]))


def redis() -> StandIn:
    return StandIn(images.REDIS, "\n".join([
        f"FROM {BASE}",
        "RUN groupadd -g 1000 redis && useradd -u 999 -g 1000 -M -s /bin/false redis",
        _apt("redis-server"),
        # The rendered service calls the Valkey image's programs: the same protocol, config and ACL file.
        "RUN ln -s /usr/bin/redis-server /usr/local/bin/valkey-server && "
        "ln -s /usr/bin/redis-cli /usr/local/bin/valkey-cli",
        "RUN mkdir -p /data && chown redis:redis /data",
        "WORKDIR /data",
        "COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh",
        'ENTRYPOINT ["docker-entrypoint.sh"]',
        'CMD ["valkey-server"]',
        "",
    ]), {"docker-entrypoint.sh": (REDIS_ENTRYPOINT.encode(), 0o755)})


def nginx() -> StandIn:
    return StandIn(images.NGINX, "\n".join([
        f"FROM {BASE}",
        "RUN groupadd -g 101 nginx && useradd -u 101 -g 101 -M -d /var/cache/nginx -s /sbin/nologin nginx",
        _apt("nginx-light", "wget"),
        "RUN rm -f /etc/nginx/sites-enabled/default && mkdir -p /var/cache/nginx && chown 101:101 /var/cache/nginx",
        'CMD ["nginx", "-g", "daemon off;"]',
        "",
    ]))


def livekit_binary(say: Say = print) -> Path:
    """The LiveKit server from its Go module at the pinned tag, cached per version (scripts/test
    builds it first, saying how far along it is)."""
    version = images.LIVEKIT.rsplit(":", 1)[1]
    gobin = GO_BIN_CACHE / f"livekit-{version}"
    binary = gobin / "server"
    if not binary.exists():
        gobin.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0"}
        with ticking(say, f"building LiveKit {version} (go install, once per tag)"):
            subprocess.run(["go", "install", f"github.com/livekit/livekit-server/cmd/server@{version}"],
                           env=env, check=True, timeout=3600)
    return binary


def livekit() -> StandIn:
    return StandIn(images.LIVEKIT, "\n".join([
        f"FROM {BASE}",
        f"LABEL org.opencontainers.image.version={images.LIVEKIT.rsplit(':', 1)[1]}",
        _apt("wget"),
        "COPY livekit-server /livekit-server",
        'ENTRYPOINT ["/livekit-server"]',
        "",
    ]), extra=lambda say: {"livekit-server": (livekit_binary(say).read_bytes(), 0o755)})


def placeholder(ref: str, port: int, health: list[str]) -> StandIn:
    """Serves `port`; the health check's URL path answers, and a health program the check
    names (an absolute path) becomes a probe of that port."""
    url = next((a for a in health if a.startswith("http://")), f"http://127.0.0.1:{port}/")
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    document = path if not path.endswith("/") else path + "index.html"
    lines = [
        f"FROM {BASE}",
        _apt("busybox", "wget"),
        f"RUN mkdir -p /srv/placeholder{os.path.dirname(document)} && "
        f"echo '{{\"placeholder\": \"{ref}\"}}' > /srv/placeholder{document}",
        "COPY placeholder.sh /usr/local/bin/placeholder.sh",
        f"ENV PLACEHOLDER_PORT={port}",
        'ENTRYPOINT ["/usr/local/bin/placeholder.sh"]',
    ]
    files = {"placeholder.sh": (PLACEHOLDER_ENTRYPOINT.encode(), 0o755)}
    program = health[1] if len(health) > 1 and health[1].startswith("/") else None
    if program:
        files["health.sh"] = (f"#!/bin/sh\nexec wget -qO- http://127.0.0.1:{port}/\n".encode(), 0o755)
        lines.append(f"COPY health.sh {program}")
    return StandIn(ref, "\n".join([*lines, ""]), files, placeholder=True)


BUILT = {images.SYNAPSE: synapse, images.POSTGRES: postgres, images.PGBOUNCER: pgbouncer, images.REDIS: redis,
         images.NGINX: nginx,
         images.LIVEKIT: livekit}


def stand_ins_for(containers: list[dict[str, object]], ports: dict[str, int]) -> list[StandIn]:
    """A stand-in per image the declared containers use; `ports` maps a container name to the
    port its service listens on (for placeholders)."""
    chosen: dict[str, StandIn] = {}
    for inputs in containers:
        ref = str(inputs["image"])
        if ref in chosen:
            continue
        if ref in BUILT:
            chosen[ref] = BUILT[ref]()
        else:
            health = (inputs.get("healthcheck") or {}).get("tests") or []  # type: ignore[union-attr]
            chosen[ref] = placeholder(ref, ports[str(inputs["name"])], list(health))
    return list(chosen.values())


def _context(stand_in: StandIn, say: Say) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        extra = stand_in.extra(say) if stand_in.extra else {}
        for name, (content, mode) in {"Dockerfile": (stand_in.dockerfile.encode(), 0o644), **stand_in.files,
                                      **extra}.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            tar.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return buf


def _has(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _load(client: docker.DockerClient, tarball: Path) -> None:
    with open(tarball, "rb") as f:
        client.images.load(f)


def _debootstrap(rootfs: Path, say: Say) -> None:
    """debootstrap, saying each of its phases (retrieving, validating, extracting, unpacking,
    configuring: one line per package, counted here) as it reaches it."""
    with ticking(say, "the Debian bookworm base: debootstrap (once)") as now:
        proc = subprocess.Popen([*DEBOOTSTRAP, str(rootfs), MIRROR], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        phase, count = "", 0
        tail: list[str] = []
        for line in proc.stdout:
            tail = [*tail[-30:], line.rstrip()]
            words = line.split()
            if len(words) >= 2 and words[0] == "I:":
                if words[1] != phase:
                    phase, count = words[1], 0
                    say(f"  debootstrap: {phase} ...")
                count += 1
                now(f"the Debian bookworm base: debootstrap, {phase} ({count} so far)")
        if proc.wait(timeout=1800) != 0:
            raise RuntimeError("debootstrap failed:\n" + "\n".join(tail))


def base_image(client: docker.DockerClient, say: Say = print) -> None:
    """A Debian bookworm rootfs from debootstrap, imported once and cached."""
    if _has(client, BASE):
        return
    tarball = IMAGE_CACHE / "debian-bookworm-minbase.tar"
    if not tarball.exists():
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        rootfs = IMAGE_CACHE / "rootfs.tmp"
        shutil.rmtree(rootfs, ignore_errors=True)
        _debootstrap(rootfs, say)
        subprocess.run(["tar", "-C", str(rootfs), "-cf", f"{tarball}.tmp", "."], check=True)
        os.replace(f"{tarball}.tmp", tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    with open(tarball, "rb") as f:
        client.api.import_image_from_data(f.read(), repository=BASE.split(":")[0], tag="bookworm")


def _save(client: docker.DockerClient, refs: list[str], tarball: Path) -> None:
    # GET /images/get with several names: one archive, shared layers once (docker-py's
    # get_image takes a single name).
    api = client.api
    res = api._get(api._url("/images/get"), params={"names": refs}, stream=True)
    api._raise_for_status(res)
    with open(f"{tarball}.tmp", "wb") as out:
        for chunk in res.iter_content(chunk_size=1 << 21):
            out.write(chunk)
    os.replace(f"{tarball}.tmp", tarball)


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


def build(client: docker.DockerClient, stand_in: StandIn, label: str, say: Say) -> None:
    """`docker build` of the stand-in, saying each Dockerfile step as the engine reaches it."""
    log: list[str] = []
    with ticking(say, f"{label}: building") as now:
        context = _context(stand_in, say)
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=stand_in.ref, network_mode="host",
                                      rm=True, forcerm=True, decode=True):
            text = str(chunk.get("stream") or "")
            log.append(text)
            if chunk.get("error"):
                raise RuntimeError(f"building the stand-in {stand_in.ref} failed:\n{''.join(log)[-3000:]}"
                                   f"{chunk['error']}")
            if text.startswith("Step "):
                step = text.strip()
                say(f"{label}: {step[:110]}")
                now(f"{label}: {step.split(' :', 1)[0].lower()}")


def ensure(client: docker.DockerClient, stand_ins: Iterable[StandIn], say: Say = print) -> dict[str, float]:
    """Every stand-in present in the engine. A warm cache is one `docker save` bundle of all of
    them (shared layers stored once), keyed by every image's recipe; otherwise each image is
    loaded from its own cached tarball, or built and saved. Says what it does as it goes (a cold
    build takes many minutes). Returns seconds spent per step."""
    chosen = list(stand_ins)
    spent: dict[str, float] = {}
    key = hashlib.sha256("".join(sorted(s.key() for s in chosen)).encode()).hexdigest()[:16]
    bundle = IMAGE_CACHE / f"stand-ins-{key}.tar"
    started = time.monotonic()
    if bundle.exists() and not all(_has(client, s.ref) for s in chosen):
        with ticking(say, f"stand-in images: loading the cached bundle of {len(chosen)} ({_megabytes(bundle)})"):
            _load(client, bundle)
        spent["load bundle"] = time.monotonic() - started
    for number, stand_in in enumerate(chosen, 1):
        started = time.monotonic()
        if _has(client, stand_in.ref):
            continue
        label = f"stand-in image {number}/{len(chosen)} {stand_in.ref}"
        tarball = stand_in.tarball()
        if tarball.exists():
            with ticking(say, f"{label}: loading {tarball.name} ({_megabytes(tarball)})"):
                _load(client, tarball)
        else:
            base_image(client, say)
            build(client, stand_in, label, say)
            IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
            for stale in IMAGE_CACHE.glob(tarball.name.rsplit("-", 1)[0] + "-*.tar"):
                stale.unlink()
            with ticking(say, f"{label}: saving to the cache"):
                _save(client, [stand_in.ref], tarball)
        spent[stand_in.ref] = time.monotonic() - started
    if not bundle.exists():
        started = time.monotonic()
        for stale in IMAGE_CACHE.glob("stand-ins-*.tar"):
            stale.unlink()
        with ticking(say, f"stand-in images: saving the bundle of {len(chosen)} to the cache"):
            _save(client, [s.ref for s in chosen], bundle)
        spent["save bundle"] = time.monotonic() - started
    return spent
