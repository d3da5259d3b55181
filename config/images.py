"""Pinned container images, and the facts each pinned image guarantees.

The pins are the defaults every stack starts from. Synapse's tag must equal the matrix-synapse
version the tests install from PyPI (requirements/test.in), because the tests boot the files we
render with that version.

The facts are what our services depend on: the user an image runs its program as, its
entrypoint, which programs it ships (a shell, wget, curl, the tools our health checks call), the
file capabilities its binaries carry, the port it listens on, its config and health paths. Each
fact names the upstream file and tag it was read from. Services derive their health checks, users
and capability sets from this table (components/image_facts.py), and a unit test holds every
service to it (tests/unit/test_image_facts.py). Bumping a pin means re-reading its facts.

A stack may override an image's tag; the facts of the pinned tag still apply (they are keyed by
repository), so an override is the operator's promise that the image keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

# renovate: depName=matrixdotorg/synapse extractVersion=^v(?<version>.+)$
SYNAPSE_VERSION = "1.163.2"

SYNAPSE = f"matrixdotorg/synapse:v{SYNAPSE_VERSION}"
# Media in a bucket: the storage provider Synapse loads, installed into a derived image (the
# recipe: images/synapse-s3/Dockerfile). 1.6.0 and later need Synapse 1.140 or later. The tests
# install the same version (requirements/test.in).
S3_STORAGE_PROVIDER_VERSION = "1.7.0"
# The derived image's repository: built on each Docker host under this name, pushed by the
# operator to synapse.media.image_registry for Kubernetes.
SYNAPSE_S3_REPOSITORY = "matrix-stack/synapse-s3"
SYNAPSE_S3_RECIPE = "images/synapse-s3/Dockerfile"
POSTGRES = "postgres:16.15-alpine"
# The transaction pooler in front of the bundled PostgreSQL (components/postgres/pooler.py).
PGBOUNCER = "edoburu/pgbouncer:v1.25.2-p0"
# Valkey, not Redis: Redis 7.4+ is source-available (RSALv2/SSPLv1), Valkey is BSD-3-Clause and
# speaks the same protocol, config file and ACL file; Synapse's replication needs nothing more.
# The name stays REDIS: it is the stack's Redis-protocol server (synapse.redis in the config).
REDIS = "valkey/valkey:8.1.8-alpine"
NGINX = "nginx:1.31.6-alpine"
ELEMENT_CALL = "ghcr.io/element-hq/element-call:v0.24.0"
LK_JWT_SERVICE = "ghcr.io/element-hq/lk-jwt-service:0.6.0"
LIVEKIT = "livekit/livekit-server:v1.13.5"
NTFY = "binwiederhier/ntfy:v2.14.0"
ELEMENT_WEB = "vectorim/element-web:v1.12.26"
COTURN = "coturn/coturn:4.17.0"
CERTBOT = "certbot/certbot:v4.1.1"
RESTIC = "restic/restic:0.19.1"
# The tag whose config schema ../shared/reference/mas/ holds (a new pin needs that version's schema).
# renovate: depName=ghcr.io/element-hq/matrix-authentication-service
MAS_VERSION = "1.22.0"
MAS = f"ghcr.io/element-hq/matrix-authentication-service:{MAS_VERSION}"
# Monitoring: the versions Debian 12 ships (prometheus, prometheus-alertmanager and the exporters'
# packages), so the tests run the very programs that read the rendered files at these tags.
PROMETHEUS = "prom/prometheus:v2.42.0"
ALERTMANAGER = "prom/alertmanager:v0.25.0"
NGINX_EXPORTER = "nginx/nginx-prometheus-exporter:0.11.0"
POSTGRES_EXPORTER = "quay.io/prometheuscommunity/postgres-exporter:v0.11.1"
REDIS_EXPORTER = "oliver006/redis_exporter:v1.45.0"
# Grafana: the dashboard schema the pinned grafana-foundation-sdk builds (requirements/main.in,
# 11.6) is this release's. No registry here ships Grafana itself.
GRAFANA = "grafana/grafana:11.6.0"
# The versions Debian bookworm packages (prometheus-node-exporter 1.5.0, prometheus-blackbox-exporter
# 0.23.0, prometheus-pushgateway 1.5.1): the tests run those packages on the rendered files.
NODE_EXPORTER = "quay.io/prometheus/node-exporter:v1.5.0"
BLACKBOX_EXPORTER = "quay.io/prometheus/blackbox-exporter:v0.23.0"
PUSHGATEWAY = "quay.io/prometheus/pushgateway:v1.5.1"

# Held back (2026-12-06), with newer releases known: a pin moves only when its source at the new
# tag can be read here, and LiveKit's only when its proof can run.
# - LIVEKIT v1.13.11: v1.13.6 and later replace pion's webrtc, dtls and ice with LiveKit forks
#   the Go module proxy refuses (403), so the tests cannot build the SFU they boot. Risk: fixes
#   since v1.13.5 are missing (an auth token echoed in an error and logged, #4756; the runtime
#   image and Go rebuilt for the eMudhra CA compromise, #5034/#5044; TURN config validation).
# - LK_JWT_SERVICE 0.8.0 (Rust since 0.7.0; MSC4195 requests, application-service mode): no
#   source at a tag after v0.5.0 here, and no crate on crates.io. It also keeps the calls model
#   standalone (element_call/render.py, transports).
# - ELEMENT_CALL v0.26.1, MAS 1.26.0 (RUSTSEC-2026-0258, h2, fixed 1.24.0; its config schema too),
#   ELEMENT_WEB v1.12.30 (GHSA-wqmv-r2qj-2j9p, fixed 1.12.28), NTFY v2.27.0: their repositories'
#   snapshots here end before those tags (element-call v0.24.0, MAS v1.22.0, ntfy v2.13.0;
#   element-web is too large to fetch). The advisories stay open on these stacks until they move.

# BusyBox applets every Alpine-based image has on PATH (alpine-baselayout + busybox).
BUSYBOX = frozenset({"sh", "wget", "grep", "sed", "ls", "cat", "test", "["})
# What a Debian "slim" base has that our checks could call (dash as /bin/sh, coreutils, grep, sed).
DEBIAN_SLIM = frozenset({"sh", "grep", "sed", "ls", "cat", "test", "["})


@dataclass(frozen=True)
class Source:
    """Where a fact was read: a file of an upstream repository at a tag (or commit)."""

    repo: str
    path: str
    ref: str
    # Why the ref is not the pinned tag, when it is not.
    note: str = ""

    def __str__(self) -> str:
        return f"{self.repo}:{self.path}@{self.ref}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class ImageFacts:
    """What one pinned image guarantees. Every fact has an entry in `sources`."""

    image: str
    sources: Mapping[str, Source]
    # The tag these facts were read for and the day they were read (YYYY-MM-DD). A pin bumped
    # without its facts re-read fails the freshness tests (tests/unit/test_image_freshness.py).
    read_for: str
    read_on: str
    # "uid:gid" the image runs its program as: its USER, or the user its entrypoint steps down
    # to. None: root, and no user of its own (FROM scratch, or no USER line).
    user: str | None = None
    # The entrypoint starts as root and steps down itself (gosu, su-exec): it needs CHOWN,
    # SETUID and SETGID at start, so the service cannot drop every capability.
    steps_down: bool = False
    entrypoint: tuple[str, ...] = ()
    shell: bool = False
    wget: bool = False
    curl: bool = False
    # Other programs on PATH our services call (pg_isready, redis-cli, grep, python ...).
    tools: frozenset[str] = frozenset()
    # Binary -> capabilities set on it with setcap. The kernel refuses to exec such a binary
    # when one of them is outside the bounding set, so a service must keep them.
    file_capabilities: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    port: int | None = None
    # A directory the entrypoint refuses to start without write access to, when it runs as a
    # user other than root (valkey's checks its WORKDIR): a read-only root must keep it writable.
    writable_workdir: str | None = None
    config_path: str | None = None
    health_path: str | None = None
    # A health-check program of the image's own (a FROM scratch image has nothing else).
    healthcheck_binary: str | None = None
    # Where the program writes by default, by the flag that moves each (certbot's --config-dir,
    # --work-dir, --logs-dir), when it runs as any user that may write them: a service running it
    # unprivileged on a read-only root points each at a volume it owns or a scratch directory.
    state_dirs: Mapping[str, str] = field(default_factory=dict)
    # "uid:gid" -> the name its /etc/passwd gives that user, where a program of the image picks a
    # user by name (BusyBox crond runs each crontab's jobs as the user the file is named after).
    user_names: Mapping[str, str] = field(default_factory=dict)
    # Synapse only: the database schema version the image's release writes (SCHEMA_VERSION in
    # synapse/storage/schema/__init__.py). A database whose schema_compat_version is above it is
    # one this release cannot read. True for the pinned tag alone (image_schema_version).
    schema_version: int | None = None
    # How the program takes a secret from a file (variable or config key), never from its
    # environment: what each service's secret files rely on.
    secret_file_options: tuple[str, ...] = ()
    # How the program serves Prometheus metrics, where a service relies on it: the setting that
    # opens its endpoint (and what the image's build needs for it). None: nothing relies on it.
    prometheus: str | None = None

    @property
    def repository(self) -> str:
        return repository(self.image)

    @property
    def programs(self) -> frozenset[str]:
        """Every program a command run in this image may call by name."""
        named = {name for name, present in (("sh", self.shell), ("wget", self.wget), ("curl", self.curl)) if present}
        own = {self.healthcheck_binary} if self.healthcheck_binary else set()
        return frozenset(named | own | set(self.tools))

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Every capability a binary of this image carries, sorted."""
        return tuple(sorted({cap for caps in self.file_capabilities.values() for cap in caps}))


