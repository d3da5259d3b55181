"""The typed stack config: one pydantic model for a whole environment.

Each top-level field is one key of the stack's Pulumi config in the `matrix-stack:` namespace
(`matrix-stack:server_name`, `matrix-stack:synapse`, ...). Every model forbids unknown keys, so a
misspelt key is an error rather than a silently ignored setting.

Schema only: the rules across fields of several blocks live in config/rules.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# Not `from . import ...`: that reads the package `config`, whose __init__ imports this module.
import config.cron as cron
import config.images as images

_DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME_RE = re.compile(rf"^({_DNS_LABEL}\.)*{_DNS_LABEL}$")
SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")
SIZE_RE = re.compile(r"^[1-9][0-9]*[KMG]$")
DURATION_RE = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d|w|y)$")
S3_ENDPOINT_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
REPOSITORY_PATH_RE = re.compile(r"^[A-Za-z0-9._/-]*$")
SFTP_PATH_RE = re.compile(r"^/[A-Za-z0-9._/-]*$")
UNIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
HOST_KEY_RE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa) [A-Za-z0-9+/=]+$")
NTFY_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, defer_build=True)


def rule(field: str, value: object, message: str, reads: tuple[str, ...] = ()) -> PydanticCustomError:
    """A rule spanning several fields of one model, blamed on `field` (a path below the model)
    with the offending `value`; the loader reports it at that path instead of the whole block.
    `reads` are the fields (below the model) the rule judged, when more than `field`."""
    return PydanticCustomError("field_rule", message, {"field": field, "value": value, "reads": reads})


Hostname = Annotated[str, Field(pattern=HOSTNAME_RE.pattern, max_length=253)]
Port = Annotated[int, Field(ge=1, le=65535)]
Size = Annotated[str, Field(pattern=SIZE_RE.pattern, description="a size such as 50M or 2G")]
Duration = Annotated[str, Field(pattern=DURATION_RE.pattern, description="a duration like 24h")]


def _pinned(value: str) -> str:
    """Images must name an exact version: `latest` or a bare name moves under our feet."""
    if not IMAGE_RE.match(value):
        raise ValueError("must be an image reference with an explicit tag or digest")
    tag = value.rsplit(":", 1)[-1]
    if tag in {"latest", "stable", "main", "master", "develop"}:
        raise ValueError(f"tag '{tag}' is not pinned: name a version such as v1.2.3")
    return value


Image = Annotated[str, AfterValidator(_pinned)]


# ---------------------------------------------------------------- hostnames


class Hostnames(Strict):
    """Public names. Empty fields default to seed 000's layout under the server name."""

    matrix: Hostname | None = Field(None, description="host serving the client and federation API")
    call: Hostname | None = None
    jwt: Hostname | None = None
    livekit: Hostname | None = None
    app: Hostname | None = None
    ntfy: Hostname | None = None
    turn: Hostname | None = None
    auth: Hostname | None = Field(None, description="the Matrix Authentication Service's own site")
    grafana: Hostname | None = Field(None, description="Grafana's dashboards (monitoring.grafana)")


# ---------------------------------------------------------------- targets


DOCKER_URL_RE = re.compile(r"^(unix:///[^\s]+|ssh://([A-Za-z0-9._-]+@)?[A-Za-z0-9.-]+(:[0-9]+)?|tcp://[A-Za-z0-9.-]+:[0-9]+)$")


class DockerHost(Strict):
    name: Annotated[str, Field(pattern=SERVICE_NAME_RE.pattern)]
    url: str = Field(description="Docker endpoint: unix:///var/run/docker.sock or ssh://user@host")
    address: str | None = Field(
        None,
        description="address other hosts use to reach services published on this host",
    )
    bind_address: IPvAnyAddress | None = Field(
        None,
        description="host address published ports listen on; defaults to `address` when that is "
        "an IP address, else every interface",
    )
    services: list[str] = Field(
        default_factory=list,
        description="services placed here (names or prefixes ending in '*'); the first host "
        "takes every service no host names",
    )
    ssh_opts: list[str] = Field(default_factory=list)

    @property
    def published_address(self) -> str | None:
        """The address ports are published on (None: every interface)."""
        if self.bind_address is not None:
            return str(self.bind_address)
        try:
            return str(ipaddress.ip_address(self.address)) if self.address else None
        except ValueError:
            return None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not DOCKER_URL_RE.match(value):
            raise ValueError("must be unix:///path, ssh://[user@]host[:port] or tcp://host:port")
        return value


