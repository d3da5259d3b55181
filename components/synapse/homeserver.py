"""Synapse's files, rendered from the typed config and the worker table. Pure functions.

Every process loads the shared `homeserver.yaml`; a worker also loads its own file. Synapse
merges config files shallowly (a later file replaces a whole top-level key), so worker files
hold only `worker_*` keys plus the media override. No plain file here contains a secret: secrets
reach Synapse through `*_path` keys pointing at secret files, or, where Synapse has no such key
(its database password, SMTP's), in a config file of their own that is itself a secret file.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from typing import Any

from components import yaml_text
from components.network import PRIVATE_RANGES
from components.part import HOMESERVER_SECRETS_DIR, DatabaseServer
from config.model import ExternalDatabase, StackConfig

from .workers import GENERIC_APP, ROLES, STREAMS, Process, Role, Topology, counts_for

CONF_DIR = "/conf"
SECRETS_DIR = HOMESERVER_SECRETS_DIR
MEDIA_STORE = "/media_store"
DATA_DIR = "/data"

SHARED_CONFIG = f"{CONF_DIR}/homeserver.yaml"
LOG_CONFIG = f"{CONF_DIR}/log.yaml"
EMAIL_CONFIG = f"{SECRETS_DIR}/email.yaml"
# The `database` section with its password: Synapse reads its database password nowhere but
# database.args (psycopg2's connect arguments), so the whole section is a secret file of its own.
DATABASE_CONFIG = f"{SECRETS_DIR}/database.yaml"
MAIN_CONFIG = f"{CONF_DIR}/main.yaml"


def federation_ca_path(index: int) -> str:
    """Where each trusted federation CA file lands (one certificate per file, as Synapse reads it)."""
    return f"{CONF_DIR}/federation-ca-{index + 1}.pem"


def worker_config_path(process: Process) -> str:
    return f"{CONF_DIR}/workers/{process.name}.yaml"


# Every secret Synapse reads, by file name under SECRETS_DIR.
SECRET_FILES = {
    "signing_key": "signing.key",
    "macaroon": "macaroon_secret_key",
    "form": "form_secret",
    "registration": "registration_shared_secret",
    "replication": "worker_replication_secret",
    "redis": "redis_password",
    "ldap_bind": "ldap_bind_password",
}


# Media in a bucket: botocore reads the bucket's credentials and addressing style from these
# files (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE), in Synapse's storage provider and in
# s3_media_upload alike; homeserver.yaml names no secret.
S3_CREDENTIALS = f"{SECRETS_DIR}/s3_credentials"
S3_CONFIG = f"{CONF_DIR}/s3.ini"
S3_PROVIDER_MODULE = "s3_storage_provider.S3StorageProviderBackend"


def s3_environment() -> dict[str, str]:
    """Where botocore finds the bucket's credentials and settings (paths, never the values)."""
    return {"AWS_SHARED_CREDENTIALS_FILE": S3_CREDENTIALS, "AWS_CONFIG_FILE": S3_CONFIG}


def s3_config(cfg: StackConfig) -> str:
    """botocore's config file: the region and how the bucket is addressed (the provider has no
    setting for path-style addressing; botocore's own `s3.addressing_style` is it)."""
    media = cfg.synapse.media
    lines = ["[default]"]
    if media.region:
        lines.append(f"region = {media.region}")
    lines += ["s3 =", f"    addressing_style = {'path' if media.path_style else 'virtual'}", ""]
    return "\n".join(lines)


def s3_credentials(access_key_id: str, secret_access_key: str) -> str:
    """botocore's shared credentials file (INI: values are taken verbatim to the line's end)."""
    for value in (access_key_id, secret_access_key):
        if "\n" in value or "\r" in value:
            raise ValueError("an S3 credential must be one line")
    return f"[default]\naws_access_key_id = {access_key_id}\naws_secret_access_key = {secret_access_key}\n"


