"""A part of the stack, declared once: its public endpoints, the routes and documents it adds
to the routing proxy, the databases it claims, its services, what it hands the Synapse cluster
and the stack outputs. The catalog (components/catalog.py) lists the parts; the view
(components/view) resolves every enabled part's declarations once into the facts that cross
parts (the proxy's sites, DNS records, certificates, databases), and every part reads the rest
of the stack there. No part imports another.

A declaration is pure: `enabled`, `endpoints`, `well_known_client`, `edge_routes`,
`edge_service` and `database_claims` read only the typed config, and `services` the config, the
view and secrets handed in, so config checks run them before any resource exists. `build`
declares the part's own Pulumi resources (its generated secrets, provider resources such as a
Pages project) under its component resource and returns a Contribution; the stack realizes every
part's services on the target in one call once all parts are built.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pulumi

from components.platform.spec import EdgeCertificate, File, Service, Site, Volume, Wait
from config.checks import Finding
from config.model import StackConfig

if TYPE_CHECKING:
    from components.platform.contract import Platform
    from components.view import StackView

# Where every Synapse process finds the secret files other parts hand it (Contribution.secret_files).
HOMESERVER_SECRETS_DIR = "/secrets"

# Build stages: parts that hand the cluster something, the cluster itself, parts that read what
# was built (DNS reads the Pages project's CNAME target).
BEFORE_CLUSTER, CLUSTER, AFTER_CLUSTER = 0, 1, 2


@dataclass(frozen=True)
class Endpoint:
    """A public hostname of the stack."""

    key: str  # the hostname is cfg.host(key); "server" is the server name itself
    # The service and port the routing proxy forwards the host's requests to; None when the proxy
    # answers them itself (the Matrix host) or does not serve the host at all.
    upstream_service: str | None = None
    upstream_port: int = 0
    # The routing proxy serves the host: it gets a server block, a certificate and an Ingress host.
    served_by_proxy: bool = True
    # Cloudflare may proxy its record (when cloudflare.proxy_http is on).
    cloudflare_proxy: bool = True
    # It carries WebRTC or TURN: DNS-only whatever the settings (Cloudflare's proxy passes HTTP only).
    media: bool = False
    # Its record is a CNAME to a target a resource provides (Contribution.cname_targets), such as a
    # Cloudflare Pages project; the proxy does not serve it.
    cname: bool = False
    # The record's IPv4 address when it is not the proxy's (cloudflare.origin_ip), and whether the
    # host gets an AAAA record for cloudflare.origin_ipv6.
    address: str | None = None
    ipv6: bool = True
    websockets: bool = False
    max_body: str = "1M"
    # The endpoint keys whose pages embed this site in a frame (Element Web embeds Element Call as
    # a widget): the proxy lets those origins, when the stack serves them, and the site itself
    # frame it. Empty: no page may frame the site (clickjacking).
    embedded_by: tuple[str, ...] = ()

    def hostname(self, cfg: StackConfig) -> str:
        return cfg.server_name if self.key == "server" else cfg.host(self.key)

    def site(self, cfg: StackConfig, present: Collection[str] = ()) -> Site | None:
        """The proxy's virtual host forwarding to the upstream, when there is one; `present` are
        the stack's endpoint keys (an embedding site the stack does not serve gets no say)."""
        if not (self.served_by_proxy and self.upstream_service):
            return None
        framers = tuple(cfg.url(key) for key in self.embedded_by if key in present) if self.embedded_by else None
        return Site(self.hostname(cfg), self.upstream_service, self.upstream_port,
                    websockets=self.websockets, max_body=self.max_body, frame_ancestors=framers)


@dataclass(frozen=True)
class ExternalServer:
    """A PostgreSQL server the operator runs."""

    host: str
    port: int
    sslmode: str