def _cidr(value: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("must be an IP address or CIDR such as 10.0.0.0/8") from None
    return value


class DockerTarget(Strict):
    kind: Literal["docker"]
    hosts: list[DockerHost] = Field(
        default_factory=lambda: [DockerHost(name="local", url="unix:///var/run/docker.sock")],
        min_length=1,
    )
    http_port: Port = Field(80, description="host port the routing proxy publishes for HTTP")
    https_port: Port = Field(443, description="host port the routing proxy publishes for HTTPS")
    trusted_proxies: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list,
        description="CIDRs a front proxy or load balancer you run before the Docker host connects to the "
        "proxy from: the proxy takes the client's address from X-Forwarded-For only from these; "
        "empty = from no one (clients connect to the proxy directly)",
    )

    @model_validator(mode="after")
    def _hosts(self) -> DockerTarget:
        names = [h.name for h in self.hosts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise rule("hosts", dupes, "host names must be unique; each name may appear once")
        if len(self.hosts) > 1:
            missing = [i for i, h in enumerate(self.hosts) if not h.address]
            if missing:
                raise rule(
                    f"hosts[{missing[0]}].address", None,
                    "required with several hosts so the others can reach it; missing on: "
                    + ", ".join(self.hosts[i].name for i in missing),
                )
        return self


class KubernetesTarget(Strict):
    kind: Literal["kubernetes"]
    kubeconfig: str | None = Field(None, description="path to a kubeconfig file")
    context: str | None = None
    namespace: Annotated[str, Field(pattern=SERVICE_NAME_RE.pattern)] = "matrix"
    storage_class: str | None = None
    ingress_class: str = "nginx"
    cert_manager_issuer: str | None = Field(None, description="cert-manager ClusterIssuer for the Ingress")
    livekit_exposure: Literal["host_network", "load_balancer"] = "load_balancer"
    service_monitors: bool = False
    prometheus_release: str | None = Field(
        None, description="the kube-prometheus-stack Helm release whose Prometheus should pick up the "
        "ServiceMonitors and PrometheusRule: they carry `release: <it>`, what its default selectors match",
    )
    trusted_proxies: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list,
        description="CIDRs the Ingress controller's pods connect to the proxy from (its pod network, or "
        "the nodes' addresses with hostNetwork): the proxy takes the client's address from "
        "X-Forwarded-For only from these; empty = from no one (every client is the controller)",
    )
    delete_unreachable: bool = Field(
        False, description="let `pulumi destroy` drop objects of a cluster that no longer answers"
    )

    @property
    def http_port(self) -> int:
        """The port clients reach HTTP on: the Ingress controller's."""
        return 80


Target = Annotated[DockerTarget | KubernetesTarget, Field(discriminator="kind")]


# ---------------------------------------------------------------- synapse




class Workers(Strict):
    """Worker counts per role, on top of a preset. Role names are the worker table's."""

    # Preset names, role names and the per-role limit are the worker table's facts
    # (components/synapse/workers.py); the stack-wide check validates them there.
    preset: str = "monolith"
    counts: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class BundledDatabase(Strict):
    kind: Literal["bundled"] = "bundled"
    image: Image = images.POSTGRES
    size: str = "20Gi"
    cp_max: Annotated[int, Field(ge=1, le=50)] = 5
    # PgBouncer in transaction pooling between Synapse and the server: a restarted server then
    # costs no request once it is healthy (Synapse alone reuses each dead pooled connection once).
    pooler: bool = True