FACTS = tuple(f.name for f in fields(ImageFacts) if f.name not in ("image", "sources", "read_for", "read_on"))


def _sources(default: Source, **specific: Source) -> dict[str, Source]:
    """`default` for every fact, `specific` where another file says it."""
    unknown = set(specific) - set(FACTS)
    if unknown:
        raise ValueError(f"sources for unknown facts: {sorted(unknown)}")
    return {name: specific.get(name, default) for name in FACTS}


def image_schema_version(image: str) -> int | None:
    """The database schema version a Synapse image writes, when the table has it for exactly that
    tag (an overridden tag's release may write another)."""
    facts = _BY_REPOSITORY.get(repository(image))
    return facts.schema_version if facts is not None and facts.image == image else None


def repository(image: str) -> str:
    """The image reference without its tag or digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


# ---------------------------------------------------------------- the table

_SYNAPSE_TREE = "a58ad44eb0"
_SYNAPSE_NOTE = "main after v1.157.1; no later tag in the reachable snapshot, docker/ unchanged in kind"
_SYNAPSE_DOCKERFILE = Source("element-hq/synapse", "docker/Dockerfile", _SYNAPSE_TREE, _SYNAPSE_NOTE)
_SYNAPSE_START = Source("element-hq/synapse", "docker/start.py", _SYNAPSE_TREE, _SYNAPSE_NOTE)
_SYNAPSE_SCHEMA = Source("element-hq/synapse", "synapse/storage/schema/__init__.py", f"v{SYNAPSE_VERSION}",
                         "read in the matrix-synapse 1.163.2 wheel on PyPI, the release the image installs "
                         "(SCHEMA_VERSION = 94, SCHEMA_COMPAT_VERSION = 84); the test suite holds it to that wheel")

_SYNAPSE_RUNTIME = Source("element-hq/synapse", "docker/Dockerfile", "03ba104f8d",
                          "the stored version; stage 3 (runtime) FROM python:${PYTHON_VERSION}-slim, COPY --from=builder "
                          "/install /usr/local (Synapse in the image's own Python, whose pip the derived image calls), "
                          "no USER line, ENTRYPOINT /start.py, HEALTHCHECK curl")
_S3_PROVIDER_SETUP = Source("pypi/synapse-s3-storage-provider", "synapse_s3_storage_provider-1.7.0.dist-info/RECORD",
                            "1.7.0", "the PyPI wheel: ../../../bin/s3_media_upload (beside the Python pip runs, "
                            "/usr/local/bin) and the module s3_storage_provider; Requires-Dist boto3, psycopg2, "
                            "Twisted (METADATA)")

_POSTGRES_DOCKERFILE = Source("docker-library/repo-info", "repos/postgres/remote/16.15-alpine.md", "14ad5cc17d",
                              "the published image's build history (alpine 3.24): PG_VERSION=16.15, "
                              "addgroup -g 70 / adduser -u 70 postgres, gosu 1.19 with su-exec linked to it, "
                              "make install-world-bin, ENTRYPOINT docker-entrypoint.sh, EXPOSE 5432")
_POSTGRES_ENTRYPOINT = Source("docker-library/repo-info", "repos/postgres/remote/16.15-alpine.md", "14ad5cc17d",
                              "COPY docker-entrypoint.sh docker-ensure-initdb.sh; the script itself, unchanged in "
                              "kind (chown PGDATA, then gosu postgres), read at 1cb68aee8f "
                              "(docker-library/postgres 16/alpine3.22)")

# valkey-container keeps one directory per version line and tags no releases: the commit is the one
# whose 8.1/alpine/Dockerfile builds 8.1.8 (the image valkey/valkey:8.1.8-alpine).
_REDIS_IMAGE = Source("valkey-io/valkey-container", "8.1/alpine/Dockerfile", "00a2b21188",
                      "VALKEY_VERSION 8.1.8 on alpine:3.23: addgroup -S -g 1000 valkey; adduser -S -G valkey "
                      "-u 999 valkey; apk add setpriv; ENTRYPOINT docker-entrypoint.sh; EXPOSE 6379; "
                      "valkey-server and valkey-cli in /usr/local/bin")
_REDIS_ENTRYPOINT = Source("valkey-io/valkey-container", "docker-entrypoint.sh", "2a80026d51",
                           "the template copied into every version directory: as root, chown the WORKDIR to "
                           "valkey and exec setpriv --reuid=valkey --regid=valkey --clear-groups")

# docker-nginx's snapshot here ends at 1.29.8; 1.31.6 is read from the published image's build
# history, which holds both Dockerfiles (alpine-slim's steps, then alpine's).
_NGINX_DOCKERFILE = Source("docker-library/repo-info", "repos/nginx/remote/1.31-alpine.md", "073c780cc1",
                           "nginx:1.31-alpine = 1.31.6 (ENV NGINX_VERSION=1.31.6, alpine 3.24): addgroup -g 101 / "
                           "adduser -u 101 nginx; ENTRYPOINT /docker-entrypoint.sh; EXPOSE 80")
_NGINX_ALPINE = Source("docker-library/repo-info", "repos/nginx/remote/1.31-alpine.md", "073c780cc1",
                       "the alpine variant's last step: apk add --no-cache curl ca-certificates")

_ELEMENT_CALL_DOCKERFILE = Source("element-hq/element-call", "Dockerfile", "v0.24.0")
_NGINX_UNPRIVILEGED = Source("nginx/docker-nginx-unprivileged", "mainline/alpine-slim/Dockerfile", "e26803b",
                             "the base element-call v0.24.0 names (nginxinc/nginx-unprivileged:alpine-slim)")

_JWT_TAG_NOTE = ("v0.6.0 is not in the reachable snapshot; its image tag is the git tag without 'v' "
                 "(.github/workflows/release.yaml)")
_JWT_DOCKERFILE = Source("element-hq/lk-jwt-service", "Dockerfile", "v0.5.0", _JWT_TAG_NOTE)
_JWT_HEALTHCHECK = Source(
    "element-hq/lk-jwt-service", "Dockerfile", "1f300a0",
    "the health-check binary arrived after v0.5.0 (absent there); the v0.6.0 tag could not be read, so "
    "whether 0.6.0 ships it is unconfirmed and no Docker check relies on it")
_JWT_CONFIG = Source("element-hq/lk-jwt-service", "config.go", "a375b13", "main of 2026-07-23; " + _JWT_TAG_NOTE)
_JWT_HANDLER = Source("element-hq/lk-jwt-service", "main.go", "v0.5.0", "/healthz")

_LIVEKIT_DOCKERFILE = Source("livekit/livekit", "Dockerfile", "v1.13.5")
_LIVEKIT_SERVER = Source("livekit/livekit", "pkg/service/server.go", "v1.13.5", "mux.HandleFunc(\"/\")")

_LIVEKIT_METRICS = Source("livekit/livekit", "pkg/config/config.go", "v1.13.5",
                          "the Go module at the tag (GOMODCACHE): PrometheusConfig.Port (yaml prometheus.port); "
                          "prometheus_port deprecated (pkg/service/server.go warns and copies it); the listener "
                          "binds every bind_addresses entry; names in pkg/telemetry/prometheus (namespace livekit)")

_NTFY_NOTE = "v2.14.0 is not in the reachable snapshot; the Dockerfile is unchanged since 2024-03-07 (8c69234e)"
_NTFY_DOCKERFILE = Source("binwiederhier/ntfy", "Dockerfile", "v2.13.0", _NTFY_NOTE)
_NTFY_SERVER = Source("binwiederhier/ntfy", "server/server.go", "v2.13.0", "apiHealthPath")
_NTFY_CONFIG = Source("binwiederhier/ntfy", "cmd/serve.go", "v2.13.0", "defaultServerConfigFile")
_NTFY_PORT = Source("binwiederhier/ntfy", "server/config.go", "v2.13.0", "DefaultListenHTTP")

_NTFY_METRICS = Source("binwiederhier/ntfy", "cmd/serve.go", "v2.13.0",
                       _NTFY_NOTE + ": enable-metrics and metrics-listen-http (an [ip]:port that implies "
                       "enable-metrics, docs/config.md 'Monitoring'); server/server.go serves /metrics on that "
                       "listener instead of the public one; names in server/server_metrics.go")

_ELEMENT_WEB_DOCKERFILE = Source("element-hq/element-web", "Dockerfile", "036353ace1",
                                 "v1.12.26 is not in the reachable snapshot (the repository is too large to "
                                 "fetch); read from the stored file")

_COTURN_DOCKERFILE = Source("coturn/coturn", "docker/coturn/debian/Dockerfile", "docker/4.17.0-r0",
                            "the image tag 4.17.0 is 4.17.0-r0 on debian trixie-slim (docker/coturn/README.md at "
                            "that tag); 4.17.1 has a git tag but no image tag in the snapshot")

_COTURN_METRICS = Source("coturn/coturn", "docker/coturn/debian/Dockerfile", "docker/4.17.0-r0",
                         "the build stage installs libmicrohttpd-dev and the runtime libmicrohttpd12t64; configure "
                         "at 4.17.0 then builds the vendored Prometheus client (src/prometheus) instead of "
                         "setting TURN_NO_PROMETHEUS; --prometheus and --prometheus-port (default 9641, path "
                         "/metrics) in src/apps/relay/mainrelay.c, names in src/apps/relay/prom_server.c. Debian "
                         "bookworm's coturn 4.6.1 (scripts/test) is built without it: no --prometheus in "
                         "turnserver --help, and it logs 'Bad configuration format: prometheus' and runs on")

_POSTGRES_FILE_ENV = Source("docker-library/postgres", "16/alpine3.22/docker-entrypoint.sh", "1cb68aee8f",
                            "file_env 'POSTGRES_PASSWORD': POSTGRES_PASSWORD_FILE's content, read when the "
                            "cluster is created; libpq (psql) reads PGPASSFILE, ignored unless u=rw or less")
_PGBOUNCER_DOCKERFILE = Source("edoburu/docker-pgbouncer", "Dockerfile", "v1.25.2-p0",
                               "pgbouncer 1.25.2 built into /usr/bin on alpine:3.23 with busybox, libevent and "
                               "postgresql-client; USER postgres, ENTRYPOINT /entrypoint.sh, EXPOSE 5432")
_PGBOUNCER_USER = Source("docker-library/postgres", "16/alpine3.23/Dockerfile", "6edb0a8c4d",
                         "USER postgres is Alpine's postgres account, which postgresql-client's "
                         "postgresql-common creates: '70 is the standard uid/gid for \"postgres\" in Alpine'")
_PGBOUNCER_ENTRYPOINT = Source("edoburu/docker-pgbouncer", "entrypoint.sh", "v1.25.2-p0",
                               "writes pgbouncer.ini and the userlist from environment variables only when "
                               "/etc/pgbouncer/pgbouncer.ini is missing, then exec \"$@\"; pgbouncer itself "
                               "reads auth_file (the pooler starts /usr/bin/pgbouncer directly)")
_SYNAPSE_DATABASE = Source("element-hq/synapse", "synapse/config/database.py", _SYNAPSE_TREE,
                           "database.args go to psycopg2 as they are: no password-file key; "
                           "--no-secrets-in-config does not cover them (config/_base.py, allow_secrets_in_config)")
_JWT_SECRET_FILE = Source("element-hq/lk-jwt-service", "main.go", "v0.5.0",
                          "readKeySecret: LIVEKIT_SECRET_FROM_FILE (and LIVEKIT_KEY_FROM_FILE); still in config.go "
                          "at a375b13 (after 0.6.0), so 0.6.0 reads it too")
_NTFY_AUTH_USERS = Source("binwiederhier/ntfy", "cmd/serve.go", "05c56f00",
                          "auth-users is an altsrc flag (config file, flag or NTFY_AUTH_USERS) with no file variant; "
                          "the snapshot ends before v2.14.0 (the provisioned-users branch, c0b5151b), so the "
                          "config file carries it")
_MAS_METRICS = Source("element-hq/matrix-authentication-service", "crates/config/src/sections/telemetry.rs",
                      "v1.22.0", "telemetry.metrics.exporter: prometheus, served by an HTTP listener with the "
                      "prometheus resource (crates/config/src/sections/http.rs); requests recorded as "
                      "http.server.duration (crates/cli/src/server.rs)")
_MAS_PASSWORD_FILE = Source("element-hq/matrix-authentication-service", "crates/config/src/sections/database.rs",
                            "v1.22.0", "password_file; syn2mas reads database.args.password from the Synapse config "
                            "it is given (crates/syn2mas/src/synapse_reader/config/mod.rs)")

_CERTBOT_DOCKERFILE = Source("certbot/certbot", "tools/docker/Dockerfile", "v4.1.1",
                             "FROM python:3.12-alpine3.20, no USER; VOLUME /etc/letsencrypt /var/lib/letsencrypt "
                             "(Docker gives each an anonymous volume unless mounted)")
_CERTBOT_STATE_DIRS = Source("certbot/certbot", "certbot/src/certbot/_internal/constants.py", "v4.1.1",
                             "CLI_DEFAULTS config_dir, work_dir, logs_dir (misc.get_default_folder) and "
                             "strict_permissions=False: _internal/main.py make_or_verify_needed_dirs and log.py "
                             "accept directories they can write whoever made them; log.py also logs to "
                             "tempfile.mkdtemp() before the flags are read; plugins/webroot.py writes the "
                             "challenge under umask 0o022, 0o644, 'so the client can also run as non-root'")

_RESTIC_DOCKERFILE = Source("restic/restic", "docker/Dockerfile.release", "v0.19.1",
                            "the Dockerfile the release publishes as restic/restic:0.19.1 "
                            "(helpers/prepare-release/main.go, updateDocker)")
_RESTIC_ENTRYPOINT = Source("restic/restic", "docker/entrypoint.sh", "v0.19.1")
_RESTIC_USERS = Source("alpinelinux/aports", "main/alpine-baselayout/passwd", "770d8ce7c6",
                       "the /etc/passwd of the alpine base the Dockerfile names: nobody:x:65534:65534")
_RESTIC_TOOLS = Source("alpinelinux/aports", "main/busybox/busyboxconfig", "f246c3719d",
                       "the BusyBox of the alpine base the Dockerfile names: CONFIG_CROND=y, FEATURE_CROND_D=y "
                       "(crond -d); restic, ssh (openssh-client) and jq from docker/Dockerfile.release at v0.19.1")

_MAS_TAG = "v1.22.0"  # git tag f28451c4e5; the image tag is the version without 'v' (build.yaml, type=semver)
_MAS_DOCKERFILE = Source("element-hq/matrix-authentication-service", "Dockerfile", _MAS_TAG)
_MAS_NONROOT = Source("GoogleContainerTools/distroless", "common/variables.bzl", "2bbbfedeee",
                      "NONROOT = 65532: the user of the distroless :nonroot base the Dockerfile names")
_MAS_HTTP = Source("element-hq/matrix-authentication-service", "crates/config/src/sections/http.rs", _MAS_TAG,
                   "HttpConfig::default: web on [::]:8080, health on a second listener (8081)")
_MAS_HEALTH = Source("element-hq/matrix-authentication-service", "crates/router/src/endpoints.rs", _MAS_TAG,
                     "Healthcheck::PATH")
_MAS_CONFIG = Source("element-hq/matrix-authentication-service", "crates/cli/src/commands/mod.rs", _MAS_TAG,
                     "MAS_CONFIG, else config.yaml in the WORKDIR /")

_PROMETHEUS_DOCKERFILE = Source("prometheus/prometheus", "Dockerfile", "v2.42.0")
_PROMETHEUS_HEALTH = Source("prometheus/prometheus", "web/web.go", "v2.42.0", "router.Get(\"/-/healthy\")")
_ALERTMANAGER_DOCKERFILE = Source("prometheus/alertmanager", "Dockerfile", "v0.25.0")
_ALERTMANAGER_HEALTH = Source("prometheus/alertmanager", "ui/web.go", "v0.25.0", "r.Get(\"/-/healthy\")")
_GRAFANA_NOTE = ("grafana/grafana is too large to fetch here (3.2 GB) and its stored files carry no tag: read in "
                 "the stored 11.x packaging (alpine base, glibc 2.40, the v11 run.sh with GF_PLUGINS_PREINSTALL)")
_GRAFANA_DOCKERFILE = Source("grafana/grafana", "Dockerfile", "11.x", _GRAFANA_NOTE + ": ARG GF_UID=472 GF_GID=0; "
                             "ENV GF_PATHS_CONFIG=/etc/grafana/grafana.ini, GF_PATHS_DATA=/var/lib/grafana, "
                             "GF_PATHS_PLUGINS=/var/lib/grafana/plugins, GF_PATHS_LOGS=/var/log/grafana, "
                             "GF_PATHS_PROVISIONING=/etc/grafana/provisioning; apk add bash curl; EXPOSE 3000; "
                             "USER $GF_UID; ENTRYPOINT /run.sh")
_GRAFANA_RUN = Source("grafana/grafana", "packaging/docker/run.sh", "07754534fb",
                      _GRAFANA_NOTE + ": mkdir $GF_PATHS_PLUGINS when absent; exec grafana server --config "
                      "$GF_PATHS_CONFIG with paths.data/logs/plugins/provisioning from GF_PATHS_*")
_GRAFANA_SECRETS = Source("grafana/grafana", "docs/sources/setup-grafana/configure-grafana/_index.md", "11.x",
                          "variable expansion: $__file{path} in grafana.ini reads the file (Grafana 7.1 and later); "
                          "run.sh's GF_*__FILE would export the secret into the environment, so it is not used")
_GRAFANA_HEALTH = Source("grafana/grafana", "docs/sources/developers/http_api/other.md", "11.x",
                          "Health API: GET /api/health, unauthenticated (not located in the stored source)")
_NGINX_EXPORTER_DOCKERFILE = Source("nginx/nginx-prometheus-exporter", "build/Dockerfile", "v0.11.0",
                                    "the image tag is the version without 'v'")
_NGINX_EXPORTER_PORT = Source("nginx/nginx-prometheus-exporter", "exporter.go", "v0.11.0",
                              "web.listen-address default :9113")
_NODE_EXPORTER_DOCKERFILE = Source("prometheus/node_exporter", "Dockerfile", "v1.5.0")
_BLACKBOX_EXPORTER_DOCKERFILE = Source("prometheus/blackbox_exporter", "Dockerfile", "v0.23.0")
_BLACKBOX_EXPORTER_HEALTH = Source("prometheus/blackbox_exporter", "main.go", "v0.23.0",
                                   "http.HandleFunc(path.Join(*routePrefix, \"/-/healthy\")")
_PUSHGATEWAY_DOCKERFILE = Source("prometheus/pushgateway", "Dockerfile", "v1.5.1")
_PUSHGATEWAY_HEALTH = Source("prometheus/pushgateway", "main.go", "v1.5.1",
                             "r.Get(*routePrefix+\"/-/healthy\"); --persistence.file keeps pushed series")
_POSTGRES_EXPORTER_DOCKERFILE = Source("prometheus-community/postgres_exporter", "Dockerfile", "v0.11.1")
_REDIS_EXPORTER_DOCKERFILE = Source("oliver006/redis_exporter", "docker/Dockerfile", "v1.45.0",
                                    "the default (scratch) stage; the alpine variant has its own tag suffix")

IMAGE_FACTS: tuple[ImageFacts, ...] = (
    ImageFacts(
        image=SYNAPSE,
        read_for="v1.163.2",
        read_on="2026-12-01",
        sources=_sources(_SYNAPSE_DOCKERFILE, user=_SYNAPSE_START, steps_down=_SYNAPSE_START,
                         config_path=_SYNAPSE_START, schema_version=_SYNAPSE_SCHEMA,
                         secret_file_options=_SYNAPSE_DATABASE),
        user="991:991",  # start.py: "if we are running as root, use user 991"
        steps_down=True,
        entrypoint=("/start.py",),
        shell=True,
        curl=True,  # runtime-deps install curl; the image's own HEALTHCHECK uses it
        tools=DEBIAN_SLIM | {"python"},
        port=8008,
        config_path="/data/homeserver.yaml",
        health_path="/health",
        schema_version=94,
        # *_path keys for its own secrets; the database password in a secret config file.
        secret_file_options=("--config-path", "signing_key_path", "macaroon_secret_key_path"),
    ),
    ImageFacts(
        image=POSTGRES,
        read_for="16.15-alpine",
        read_on="2026-12-06",
        sources=_sources(_POSTGRES_DOCKERFILE, steps_down=_POSTGRES_ENTRYPOINT,
                         secret_file_options=_POSTGRES_FILE_ENV),
        user="70:70",  # addgroup -g 70 / adduser -u 70 postgres
        steps_down=True,  # gosu (su-exec) after chowning PGDATA
        entrypoint=("docker-entrypoint.sh",),
        shell=True,
        wget=True,
        # make install-world-bin installs the client programs too; the BusyBox applets the
        # backup's dump script calls.
        tools=BUSYBOX | {"pg_isready", "psql", "postgres", "pg_dump", "pg_restore",
                         "cp", "chmod", "mv", "wc", "mkdir", "touch", "rm", "sleep"},
        port=5432,
        secret_file_options=("POSTGRES_PASSWORD_FILE", "PGPASSFILE"),
    ),
    ImageFacts(
        image=PGBOUNCER,
        read_for="v1.25.2-p0",
        read_on="2026-12-07",
        sources=_sources(_PGBOUNCER_DOCKERFILE, user=_PGBOUNCER_USER, secret_file_options=_PGBOUNCER_ENTRYPOINT,
                         config_path=_PGBOUNCER_ENTRYPOINT),
        user="70:70",  # USER postgres, Alpine's postgres account
        entrypoint=("/entrypoint.sh",),
        shell=True,
        wget=True,
        # postgresql-client: pg_isready and psql.
        tools=BUSYBOX | {"pgbouncer", "pg_isready", "psql"},
        port=5432,
        config_path="/etc/pgbouncer/pgbouncer.ini",
        secret_file_options=("auth_file",),
    ),
    ImageFacts(
        image=REDIS,
        read_for="8.1.8-alpine",
        read_on="2026-12-06",
        sources=_sources(_REDIS_IMAGE, steps_down=_REDIS_ENTRYPOINT, writable_workdir=_REDIS_ENTRYPOINT),
        user="999:1000",  # alpine already has a gid 999, so the valkey group is 1000
        steps_down=True,  # setpriv, after chowning /data
        entrypoint=("docker-entrypoint.sh",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"valkey-cli", "valkey-server"},
        port=6379,
        # Not root: `[ ! -w . ]` exits "directory is not writable by current user" (WORKDIR /data).
        writable_workdir="/data",
    ),
    ImageFacts(
        image=NGINX,
        read_for="1.31.6-alpine",
        read_on="2026-12-06",
        sources=_sources(_NGINX_DOCKERFILE, curl=_NGINX_ALPINE),
        user="101:101",  # addgroup -g 101 / adduser -u 101 nginx
        entrypoint=("/docker-entrypoint.sh",),
        shell=True,
        wget=True,
        curl=True,  # the alpine (not slim) variant adds curl
        tools=BUSYBOX | {"nginx"},
        port=80,
        config_path="/etc/nginx/nginx.conf",
    ),
    ImageFacts(
        image=ELEMENT_CALL,
        read_for="v0.24.0",
        read_on="2026-12-01",
        sources=_sources(_NGINX_UNPRIVILEGED, config_path=_ELEMENT_CALL_DOCKERFILE,
                         health_path=_ELEMENT_CALL_DOCKERFILE),
        user="101:101",  # nginx-unprivileged: USER $UID (101)
        entrypoint=("/docker-entrypoint.sh",),
        shell=True,
        wget=True,
        tools=BUSYBOX,
        port=8080,
        config_path="/app/config.json",  # COPY ./dist /app; nginx root /app
        health_path="/config.json",
    ),
    ImageFacts(
        image=LK_JWT_SERVICE,
        read_for="0.6.0",
        read_on="2026-12-01",
        sources=_sources(_JWT_DOCKERFILE, healthcheck_binary=_JWT_HEALTHCHECK, health_path=_JWT_HANDLER,
                         config_path=_JWT_CONFIG, secret_file_options=_JWT_SECRET_FILE),
        user=None,  # FROM scratch, no USER
        entrypoint=(),  # CMD ["/lk-jwt-service"], no ENTRYPOINT
        port=8080,  # EXPOSE 8080; LIVEKIT_JWT_BIND defaults to :8080
        config_path=None,  # environment only
        health_path="/healthz",
        healthcheck_binary=None,
        secret_file_options=("LIVEKIT_SECRET_FROM_FILE",),
    ),
    ImageFacts(
        image=LIVEKIT,
        read_for="v1.13.5",
        read_on="2026-12-01",
        sources=_sources(_LIVEKIT_DOCKERFILE, health_path=_LIVEKIT_SERVER, port=_LIVEKIT_SERVER,
                         prometheus=_LIVEKIT_METRICS),
        user=None,  # FROM alpine, no USER
        entrypoint=("/livekit-server",),
        shell=True,
        wget=True,
        tools=BUSYBOX,
        port=7880,
        health_path="/",
        prometheus="livekit.yaml prometheus.port",
    ),
    ImageFacts(
        image=NTFY,
        read_for="v2.14.0",
        read_on="2026-12-01",
        sources=_sources(_NTFY_DOCKERFILE, health_path=_NTFY_SERVER, config_path=_NTFY_CONFIG, port=_NTFY_PORT,
                         secret_file_options=_NTFY_AUTH_USERS, prometheus=_NTFY_METRICS),
        user=None,  # FROM alpine, no USER (a non-root user was added and reverted upstream)
        entrypoint=("ntfy",),
        shell=True,
        wget=True,
        tools=BUSYBOX,
        port=80,
        config_path="/etc/ntfy/server.yml",
        health_path="/v1/health",
        secret_file_options=("--config",),  # auth-users inside the (secret) config file
        prometheus="server.yml metrics-listen-http",
    ),
    ImageFacts(
        image=ELEMENT_WEB,
        read_for="v1.12.26",
        read_on="2026-12-01",
        sources=_sources(_ELEMENT_WEB_DOCKERFILE),
        user="101:101",  # USER nginx on nginx:alpine-slim (uid 101)
        entrypoint=("/docker-entrypoint.sh",),
        shell=True,
        wget=True,
        tools=BUSYBOX,
        port=80,  # ENV ELEMENT_WEB_PORT=80; the service sets it
        config_path="/app/config.json",
        health_path="/config.json",
    ),
    ImageFacts(
        image=COTURN,
        read_for="4.17.0",
        read_on="2026-12-06",
        sources=_sources(_COTURN_DOCKERFILE, prometheus=_COTURN_METRICS),
        user="65534:65534",  # USER nobody:nogroup
        entrypoint=("docker-entrypoint.sh",),
        shell=True,  # debian slim: dash
        tools=DEBIAN_SLIM | {"turnserver"},
        file_capabilities={"/usr/bin/turnserver": ("NET_BIND_SERVICE",)},  # setcap CAP_NET_BIND_SERVICE=+ep
        port=3478,
        config_path="/etc/coturn/turnserver.conf",
        prometheus="turnserver.conf prometheus, prometheus-port (built with libmicrohttpd)",
    ),
    ImageFacts(
        image=CERTBOT,
        read_for="v4.1.1",
        read_on="2026-12-07",
        sources=_sources(_CERTBOT_DOCKERFILE, state_dirs=_CERTBOT_STATE_DIRS),
        user=None,  # FROM python:3.12-alpine3.20, no USER
        state_dirs={"--config-dir": "/etc/letsencrypt", "--work-dir": "/var/lib/letsencrypt",
                    "--logs-dir": "/var/log/letsencrypt"},
        entrypoint=("certbot",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"certbot", "python3", "openssl", "chown", "chmod", "cp", "mv", "mkdir", "sleep"},
        port=80,
    ),
    ImageFacts(
        image=RESTIC,
        read_for="0.19.1",
        read_on="2026-12-01",
        sources=_sources(_RESTIC_DOCKERFILE, entrypoint=_RESTIC_ENTRYPOINT, tools=_RESTIC_TOOLS,
                         user_names=_RESTIC_USERS),
        user=None,  # FROM alpine:latest, no USER
        user_names={"65534:65534": "nobody"},
        # /entrypoint.sh runs `nice -n $NICE /usr/bin/restic "$@"` (ionice when IONICE_CLASS is set).
        entrypoint=("/entrypoint.sh",),
        shell=True,
        wget=True,
        # apk add ca-certificates fuse openssh-client tzdata jq; BusyBox's crond runs the
        # scheduled backups on Docker hosts.
        tools=BUSYBOX | {"restic", "ssh", "jq", "crond", "nice", "cp", "chmod", "touch", "rm", "mkdir", "sleep"},
    ),
    ImageFacts(
        image=MAS,
        read_for="1.22.0",
        read_on="2026-12-01",
        sources=_sources(_MAS_DOCKERFILE, user=_MAS_NONROOT, port=_MAS_HTTP, health_path=_MAS_HEALTH,
                         config_path=_MAS_CONFIG, secret_file_options=_MAS_PASSWORD_FILE,
                         prometheus=_MAS_METRICS),
        user="65532:65532",  # FROM gcr.io/distroless/cc-debian13:nonroot, no USER of its own
        entrypoint=("/usr/local/bin/mas-cli",),
        # distroless (not its :debug variant): no shell, no wget or curl, no health-check program
        tools=frozenset({"mas-cli"}),
        port=8080,
        config_path="/config.yaml",
        health_path="/health",
        secret_file_options=("database.password_file", "secrets.encryption_file", "matrix.secret_file"),
        prometheus="config.yaml telemetry.metrics.exporter prometheus, a listener resource prometheus",
    ),
    ImageFacts(
        image=PROMETHEUS,
        read_for="v2.42.0",
        read_on="2026-12-06",
        sources=_sources(_PROMETHEUS_DOCKERFILE, health_path=_PROMETHEUS_HEALTH),
        user="65534:65534",  # USER nobody on quay.io/prometheus/busybox
        entrypoint=("/bin/prometheus",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"prometheus", "promtool"},
        port=9090,
        config_path="/etc/prometheus/prometheus.yml",
        health_path="/-/healthy",
    ),
    ImageFacts(
        image=ALERTMANAGER,
        read_for="v0.25.0",
        read_on="2026-12-06",
        sources=_sources(_ALERTMANAGER_DOCKERFILE, health_path=_ALERTMANAGER_HEALTH),
        user="65534:65534",  # USER nobody on quay.io/prometheus/busybox
        entrypoint=("/bin/alertmanager",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"alertmanager", "amtool"},
        port=9093,
        config_path="/etc/alertmanager/alertmanager.yml",
        health_path="/-/healthy",
    ),
    ImageFacts(
        image=NGINX_EXPORTER,
        read_for="0.11.0",
        read_on="2026-12-06",
        sources=_sources(_NGINX_EXPORTER_DOCKERFILE, port=_NGINX_EXPORTER_PORT),
        user="1001:1001",  # FROM scratch, USER 1001:1001
        entrypoint=("/usr/bin/nginx-prometheus-exporter",),
        tools=frozenset({"nginx-prometheus-exporter"}),
        port=9113,
    ),
    ImageFacts(
        image=POSTGRES_EXPORTER,
        read_for="v0.11.1",
        read_on="2026-12-06",
        sources=_sources(_POSTGRES_EXPORTER_DOCKERFILE),
        user="65534:65534",  # USER nobody on quay.io/prometheus/busybox
        entrypoint=("/bin/postgres_exporter",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"postgres_exporter"},
        port=9187,
    ),
    ImageFacts(
        image=NODE_EXPORTER,
        read_for="v1.5.0",
        read_on="2026-12-07",
        sources=_sources(_NODE_EXPORTER_DOCKERFILE),
        user="65534:65534",  # USER nobody on quay.io/prometheus/busybox
        entrypoint=("/bin/node_exporter",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"node_exporter"},
        port=9100,
        health_path="/metrics",  # no /-/healthy at v1.5.0: its metrics page answers while it runs
    ),
    ImageFacts(
        image=BLACKBOX_EXPORTER,
        read_for="v0.23.0",
        read_on="2026-12-07",
        sources=_sources(_BLACKBOX_EXPORTER_DOCKERFILE, health_path=_BLACKBOX_EXPORTER_HEALTH),
        user=None,  # FROM quay.io/prometheus/busybox, no USER at v0.23.0 (added in later releases)
        entrypoint=("/bin/blackbox_exporter",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"blackbox_exporter"},
        port=9115,
        config_path="/etc/blackbox_exporter/config.yml",  # CMD --config.file=
        health_path="/-/healthy",
    ),
    ImageFacts(
        image=PUSHGATEWAY,
        read_for="v1.5.1",
        read_on="2026-12-07",
        sources=_sources(_PUSHGATEWAY_DOCKERFILE, health_path=_PUSHGATEWAY_HEALTH),
        user="65534:65534",  # USER 65534; WORKDIR /pushgateway owned by nobody
        entrypoint=("/bin/pushgateway",),
        shell=True,
        wget=True,
        tools=BUSYBOX | {"pushgateway"},
        port=9091,
        health_path="/-/healthy",
    ),
    ImageFacts(
        image=REDIS_EXPORTER,
        read_for="v1.45.0",
        read_on="2026-12-06",
        sources=_sources(_REDIS_EXPORTER_DOCKERFILE),
        user="59000:59000",  # FROM scratch, USER 59000:59000
        entrypoint=("/redis_exporter",),
        tools=frozenset({"redis_exporter"}),
        port=9121,
    ),
    ImageFacts(
        image=GRAFANA,
        read_for="11.6.0",
        read_on="2026-12-07",
        sources=_sources(_GRAFANA_DOCKERFILE, entrypoint=_GRAFANA_RUN, health_path=_GRAFANA_HEALTH,
                         secret_file_options=_GRAFANA_SECRETS),
        user="472:0",  # USER $GF_UID (472), group GF_GID 0
        entrypoint=("/run.sh",),
        shell=True,
        wget=True,
        curl=True,
        tools=BUSYBOX | {"bash", "grafana"},
        port=3000,
        config_path="/etc/grafana/grafana.ini",
        health_path="/api/health",
        secret_file_options=("$__file{path}",),
    ),
)



def synapse_s3_tag(synapse_image: str) -> str:
    """The derived image's tag: the Synapse image's own tag and the provider's version, so a bump
    of either is a new image."""
    tag = synapse_image.rsplit(":", 1)[-1] if ":" in synapse_image.rsplit("/", 1)[-1] else "unpinned"
    return f"{tag}-s3-{S3_STORAGE_PROVIDER_VERSION}"


def synapse_s3(synapse_image: str, registry: str | None = None) -> str:
    """The derived image's reference: local to a Docker host, or in the operator's registry."""
    repo = f"{registry.rstrip('/')}/synapse-s3" if registry else SYNAPSE_S3_REPOSITORY
    return f"{repo}:{synapse_s3_tag(synapse_image)}"


# The derived image keeps every fact of the official one (the recipe adds one pip install and
# changes no user, entrypoint or path) and adds the provider's command.
SYNAPSE_S3_FACTS = ImageFacts(
    image=synapse_s3(SYNAPSE),
    read_for=f"v{SYNAPSE_VERSION}-s3-{S3_STORAGE_PROVIDER_VERSION}",
    read_on="2026-12-06",
    sources=_sources(_SYNAPSE_RUNTIME, user=_SYNAPSE_START, steps_down=_SYNAPSE_START,
                     config_path=_SYNAPSE_START, tools=_S3_PROVIDER_SETUP),
    user=IMAGE_FACTS[0].user,
    steps_down=IMAGE_FACTS[0].steps_down,
    entrypoint=IMAGE_FACTS[0].entrypoint,
    shell=True,
    curl=True,
    tools=IMAGE_FACTS[0].tools | {"pip", "s3_media_upload"},
    port=IMAGE_FACTS[0].port,
    config_path=IMAGE_FACTS[0].config_path,
    health_path=IMAGE_FACTS[0].health_path,
)

_BY_REPOSITORY = {f.repository: f for f in IMAGE_FACTS}


def config_path(image: str) -> str:
    """Where `image` reads its config file."""
    path = facts_for(image).config_path
    if path is None:
        raise ValueError(f"{image}: no config path in its facts")
    return path


def facts_for(image: str) -> ImageFacts:
    """The facts of `image`'s repository (the pinned tag's, also for an overridden tag)."""
    repo = repository(image)
    if repo == SYNAPSE_S3_REPOSITORY or repo.endswith("/synapse-s3"):
        return SYNAPSE_S3_FACTS  # built here, or pushed to the operator's registry
    try:
        return _BY_REPOSITORY[repo]
    except KeyError:
        raise KeyError(f"no image facts for {image}: add them to config/images.py") from None