@dataclass(frozen=True)
class DatabaseClaim:
    """A database a part's services use, and its role. On the bundled PostgreSQL the server
    admits exactly the claimants' clients, which share its host; its connection limit counts
    their pools; its setup step keeps each claim's role and database. The backup dumps every
    claimed database."""

    database: str
    user: str
    clients: tuple[str, ...]  # the services that connect
    pool: int  # connections the clients hold at most, together
    password_secret: str  # the shared secret (Contribution.shared_secrets) holding the role's password
    external: ExternalServer | None = None  # None: on the bundled PostgreSQL
    # The server's owner: the bundled image creates this role and database at first start, and
    # the setup step logs in as it.
    owner: bool = False
    # The role may read every database while this holds (pg_read_all_data; MAS's syn2mas).
    reads_all_data: bool = False
    # Its clients keep no state in a session between transactions (no session SET they depend
    # on, no prepared statement, no session lock): on the bundled server they may dial its
    # transaction pooler (DatabaseServer.pooler), which hands each transaction a checked server
    # connection, so a restarted server leaves them no dead connection.
    pooled: bool = False

    @property
    def bundled(self) -> bool:
        return self.external is None


@dataclass(frozen=True)
class DatabaseServer:
    """The bundled PostgreSQL, as its clients dial it."""

    service: str
    port: int
    image: str
    # (service, port) of the transaction pooler in front of it, when one runs: `pooled` claims'
    # clients dial it instead of the server.
    pooler: tuple[str, int] | None = None

    def address(self, pooled: bool) -> tuple[str, int]:
        """Where a client of a claim (pooled or not) dials."""
        return self.pooler if pooled and self.pooler is not None else (self.service, self.port)


@dataclass(frozen=True)
class KeptFile:
    """A secret file its part cannot regenerate without breaking something (a server's federation
    identity, every session): the backup saves it, the restore brings it back."""

    name: str  # the shared secret (Contribution.shared_secrets) holding it; its name in a snapshot
    path: str  # where the part's services read it


@dataclass(frozen=True)
class MediaStore:
    """The homeserver's media: a volume its services mount (the backup reads it)."""

    volume: str
    path: str
    owner: str  # "uid:gid" that owns the files
    services: tuple[str, ...]  # the services that mount it


@dataclass(frozen=True)
class MetricsTarget:
    """An endpoint that serves Prometheus metrics: what a monitoring part scrapes."""

    service: str
    port: int
    path: str = "/metrics"
    role: str = ""  # what the process does (a worker role), for per-role alerts and panels
    # The scrape job its series carry (every Synapse process: "synapse"); empty: the service's name.
    job: str = ""
    # The endpoint does not speak Prometheus's format but an exporter reads it: "nginx" (a
    # stub_status page), "postgres" or "redis" (the server itself). The monitoring part runs
    # that exporter, named `exporter_service`, and the owner admits it as a client.
    exporter: str = ""

    @property
    def job_name(self) -> str:
        return self.job or self.service

    @property
    def exporter_service(self) -> str:
        return f"{self.exporter}-exporter" if self.exporter else ""


@dataclass(frozen=True)
class OAuthClient:
    """A service that logs its users in through the stack's MAS (OAuth 2.0 authorization code):
    MAS registers it from its config, generates its secret and hands it to the client's part as
    the shared secret `secret` (Contribution.shared_secrets)."""

    name: str
    client_id: str  # a ULID: MAS keys its clients by it
    redirect_uris: tuple[str, ...]
    # The services that dial MAS's token and userinfo endpoints (MAS admits them as clients).
    services: tuple[str, ...]

    @property
    def secret(self) -> str:
        return f"mas_client_{self.name}"


@dataclass(frozen=True)
class Probe:
    """A service the stack's users dial directly, which Prometheus checks from outside through
    the blackbox exporter: `tcp` (the port accepts connections) or `http` (it answers 2xx)."""

    service: str
    port: int
    module: str  # "tcp" or "http"
    what: str  # what stops when the probe fails, for the alert's text
    # The probe belongs to calls (Element Call's LiveKit, coturn): its alert names calls.
    calls: bool = False


@dataclass(frozen=True)
class ScheduledJob:
    """A job that runs on a schedule and, being scraped by nobody, pushes `<job>_last_success_
    timestamp_seconds` after each success to the view's metrics push target."""

    job: str  # its series' job label and metric prefix ("backup")
    schedule: str  # its cron expression (config/cron.py); empty when it runs every_minutes
    what: str  # what a success is, for the alert's text ("backup")
    every_minutes: int | None = None  # a job that runs again this long after each run ends