class ExternalPostgres(Strict):
    """A PostgreSQL server the stack does not run."""

    kind: Literal["external"]
    host: str
    port: Port = 5432


class ExternalDatabase(ExternalPostgres):
    name: str = "synapse"
    user: str = "synapse"
    sslmode: Literal["disable", "prefer", "require", "verify-full"] = "prefer"
    cp_max: Annotated[int, Field(ge=1, le=50)] = 5


Database = Annotated[BundledDatabase | ExternalDatabase, Field(discriminator="kind")]


class Redis(Strict):
    image: Image = images.REDIS


class Smtp(Strict):
    host: Hostname
    port: Port = 587
    user: str | None = None
    from_address: str = Field(..., description='sender, e.g. "Matrix <matrix@example.com>"')
    require_transport_security: bool = True
    force_tls: bool = False


class Registration(Strict):
    mode: Literal["closed", "token", "email"] = "closed"


class RateLimit(Strict):
    per_second: Annotated[float, Field(gt=0, le=10000)]
    burst_count: Annotated[int, Field(ge=1, le=100000)]


class RateLimits(Strict):
    """Synapse's rc_* keys that seed 004 tunes; unset ones keep Synapse's defaults."""

    message: RateLimit | None = None
    registration: RateLimit | None = None
    login_address: RateLimit | None = None
    login_account: RateLimit | None = None
    login_failed_attempts: RateLimit | None = None
    joins_local: RateLimit | None = None
    joins_remote: RateLimit | None = None
    invites_per_user: RateLimit | None = None
    federation_window_size: Annotated[int, Field(ge=1)] | None = None


class UrlPreviews(Strict):
    enabled: bool = False
    ip_range_blacklist_extra: list[str] = Field(default_factory=list)


class Federation(Strict):
    enabled: bool = True
    domain_whitelist: list[Hostname] | None = Field(
        None, description="only federate with these servers (Synapse's federation_domain_whitelist)"
    )
    deny: list[Hostname] = Field(default_factory=list, description="servers refused at the proxy")
    trusted_key_servers: list[Hostname] = Field(default_factory=lambda: ["matrix.org"])
    trusted_ca_files: list[str] | None = Field(
        None,
        description="PEM files, one CA certificate each, that outbound federation trusts INSTEAD of "
        "the public roots (a private federation); shipped to every Synapse process "
        "(Synapse's federation_custom_ca_list)",
    )
    private_networks: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list,
        description="CIDRs where federated servers live although Synapse's default ip_range_blacklist "
        "blocks them (private federations on 10.0.0.0/8 and the like)",
    )


class Ldap(Strict):
    uri: str = Field(pattern=r"^ldaps?://")
    base: str
    bind_dn: str | None = None
    uid_attribute: str = "uid"
    mail_attribute: str = "mail"
    name_attribute: str = "cn"
    start_tls: bool = True


CACHE_AGE_RE = re.compile(r"^[1-9][0-9]*[hd]$")
QUANTITY_RE = re.compile(r"^[1-9][0-9]*(Mi|Gi|Ti)$")


class MediaCache(Strict):
    """The media each Synapse process keeps on local disk when media lives in a bucket: what it
    uploaded until the bucket has it, and what it fetched back from the bucket."""

    size: Annotated[str, Field(pattern=QUANTITY_RE.pattern)] = Field(
        "10Gi", description="bound of one process's cache (Kubernetes: its pod's emptyDir sizeLimit; "
        "exceeding it evicts the pod, which starts again with an empty cache)")
    max_age: Annotated[str, Field(pattern=CACHE_AGE_RE.pattern)] = Field(
        "7d", description="media not accessed for this long leaves the cache (hours or days: "
        "s3_media_upload reads 'm' as months)")
    clean_every_minutes: int = Field(
        60, ge=5, le=1440, description="Docker: how long the cache cleaner waits after each clean-up "
        "(it empties the host's cache volume of what the bucket holds and nobody read for max_age); "
        "Kubernetes keeps a cache per pod, bounded by `size`, and runs no cleaner")