def media_storage_providers(cfg: StackConfig) -> list[dict[str, Any]]:
    """The bucket as Synapse's storage provider. Synchronous: an upload is acknowledged only once
    the bucket holds it, so an acknowledged upload survives the loss of any cache."""
    media = cfg.synapse.media
    if not media.s3:
        return []
    conf: dict[str, Any] = {"bucket": media.bucket, "endpoint_url": media.endpoint}
    if media.region:
        conf["region_name"] = media.region
    if media.prefix:
        conf["prefix"] = media.prefix
    return [{"module": S3_PROVIDER_MODULE, "store_local": True, "store_remote": True,
             "store_synchronous": True, "config": conf}]


def secret_path(name: str) -> str:
    return f"{SECRETS_DIR}/{SECRET_FILES[name]}"


REDIS_SERVICE = "synapse-redis"
REDIS_PORT = 6379
# Synapse's database and role on the bundled PostgreSQL (its owner: components/postgres).
DATABASE_NAME = "synapse"
DATABASE_USER = "synapse"
# The bundled server as a check renders the keys (the view names the real one).
_ANY_SERVER = DatabaseServer("database", 5432, "")


def topology(cfg: StackConfig) -> Topology:
    workers = cfg.synapse.workers
    return _topology(workers.preset, tuple(workers.counts.items()))


@functools.lru_cache(maxsize=64)
def _topology(preset: str, counts: tuple[tuple[str, int], ...]) -> Topology:
    # Asked for dozens of times per run (every file, route and check): one immutable Topology
    # per worker table, its process list built once.
    return Topology.of(counts_for(preset, dict(counts)))


def dump(data: dict[str, Any]) -> str:
    """YAML with stable key order: the order we build dicts in, never sorted by chance."""
    return yaml_text.dump(data, sort_keys=False, default_flow_style=False, width=1000)


def _listener(port: int, resources: tuple[str, ...], *, x_forwarded: bool = True) -> dict[str, Any]:
    return {
        "type": "http",
        "port": port,
        "bind_addresses": ["0.0.0.0"],
        "tls": False,
        "x_forwarded": x_forwarded,
        "resources": [{"names": list(resources), "compress": False}],
    }


def _metrics_listener(port: int) -> dict[str, Any]:
    return {"type": "metrics", "port": port, "bind_addresses": ["0.0.0.0"]}


def main_listeners(cfg: StackConfig, topo: Topology) -> list[dict[str, Any]]:
    names = ["client"]
    if cfg.synapse.federation.enabled:
        names.append("federation")
    elif cfg.element_call.enabled:
        names.append("openid")  # lk-jwt-service validates OpenID tokens here
    if not topo.has("media_repository"):
        names.append("media")
    listeners = [_listener(topo.processes[0].port, tuple(names))]
    if topo.workers:
        listeners.append(_listener(topo.processes[0].replication_port, ("replication",), x_forwarded=False))
    if cfg.synapse.metrics:
        listeners.append(_metrics_listener(topo.processes[0].metrics_port))
    return listeners


def worker_keys(cfg: StackConfig, topo: Topology, address: dict[str, str]) -> dict[str, Any]:
    """The shared keys that tell each process what every worker does (derived from the table)."""
    if not topo.workers:
        return {}
    keys: dict[str, Any] = {}
    instance_map: dict[str, Any] = {"main": {"host": address["synapse-main"], "port": topo.processes[0].replication_port}}
    for process in topo.workers:
        assert process.role is not None
        if process.role.writer:
            instance_map[process.name] = {"host": address[process.name], "port": process.replication_port}
    keys["instance_map"] = instance_map
    writers = {stream: [p.name for p in topo.writers(stream)] for stream in STREAMS}
    keys["stream_writers"] = {stream: names for stream, names in writers.items() if names}
    duty_roles: dict[str, Role] = {}
    for process in topo.workers:
        assert process.role is not None
        if process.role.duty:
            duty_roles[process.role.duty] = process.role
    for duty, role in duty_roles.items():
        names = [p.name for p in topo.instances(role.name)]
        keys[duty] = names if role.duty_kind == "list" else names[0]
    # Every process loads the media repository unless told not to (and creates the media store
    # path), so with workers it is off in the shared file and on only where the store is mounted:
    # the media workers' own files, or main's (MAIN_CONFIG) when there is no media worker.
    keys["enable_media_repo"] = False
    keys["worker_replication_secret_path"] = secret_path("replication")
    keys["redis"] = {
        "enabled": True,
        "host": address[REDIS_SERVICE],
        "port": REDIS_PORT,
        "password_path": secret_path("redis"),
    }
    return keys