@dataclass(frozen=True)
class Writer:
    """A service the restore stops while it replaces the data, and starts again after."""

    service: str
    stateful: bool  # it holds a volume of its own (a StatefulSet on Kubernetes)


@dataclass(frozen=True)
class Homeserver:
    """What other parts need of the homeserver: its processes (the clients of what they serve),
    main's address on the private network, and the settings tools read from its config."""

    processes: tuple[str, ...]
    internal_url: str
    # homeserver.yaml keys for tools that read the homeserver's settings (MAS's syn2mas), given
    # the bundled database server: server_name, public_baseurl, the database section and the
    # registration keys, without secret paths.
    tool_config: Callable[[DatabaseServer | None], dict[str, Any]]


@dataclass(frozen=True)
class EdgeRoutes:
    """Routes a part adds to one of the routing proxy's virtual hosts, as nginx text (the part
    owns its routing; components/nginx.py has the shared vocabulary). The proxy renders the server
    block: its listeners and certificate, every part's preamble, the well-known documents, every
    part's locations (by `order`), and a 404 for the rest."""

    host_key: str  # the endpoint key of the host (Endpoint.key)
    order: int  # among the routes of one host: lower first (a more specific route first)
    http: tuple[str, ...] = ()  # lines of nginx's http block: maps, upstream pools
    preamble: tuple[str, ...] = ()  # server-block lines before any location
    locations: tuple[str, ...] = ()
    # The names nginx resolves (it resolves once: its run script waits for them and reloads when
    # an address changes), and the services it sends requests to.
    upstream_hosts: tuple[str, ...] = ()
    routed: tuple[str, ...] = ()
    waits: tuple[Wait, ...] = ()  # what the proxy waits for before it starts


@dataclass
class Contribution:
    """What a built part hands the stack."""

    parent: pulumi.Resource | None = None  # the part's component resource (its services' parent)
    services: list[Service] = field(default_factory=list)
    # Shared homeserver keys, merged across parts (merge_homeserver).
    homeserver: dict[str, Any] = field(default_factory=dict)
    # Secret files every Synapse process reads (path under HOMESERVER_SECRETS_DIR -> value).
    secret_files: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    outputs: dict[str, object] = field(default_factory=dict)
    # For the routing proxy: certificate files and volumes, and whether ACME renews what it reads.
    proxy_files: list[File] = field(default_factory=list)
    proxy_volumes: list[Volume] = field(default_factory=list)
    proxy_watches_acme: bool = False
    # A certificate the program holds for edge hostnames (the Kubernetes Ingress reads it).
    edge_certificate: EdgeCertificate | None = None
    # endpoint key -> the CNAME target a resource provides (Endpoint.cname).
    cname_targets: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    # Generated secrets a later part reads by name: the backup dumps the databases with their
    # passwords and saves the key files that cannot be regenerated ("postgres", "signing_key").
    shared_secrets: dict[str, pulumi.Input[str]] = field(default_factory=dict)


@dataclass
class BuildContext:
    platform: Platform
    view: StackView
    # The one explicit Cloudflare provider (None when Cloudflare is off): every user of the account
    # shares it, so there is one token to rotate.
    cloudflare_provider: Any = None
    built: list[Contribution] = field(default_factory=list)  # the parts built before this one