class Media(Strict):
    """Where Synapse keeps media: on a volume (local), or in an S3-compatible bucket through
    synapse-s3-storage-provider, with a bounded local cache. Credentials: the secret keys
    media_s3_access_key_id and media_s3_secret_access_key."""

    storage: Literal["local", "s3"] = "local"
    bucket: Annotated[str, Field(pattern=BUCKET_RE.pattern)] | None = None
    endpoint: str | None = Field(None, pattern=S3_ENDPOINT_RE.pattern,
                                 description="the store's URL, e.g. https://s3.eu-central-1.amazonaws.com")
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] | None = None
    path_style: bool = Field(False, description="address the bucket as <endpoint>/<bucket> (most "
                             "self-hosted stores) instead of <bucket>.<endpoint>")
    prefix: Annotated[str, Field(pattern=r"^([A-Za-z0-9._-]+/)*$")] = Field(
        "", description="key prefix of every media object, ending in '/'")
    cache: MediaCache = MediaCache()
    image_registry: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.:-]*(/[a-z0-9._-]+)*$")] | None = Field(
        None, description="Kubernetes: the registry (host[/path]) the operator pushes the Synapse image "
        "with the storage provider to; Docker hosts build it themselves")

    @property
    def s3(self) -> bool:
        return self.storage == "s3"


class Synapse(Strict):
    image: Image = images.SYNAPSE
    workers: Workers = Workers()
    database: Database = BundledDatabase()

    @model_validator(mode="before")
    @classmethod
    def _bundled_by_default(cls, data: object) -> object:
        # `database: {cp_max: 10}` means the bundled database, as the default does.
        if isinstance(data, dict) and isinstance(data.get("database"), dict) and "kind" not in data["database"]:
            return {**data, "database": {"kind": "bundled", **data["database"]}}
        return data
    redis: Redis = Redis()
    registration: Registration = Registration()
    smtp: Smtp | None = None
    max_upload_size: Size = "50M"
    rate_limits: RateLimits = RateLimits()
    url_previews: UrlPreviews = UrlPreviews()
    federation: Federation = Federation()
    ldap: Ldap | None = None
    admin_api_allowlist: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list,
        description="CIDRs allowed to reach /_synapse/admin on the public proxy; empty = nobody",
    )
    media_size: str = "50Gi"
    media: Media = Media()
    metrics: bool = True
    extra_config: dict[str, object] = Field(
        default_factory=dict,
        description="extra homeserver.yaml keys; may not touch keys the stack manages",
    )


    @model_validator(mode="after")
    def _email_needs_smtp(self) -> Synapse:
        if self.registration.mode == "email" and self.smtp is None:
            raise rule("registration.mode", "email", "'email' needs a synapse.smtp block to send the mails",
                       reads=("registration", "smtp"))
        return self


# ---------------------------------------------------------------- other components


MAX_PORT_RANGE = 10000  # publishing a range costs a rule (or a proxy process) per port


def _check_port_range(model: BaseModel, start_field: str, end_field: str, label: str) -> None:
    start, end = getattr(model, start_field), getattr(model, end_field)
    if end < start:
        raise rule(end_field, end, f"must not be below {start_field} ({start})", reads=(start_field, end_field))
    if end - start > MAX_PORT_RANGE:
        raise rule(end_field, end, f"{label} may span at most {MAX_PORT_RANGE} ports from {start_field} ({start})",
                   reads=(start_field, end_field))


class Livekit(Strict):
    image: Image = images.LIVEKIT
    rtc_tcp_port: Port = 7881
    rtc_udp_port_start: Port = 50100
    rtc_udp_port_end: Port = 50200
    external_ip: str | None = Field(None, description="public IP to advertise; unset = discover via STUN")
    turn: bool = Field(False, description="LiveKit's embedded TURN (UDP 3479, TLS 5350)")

    @model_validator(mode="after")
    def _range(self) -> Livekit:
        _check_port_range(self, "rtc_udp_port_start", "rtc_udp_port_end", "the RTC UDP range")
        return self