def database_section(cfg: StackConfig, server: DatabaseServer | None, pooled: bool = True) -> dict[str, Any]:
    """Synapse's database: the external server, or the bundled one (`server`, from the view),
    through its transaction pooler when one runs (Synapse's processes; `pooled` False: a tool
    that keeps session state, such as prepared statements)."""
    db = cfg.synapse.database
    args: dict[str, Any]
    if isinstance(db, ExternalDatabase):
        args = {"user": db.user, "database": db.name, "host": db.host, "port": db.port, "sslmode": db.sslmode}
    else:
        assert server is not None
        host, port = server.address(pooled)
        args = {"user": DATABASE_USER, "database": DATABASE_NAME, "host": host, "port": port}
    # The password is added only in the secret file (database_config). Pools stay small per
    # process: they multiply by the process count.
    args.update({"cp_min": 1, "cp_max": db.cp_max, "keepalives_idle": 10, "keepalives_interval": 10,
                 "keepalives_count": 3})
    return {"name": "psycopg2", "allow_unsafe_locale": False, "args": args}


def tool_config(cfg: StackConfig) -> Callable[[DatabaseServer | None], dict[str, Any]]:
    """Synapse's settings as tools that read its database read them (MAS's syn2mas), from the
    same functions as homeserver.yaml."""

    def render(server: DatabaseServer | None) -> dict[str, Any]:
        conf: dict[str, Any] = {"server_name": cfg.server_name, "public_baseurl": cfg.url("matrix") + "/",
                                # syn2mas (sqlx) prepares statements: the server itself.
                                "database": database_section(cfg, server, pooled=False)}
        conf.update({k: v for k, v in registration_keys(cfg).items() if not k.endswith("_path")})
        return conf

    return render


def registration_keys(cfg: StackConfig) -> dict[str, Any]:
    mode = cfg.synapse.registration.mode
    if cfg.mas.owns_logins:
        # MAS enforces the registration policy (components/mas/render.py); Synapse refuses its own
        # registration and password login beside matrix_authentication_service.
        return {"enable_registration": False, "password_config": {"enabled": False},
                "registration_shared_secret_path": secret_path("registration")}
    keys: dict[str, Any] = {"enable_registration": mode != "closed"}
    if mode == "token":
        keys["registration_requires_token"] = True
    if mode == "email":
        keys["registrations_require_3pid"] = ["email"]
    keys["registration_shared_secret_path"] = secret_path("registration")
    return keys


_RATE_LIMIT_KEYS: dict[str, str | tuple[str, str]] = {
    "message": "rc_message",
    "registration": "rc_registration",
    "login_address": ("rc_login", "address"),
    "login_account": ("rc_login", "account"),
    "login_failed_attempts": ("rc_login", "failed_attempts"),
    "joins_local": ("rc_joins", "local"),
    "joins_remote": ("rc_joins", "remote"),
    "invites_per_user": ("rc_invites", "per_user"),
}


def rate_limit_keys(cfg: StackConfig) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    limits = cfg.synapse.rate_limits
    for field, key in _RATE_LIMIT_KEYS.items():
        value = getattr(limits, field)
        if value is None:
            continue
        body = {"per_second": value.per_second, "burst_count": value.burst_count}
        if isinstance(key, tuple):
            section, sub = key
            keys.setdefault(section, {})[sub] = body
        else:
            keys[key] = body
    if limits.federation_window_size:
        keys["rc_federation"] = {"window_size": limits.federation_window_size}
    return keys


def ldap_module(cfg: StackConfig) -> list[dict[str, Any]]:
    ldap = cfg.synapse.ldap
    if ldap is None:
        return []
    conf: dict[str, Any] = {
        "enabled": True,
        "uri": ldap.uri,
        "start_tls": ldap.start_tls,
        "base": ldap.base,
        "attributes": {"uid": ldap.uid_attribute, "mail": ldap.mail_attribute, "name": ldap.name_attribute},
    }
    if ldap.bind_dn:
        conf["bind_dn"] = ldap.bind_dn
        conf["bind_password_file"] = secret_path("ldap_bind")
    return [{"module": "ldap_auth_provider.LdapAuthProviderModule", "config": conf}]