class Part:
    """The declaration of one part. Subclasses override what they have."""

    name: ClassVar[str]  # the component resource's name, and the part's name in messages
    stage: ClassVar[int] = BEFORE_CLUSTER
    # Config keys enabled(), endpoints() and services() read: rules judging them run only when
    # these keys validated (config/checks.py).
    reads: ClassVar[tuple[str, ...]] = ()
    # The keys enabled() reads: whether the part runs (the stack-wide rules that depend on which
    # parts run read these of every part).
    switches: ClassVar[tuple[str, ...]] = ()
    # The part whose component owned this part's resources before they moved here (their aliases).
    formerly_part: ClassVar[str | None] = None

    def enabled(self, cfg: StackConfig) -> bool:
        return True

    def needed(self, cfg: StackConfig, view: StackView) -> bool:
        """Whether an enabled part has anything to do in this stack (a part without endpoints may
        decide from the view: TLS, when no hostname needs a certificate)."""
        return True

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        return []

    def well_known_client(self, cfg: StackConfig) -> dict[str, object]:
        """Keys it adds to the client well-known document."""
        return {}

    def edge_routes(self, cfg: StackConfig) -> list[EdgeRoutes]:
        """Routes it adds to the routing proxy's virtual hosts."""
        return []

    def edge_service(self, cfg: StackConfig) -> str | None:
        """The name of the service every public site goes through, when this part runs it."""
        return None

    def database_claims(self, cfg: StackConfig) -> list[DatabaseClaim]:
        """The databases its services use."""
        return []

    def database_server(self, cfg: StackConfig) -> DatabaseServer | None:
        """The PostgreSQL server it runs for the stack's claims."""
        return None

    def database_readers(self, cfg: StackConfig) -> tuple[str, ...]:
        """Its services that dial every claimed database without a claim of their own (the
        backup's dump): the bundled server admits them beside the claimants' clients."""
        return ()

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        """Its services' Prometheus endpoints."""
        return []

    def oauth_clients(self, cfg: StackConfig) -> list[OAuthClient]:
        """Its services that log users in through the stack's MAS, when MAS runs."""
        return []

    def probes(self, cfg: StackConfig) -> list[Probe]:
        """Its services that users dial directly and Prometheus checks from outside."""
        return []

    def scheduled_jobs(self, cfg: StackConfig) -> list[ScheduledJob]:
        """Its scheduled jobs that report their last success (to the metrics push target)."""
        return []

    def kept_files(self, cfg: StackConfig) -> list[KeptFile]:
        """Its secret files that cannot be regenerated."""
        return []

    def media_store(self, cfg: StackConfig) -> MediaStore | None:
        return None

    def writers(self, cfg: StackConfig) -> list[Writer]:
        """Its services that a restore stops while it replaces the data (what writes the
        databases or the media, and what lets clients reach them)."""
        return []

    def homeserver(self, cfg: StackConfig) -> Homeserver | None:
        """The homeserver it runs."""
        return None

    def backup_now(self, cfg: StackConfig) -> str | None:
        """The operator's command that takes a backup now and prints its name, when this part
        takes the stack's backups (a procedure that changes data takes one first)."""
        return None

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        """The secrets services() reads (stand-ins when a check calls it)."""
        return ()

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return []

    def check(self, cfg: StackConfig, view: StackView) -> list[Finding]:
        """The part's own config rules (run when the keys in `reads` validated)."""
        return []

    def together(self, cfg: StackConfig, view: StackView, services: list[Service]) -> list[list[str]]:
        """Groups of services (of `services`, what services() returned, and others') that share a
        volume or a private network: one host each."""
        return []

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        raise NotImplementedError


class Component(pulumi.ComponentResource):
    """A part's component resource: the parent of everything the part declares."""

    def __init__(self, type_name: str, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__(f"matrix-stack:index:{type_name}", name, None, opts)


def derive(value: pulumi.Input[str], render: Callable[[str], str]) -> pulumi.Input[str]:
    """A file rendered from a secret: plain when the secret is a plain stand-in (checks, tests),
    an Output under Pulumi."""
    if isinstance(value, str):
        return render(value)
    return pulumi.Output.from_input(value).apply(render)  # type: ignore[arg-type]


def ws_url(http_url: str) -> str:
    """The WebSocket URL of a host: wss:// behind TLS, ws:// on a plain-HTTP local stack."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://"):]
    return "ws://" + http_url[len("http://"):]


def merge_homeserver(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge one part's homeserver keys into the collected ones: dicts deeply, lists as a union
    in order (two parts may both widen ip_range_whitelist), anything else last one wins."""
    for key, value in extra.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merge_homeserver(current, value)
        elif isinstance(value, list) and isinstance(current, list):
            into[key] = current + [v for v in value if v not in current]
        else:
            into[key] = value