class ElementCall(Strict):
    enabled: bool = Field(True, description="on by default, except on a localhost stack, where it cannot work")
    image: Image = images.ELEMENT_CALL
    jwt_image: Image = images.LK_JWT_SERVICE
    livekit: Livekit = Livekit()


class Ntfy(Strict):
    enabled: bool = True
    image: Image = images.NTFY
    upstream_base_url: str | None = "https://ntfy.sh"
    private_address: Annotated[str, AfterValidator(_cidr)] | None = Field(
        None,
        description="IP or CIDR ntfy's host name resolves to when that is a private address "
        "(split-horizon DNS, a LAN); Synapse's default ip_range_blacklist would block pushes there",
    )


class Coturn(Strict):
    enabled: bool = False
    image: Image = images.COTURN
    relay_port_start: Port = 49152
    relay_port_end: Port = 49172
    external_ip: str | None = None

    @model_validator(mode="after")
    def _range(self) -> Coturn:
        _check_port_range(self, "relay_port_start", "relay_port_end", "the relay range")
        return self


class PagesSource(Strict):
    owner: str
    repo: str
    branch: str = "main"


class ElementWeb(Strict):
    enabled: bool = True
    mode: Literal["container", "pages"] = "container"
    image: Image = images.ELEMENT_WEB
    pages_project: str | None = None
    source: PagesSource | None = None
    node_version: str = "20"
    brand: str = "Element"


class Cloudflare(Strict):
    enabled: bool = False
    zone: Hostname | None = None
    account_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    origin_ip: str | None = Field(None, description="public IPv4 of the routing proxy: every A record points here")
    origin_ipv6: str | None = Field(None, description="public IPv6 of the routing proxy (AAAA records)")
    proxy_http: bool | None = Field(
        None,
        description="proxy the HTTP(S) hosts through Cloudflare (orange cloud); LiveKit and TURN are "
        "always DNS-only. Unset = proxied with tls origin_ca (only Cloudflare trusts that "
        "certificate), DNS-only otherwise (ACME HTTP-01 fails behind the proxy)",
    )

    @field_validator("origin_ip", "origin_ipv6")
    @classmethod
    def _ip(cls, value: str | None, info: object) -> str | None:
        import ipaddress

        if value is None:
            return value
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"'{value}' is not an IP address") from None
        want = 6 if getattr(info, "field_name", "") == "origin_ipv6" else 4
        if address.version != want:
            raise ValueError(f"must be an IPv{want} address")
        return value


class Tls(Strict):
    mode: Literal["none", "acme", "origin_ca", "provided"] | None = Field(
        None,
        description="how the proxy gets its certificate; unset = origin_ca behind Cloudflare, "
        "acme otherwise, none for localhost; provided = certificate_file with the secret "
        "tls_private_key (a private CA's certificate, say)",
    )
    acme_email: str | None = None
    certificate_file: str | None = Field(
        None, description="with mode provided: PEM chain covering every public hostname, server certificate first"
    )


# ---------------------------------------------------------------- backups


CronExpression = Annotated[str, AfterValidator(cron.validate)]


class VolumeRepository(Strict):
    """A restic repository on a volume beside the backup job (a Docker volume on the host that
    holds the media store, or a PersistentVolumeClaim). It shares that host's fate: prefer a
    bucket or an SFTP server elsewhere."""

    kind: Literal["volume"] = "volume"
    name: Annotated[str, Field(pattern=SERVICE_NAME_RE.pattern)] = "backup-repository"
    size: str = Field("100Gi", description="the claim's size on Kubernetes")