# Keys the stack manages: extra_config may not set them (they must agree across processes and
# with the worker table, the proxy and the secrets).
def managed_keys(cfg: StackConfig, contributions: dict[str, Any] | None = None) -> set[str]:
    address = {name: name for name in _all_names(cfg)}
    return set(shared_config(cfg, address, contributions or {}, server=_ANY_SERVER, with_extra=False)) | {"database"}


def database_config(cfg: StackConfig, server: DatabaseServer | None, password: str) -> str:
    """DATABASE_CONFIG: the `database` section with its password (a secret file)."""
    section = database_section(cfg, server)
    section["args"]["password"] = password
    return dump({"database": section})


def _all_names(cfg: StackConfig) -> list[str]:
    return [p.name for p in topology(cfg).processes] + [REDIS_SERVICE]


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def shared_config(
    cfg: StackConfig,
    address: dict[str, str],
    contributions: dict[str, Any],
    *,
    server: DatabaseServer | None,
    with_extra: bool = True,
) -> dict[str, Any]:
    """homeserver.yaml: every key that must be identical in every process.

    `address` maps service names (synapse-main, workers, redis) to the host other processes
    dial; `server` is the bundled PostgreSQL; `contributions` are keys other parts need
    (Element Call, TURN, ntfy).
    """
    syn = cfg.synapse
    topo = topology(cfg)
    hs: dict[str, Any] = {
        "server_name": cfg.server_name,
        "public_baseurl": cfg.url("matrix") + "/",
        "report_stats": False,
        "serve_server_wellknown": False,  # the proxy serves both well-known documents
        "log_config": LOG_CONFIG,
        "media_store_path": MEDIA_STORE,
        "max_upload_size": syn.max_upload_size,
        "signing_key_path": secret_path("signing_key"),
        "macaroon_secret_key_path": secret_path("macaroon"),
        "form_secret_path": secret_path("form"),
        "trusted_key_servers": [{"server_name": s} for s in syn.federation.trusted_key_servers],
        "suppress_key_server_warning": True,
        "enable_metrics": syn.metrics,
        "listeners": main_listeners(cfg, topo),
    }
    hs.update(registration_keys(cfg))
    if not syn.federation.enabled:
        hs["federation_domain_whitelist"] = []
    elif syn.federation.domain_whitelist is not None:
        hs["federation_domain_whitelist"] = list(syn.federation.domain_whitelist)
    if syn.federation.trusted_ca_files:
        # Replaces the public roots for outbound federation (and the well-known lookups).
        hs["federation_custom_ca_list"] = [federation_ca_path(i) for i in range(len(syn.federation.trusted_ca_files))]
    hs["url_preview_enabled"] = syn.url_previews.enabled
    if syn.url_previews.enabled:
        hs["url_preview_ip_range_blacklist"] = PRIVATE_RANGES + list(syn.url_previews.ip_range_blacklist_extra)
    providers = media_storage_providers(cfg)
    if providers:
        hs["media_storage_providers"] = providers
    modules = ldap_module(cfg)
    if modules:
        hs["modules"] = modules
    hs.update(rate_limit_keys(cfg))
    hs.update(worker_keys(cfg, topo, address))
    _merge(hs, contributions)
    if syn.federation.private_networks:
        # ip_range_whitelist overrides Synapse's default ip_range_blacklist for federation (and
        # pushers); other parts may widen it too (ntfy), so this adds to theirs.
        allowed = list(hs.get("ip_range_whitelist", []))
        hs["ip_range_whitelist"] = allowed + [c for c in syn.federation.private_networks if c not in allowed]
    if with_extra:
        _merge_under(hs, syn.extra_config)
    return hs


def _merge_under(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """extra_config fills in what the stack leaves unset, merging into mappings the stack also
    writes (experimental_features, say) instead of dropping them; the stack's own values win."""
    for key, value in extra.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge_under(into[key], value)


def email_config(cfg: StackConfig, password_placeholder: str = "") -> dict[str, Any] | None:
    """The email section. Synapse has no smtp_pass_path, so this whole section is a secret file
    loaded as one more --config-path; the password is filled in by the component."""
    smtp = cfg.synapse.smtp
    if smtp is None:
        return None
    section: dict[str, Any] = {
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "require_transport_security": smtp.require_transport_security,
        "force_tls": smtp.force_tls,
        "notif_from": smtp.from_address,
        "app_name": "Matrix",
        "enable_notifs": True,
        "client_base_url": cfg.url("app") if cfg.element_web.enabled else cfg.url("matrix"),
    }
    if smtp.user:
        section["smtp_user"] = smtp.user
        section["smtp_pass"] = password_placeholder
    return {"email": section}


def log_config() -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "precise"}},
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["console"]},
        "disable_existing_loggers": False,
    }


def worker_config(process: Process, *, metrics: bool = True) -> dict[str, Any]:
    """A worker's own file: only worker_* keys, plus the media override (shallow merge)."""
    role = process.role
    assert role is not None
    conf: dict[str, Any] = {
        "worker_app": GENERIC_APP,
        "worker_name": process.name,
        "worker_listeners": [_listener(process.port, role.listener_resources())],
        "worker_log_config": LOG_CONFIG,
    }
    if metrics:
        conf["worker_listeners"].append(_metrics_listener(process.metrics_port))
    if role.media:
        conf["enable_media_repo"] = True
    return conf


def main_config(cfg: StackConfig) -> dict[str, Any] | None:
    """Main's own file, only when main holds the media store beside workers: the media override
    (the shared file turns the media repository off for every process)."""
    topo = topology(cfg)
    if topo.workers and not topo.has("media_repository"):
        return {"enable_media_repo": True}
    return None


def config_paths(cfg: StackConfig, process: Process) -> tuple[str, ...]:
    paths = [SHARED_CONFIG, DATABASE_CONFIG]
    if cfg.synapse.smtp is not None:
        paths.append(EMAIL_CONFIG)
    if not process.is_main:
        paths.append(worker_config_path(process))
    elif main_config(cfg) is not None:
        paths.append(MAIN_CONFIG)
    return tuple(paths)


def command(cfg: StackConfig, process: Process) -> tuple[str, ...]:
    """How the process starts: the module, then each config file in merge order."""
    app = "synapse.app.homeserver" if process.is_main else GENERIC_APP
    # --no-secrets-in-config: Synapse itself refuses an inline secret in any file it reads.
    args: list[str] = ["python", "-m", app, "--no-secrets-in-config"]
    for path in config_paths(cfg, process):
        args += ["--config-path", path]
    return tuple(args)


def uses_media_store(cfg: StackConfig, process: Process) -> bool:
    topo = topology(cfg)
    if topo.has("media_repository"):
        return bool(process.role and process.role.media)
    return process.is_main


# s3_media_upload keeps its list of media in cache.db in its working directory: scratch space.
MEDIA_UPLOAD_DIR = "/tmp"


def media_upload_script(cfg: StackConfig, *, older_than: str, delete: bool) -> str:
    """The shell command, run inside a process that holds the media store, that copies to the
    bucket every media file not accessed for `older_than` (s3_media_upload's duration: 0d is
    every file) and, with `delete`, removes the local copies once the bucket has them. It reads
    Synapse's database from the secret database config file (its `database` section, the only
    part of a homeserver config it reads) and the bucket's credentials from the files botocore is
    pointed at (s3_environment)."""
    media = cfg.synapse.media
    assert media.s3 and media.bucket and media.endpoint
    upload = ["s3_media_upload", "--no-progress", "upload", MEDIA_STORE, media.bucket,
              "--endpoint-url", media.endpoint]
    if media.prefix:
        upload += ["--prefix", media.prefix]
    if delete:
        upload.append("--delete")
    update = ["s3_media_upload", "--no-progress", "update", MEDIA_STORE, older_than,
              "--homeserver-config-path", DATABASE_CONFIG]
    return f"cd {MEDIA_UPLOAD_DIR} && {shlex.join(update)} && {shlex.join(upload)}"