class S3Repository(Strict):
    """A bucket of an S3-compatible store. Credentials: the secret keys backup_s3_access_key_id
    and backup_s3_secret_access_key."""

    kind: Literal["s3"]
    endpoint: str = Field(pattern=S3_ENDPOINT_RE.pattern,
                          description="the store's URL, e.g. https://s3.eu-central-1.amazonaws.com")
    bucket: Annotated[str, Field(pattern=BUCKET_RE.pattern)]
    path: Annotated[str, Field(pattern=REPOSITORY_PATH_RE.pattern)] = "matrix-stack"
    region: str | None = None
    path_style: bool = Field(False, description="address the bucket as <endpoint>/<bucket> (restic's "
                             "s3.bucket-lookup=path; most self-hosted stores) instead of <bucket>.<endpoint>")


class SftpRepository(Strict):
    """A directory on an SFTP server. Credential: the secret key backup_sftp_private_key (an
    OpenSSH private key); the server's host key is pinned in known_hosts."""

    kind: Literal["sftp"]
    host: Hostname
    port: Port = 22
    user: Annotated[str, Field(pattern=UNIX_USER_RE.pattern)]
    path: Annotated[str, Field(pattern=SFTP_PATH_RE.pattern)]
    known_hosts: str = Field(
        pattern=HOST_KEY_RE.pattern,
        description="the server's public host key ('ssh-ed25519 AAAA...'): restic's ssh refuses any other",
    )


Repository = Annotated[VolumeRepository | S3Repository | SftpRepository, Field(discriminator="kind")]


class Retention(Strict):
    """How many snapshots `restic forget --prune` keeps: the newest per day, week and month."""

    daily: Annotated[int, Field(ge=0, le=3650)] = 7
    weekly: Annotated[int, Field(ge=0, le=520)] = 4
    monthly: Annotated[int, Field(ge=0, le=1200)] = 6

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        if not (self.daily or self.weekly or self.monthly):
            raise rule("daily", 0, "retention keeps nothing: restic forget would delete every snapshot; "
                       "set at least one of daily, weekly, monthly above 0", reads=("daily", "weekly", "monthly"))
        return self


class Backup(Strict):
    """Nightly restic snapshots of every database the stack owns, the media store and the keys
    that cannot be regenerated (components/backup)."""

    enabled: bool = False
    image: Image = images.RESTIC
    repository: Repository = VolumeRepository()
    schedule: CronExpression = Field("30 3 * * *", description="when the backup runs (cron, UTC)")
    check_schedule: CronExpression = Field("0 5 * * 0", description="when `restic check` verifies the repository (cron, UTC)")
    retention: Retention = Retention()


# ---------------------------------------------------------------- monitoring


class AlertEmail(Strict):
    """Alerts also go by email, through synapse.smtp (its server, user and password)."""

    to: Annotated[str, Field(pattern=EMAIL_RE.pattern)]


class GrafanaSettings(Strict):
    """Grafana over the stack's Prometheus on its own hostname, with the dashboards the stack
    builds (components/monitoring/dashboards.py); logins through MAS when MAS runs."""

    enabled: bool = False
    image: Image = images.GRAFANA


class Monitoring(Strict):
    """Prometheus over every metrics endpoint the parts declare, tested alert rules, and
    Alertmanager delivering to the stack's own ntfy (components/monitoring)."""

    enabled: bool = False
    prometheus_image: Image = images.PROMETHEUS
    alertmanager_image: Image = images.ALERTMANAGER
    nginx_exporter_image: Image = images.NGINX_EXPORTER
    postgres_exporter_image: Image = images.POSTGRES_EXPORTER
    redis_exporter_image: Image = images.REDIS_EXPORTER
    node_exporter_image: Image = images.NODE_EXPORTER
    blackbox_exporter_image: Image = images.BLACKBOX_EXPORTER
    pushgateway_image: Image = images.PUSHGATEWAY
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 15
    scrape_interval_seconds: Annotated[int, Field(ge=5, le=300)] = 30
    # The ntfy topic Alertmanager publishes to (ntfy's own topic rules: letters, digits, _ and -).
    ntfy_topic: Annotated[str, Field(pattern=NTFY_TOPIC_RE.pattern)] = "alerts"
    # The ntfy user that may only publish there; ntfy generates its password (ntfy's part).
    ntfy_user: Annotated[str, Field(pattern=UNIX_USER_RE.pattern)] = "alertmanager"
    email: AlertEmail | None = None
    grafana: GrafanaSettings = Field(default_factory=lambda: GrafanaSettings())