# Docker's media cache is the host's volume, which every media process shares and which outlives
# them: this service empties it on a timer (Kubernetes keeps a bounded cache per pod instead).
MEDIA_CACHE_CLEANER = "synapse-media-cache-clean"
# Its series' job label and metric prefix: the Pushgateway keeps its last success.
MEDIA_CACHE_CLEAN_JOB = "media_cache_clean"


def media_cache_clean_loop(cfg: StackConfig, report_url: str | None) -> str:
    """The cache cleaner's command: every synapse.media.cache.clean_every_minutes (the first time
    at once) it copies to the bucket what is not there yet and removes from the cache what the
    bucket holds and nobody read for cache.max_age. A failed run is logged and tried again next
    time; after each success it reports the time to `report_url` (a Pushgateway's job URL), so the
    overdue alert fires when clean-ups stop succeeding. curl is the image's (its health check's)."""
    cache = cfg.synapse.media.cache
    # PID 1 of its container: a stop (SIGTERM) ends the wait between runs at once.
    lines = ["set -u", "trap 'exit 0' TERM INT", "while :; do",
             f"    if {media_upload_script(cfg, older_than=cache.max_age, delete=True)}; then",
             "        echo 'media cache clean-up: done'"]
    if report_url is not None:
        lines += ["        " + line for line in media_cache_clean_report(report_url)]
    lines += ["    else",
              f"        echo 'media cache clean-up failed (above); the next try in {cache.clean_every_minutes} min' >&2",
              "    fi",
              f"    sleep {cache.clean_every_minutes * 60} & wait $!",
              "done"]
    return "\n".join(lines) + "\n"


def media_cache_clean_report(report_url: str) -> list[str]:
    """The shell lines that report a clean-up's success, now, to a Pushgateway's job URL; a
    report that fails is logged and leaves the clean-up a success."""
    metric = f"{MEDIA_CACHE_CLEAN_JOB}_last_success_timestamp_seconds"
    return [f"printf '# TYPE {metric} gauge\\n{metric} %s\\n' \"$(date +%s)\" \\",
            f"    | curl -fsS --max-time 30 --data-binary @- {report_url} \\",
            f"    || echo 'media cache clean-up: could not report to {report_url}' >&2"]


def keeps_media(cfg: StackConfig, process: Process) -> bool:
    """The process holds the media store on a volume of its own (it is stateful): local media.
    With media in a bucket its store is only a cache."""
    return uses_media_store(cfg, process) and not cfg.synapse.media.s3


def check_extra_config(cfg: StackConfig) -> list[tuple[str, object, str]]:
    """extra_config may not set what the stack manages, nor put a secret in homeserver.yaml."""
    problems: list[tuple[str, object, str]] = []
    managed = managed_keys(cfg)
    for key in sorted(cfg.synapse.extra_config):
        if key in managed or key.startswith("worker_") or key in WORKER_TABLE_KEYS:
            problems.append((f"synapse.extra_config.{key}", None,
                             "is managed by the stack (worker table, secrets or typed settings); "
                             "use the typed setting instead"))
        elif _looks_secret(key):
            problems.append((f"synapse.extra_config.{key}", None,
                             "would put a secret in homeserver.yaml; use the matching *_path key with a "
                             "file you provide, or a typed setting"))
    return problems


def _looks_secret(key: str) -> bool:
    # Synapse also refuses these at start (--no-secrets-in-config); failing here says so before
    # anything is deployed, and keeps the secret out of the rendered file and the state.
    return not key.endswith("_path") and any(word in key for word in ("secret", "password", "_key", "token"))


# Keys extra_config may never set, even when this topology happens not to use them: the duties
# the worker table hands out, their legacy spellings, and what every process must agree on.
WORKER_TABLE_KEYS = frozenset(
    {role.duty for role in ROLES if role.duty}
    | {"instance_map", "stream_writers", "enable_media_repo", "redis", "worker_replication_secret",
       "worker_replication_secret_path", "outbound_federation_restricted_to", "listeners", "database",
       "media_storage_providers",
       "email", "send_federation", "start_pushers", "notify_appservices", "update_user_directory"}
)