# ---------------------------------------------------------------- matrix authentication service
# Typed settings only: components/mas/render.py builds MAS's config.yaml from these, so a key
# MAS does not know (and would silently ignore: it does not refuse unknown keys) cannot be written.

ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
PROVIDER_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class MasBundledDatabase(Strict):
    """A second database and role in the bundled PostgreSQL (synapse.database must be bundled)."""

    kind: Literal["bundled"] = "bundled"


class MasExternalDatabase(ExternalPostgres):
    name: str = "mas"
    user: str = "mas"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"


MasDatabase = Annotated[MasBundledDatabase | MasExternalDatabase, Field(discriminator="kind")]

ClaimAction = Literal["ignore", "suggest", "force", "require"]


class ClaimImport(Strict):
    action: ClaimAction = "suggest"
    template: str | None = Field(None, description="a Jinja template over the provider's claims, e.g. "
                                 "'{{ user.preferred_username }}'; unset = MAS's default for the claim")


class ClaimsMapping(Strict):
    """How a provider's claims become the MAS user (MAS's claims_imports)."""

    subject: str | None = Field(None, description="template of the stable subject; unset = '{{ user.sub }}'")
    localpart: ClaimImport = ClaimImport(action="require")
    displayname: ClaimImport = ClaimImport()
    email: ClaimImport = ClaimImport()
    skip_confirmation: bool = False


class UpstreamProvider(Strict):
    """An upstream OpenID Connect provider. Its client secret is the secret config key
    mas_client_secrets, an object of provider name -> secret."""

    name: Annotated[str, Field(pattern=PROVIDER_NAME_RE.pattern)] = Field(
        ..., description="a short name: the key of its secret in mas_client_secrets")
    issuer: str | None = Field(None, description="the OIDC issuer URL (discovery reads its metadata)")
    client_id: str | None = None
    id: Annotated[str, Field(pattern=ULID_RE.pattern)] | None = Field(
        None, description="MAS's provider ULID; unset = derived from the stack's server name and `name`")
    human_name: str | None = None
    brand_name: str | None = Field(None, description="apple, google, facebook, github, gitlab, twitter, discord")
    scopes: list[Annotated[str, Field(pattern=r"^[!#-\[\]-~]+$")]] = Field(
        default_factory=lambda: ["openid", "profile", "email"])
    token_endpoint_auth_method: Literal["none", "client_secret_basic", "client_secret_post"] = "client_secret_basic"
    synapse_idp_id: str | None = Field(None, description="the provider's id in Synapse ('oidc-<idp_id>'), "
                                       "for syn2mas to carry its users' links over")
    claims: ClaimsMapping = ClaimsMapping()

    @property
    def needs_secret(self) -> bool:
        return self.token_endpoint_auth_method != "none"


class Mas(Strict):
    """The Matrix Authentication Service: logins, registration and sessions move from Synapse
    to MAS (OAuth 2.0 / OIDC), which Element X needs for OIDC sign-in and QR login."""

    enabled: bool = False
    image: Image = images.MAS
    database: MasDatabase = MasBundledDatabase()
    passwords: bool = Field(True, description="local password logins in MAS; false = upstream providers only")
    upstream_oauth2: list[UpstreamProvider] = Field(default_factory=list)
    import_synapse_passwords: bool = Field(
        False, description="accept Synapse's bcrypt hashes (a stack migrated with syn2mas): a bcrypt scheme "
        "as version 1, argon2id as version 2 for new hashes")
    syn2mas: bool = Field(
        False, description="migration mode (docs/mas.md): MAS runs beside Synapse's own logins, with read "
        "access to Synapse's database, until `mas-cli syn2mas migrate` has imported its users")

    @property
    def owns_logins(self) -> bool:
        """MAS serves logins and registration, and Synapse delegates to it."""
        return self.enabled and not self.syn2mas


# ---------------------------------------------------------------- the stack


def is_local(server_name: str) -> bool:
    """localhost or a name under it: plain HTTP, no public DNS."""
    return server_name == "localhost" or server_name.endswith(".localhost")


class StackConfig(Strict):
    server_name: Hostname = Field(..., description="the Matrix server name (the part after ':' in user IDs)")
    hostnames: Hostnames = Hostnames()
    target: Target = DockerTarget(kind="docker")
    synapse: Synapse = Synapse()
    element_call: ElementCall = ElementCall()
    ntfy: Ntfy = Ntfy()
    coturn: Coturn = Coturn()
    element_web: ElementWeb = ElementWeb()
    cloudflare: Cloudflare = Cloudflare()
    tls: Tls = Tls()
    backup: Backup = Backup()
    mas: Mas = Mas()
    monitoring: Monitoring = Monitoring()
    protect: bool = Field(False, description="protect and retain stateful data (prod)")
    # Secret inputs: accepted only from `pulumi config set --secret` or ESC (checked by the loader).
    smtp_password: SecretStr | None = None
    database_password: SecretStr | None = None
    cloudflare_api_token: SecretStr | None = None
    ldap_bind_password: SecretStr | None = None
    tls_private_key: SecretStr | None = None
    # The restic repository's credentials (backup.repository s3 or sftp).
    backup_s3_access_key_id: SecretStr | None = None
    backup_s3_secret_access_key: SecretStr | None = None
    backup_sftp_private_key: SecretStr | None = None
    # The media bucket's credentials (synapse.media.storage s3).
    media_s3_access_key_id: SecretStr | None = None
    media_s3_secret_access_key: SecretStr | None = None
    # Synapse's signing key file, to bring a server's identity back from a backup when the
    # Pulumi state that generated it is lost; unset = generated.
    signing_key: SecretStr | None = None
    mas_database_password: SecretStr | None = None
    # provider name -> client secret, for mas.upstream_oauth2 (one secret key holding an object)
    mas_client_secrets: dict[str, SecretStr] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_element_call_by_default_on_localhost(cls, data: Any) -> Any:
        """Element Call cannot work on a localhost stack (see config/rules.py,
        _element_call_needs_federation): unset, it is off there."""
        if not isinstance(data, dict) or not is_local(str(data.get("server_name", ""))):
            return data
        call = data.get("element_call")
        if call is None:
            return {**data, "element_call": {"enabled": False}}
        if isinstance(call, dict) and "enabled" not in call:
            return {**data, "element_call": {**call, "enabled": False}}
        return data

    # ------------------------------------------------------------ derived facts

    def host(self, name: str) -> str:
        """The public hostname of an endpoint key (matrix, call, jwt, ...): `hostnames.<key>` when
        set, else `<key>.<server_name>` (the Matrix host: the server name itself)."""
        explicit = getattr(self.hostnames, name, None)
        if explicit:
            return str(explicit)
        if name == "matrix":
            return self.server_name
        return f"{name}.{self.server_name}"

    @property
    def local(self) -> bool:
        """A stack on localhost: plain HTTP, no public DNS."""
        return is_local(self.server_name)

    @property
    def tls_mode(self) -> str:
        if self.tls.mode:
            return self.tls.mode
        if self.local:
            return "none"
        return "origin_ca" if self.cloudflare.enabled else "acme"

    @property
    def scheme(self) -> str:
        return "http" if self.tls_mode == "none" else "https"

    def url(self, name: str) -> str:
        host = self.host(name)
        # Every target's config tells the port clients reach HTTP on (`http_port`).
        if self.local and self.target.http_port != 80:
            return f"{self.scheme}://{host}:{self.target.http_port}"
        return f"{self.scheme}://{host}"
