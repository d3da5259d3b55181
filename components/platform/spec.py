"""The target-neutral description of what runs.

Components describe their services with these types; a platform adapter (docker or kubernetes)
turns them into resources. Nothing here knows about either target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi


@dataclass(frozen=True)
class File:
    """A file a service reads, at an absolute path inside its container."""

    path: str
    content: pulumi.Input[str]
    secret: bool = False
    mode: int = 0o444
    # Files whose content is the same for several services (the shared homeserver.yaml) carry
    # one group name, so targets can store them once (one ConfigMap) and roll every reader.
    group: str | None = None
    # The service applies a change of this file itself, while it runs (the proxy tests its new
    # nginx.conf and reloads): a target may deliver the change to the running service instead of
    # restarting it. A service's live files share one directory holding nothing else, and it
    # names the URL that answers what it applies (Service.live_applied_url).
    live: bool = False
    # Labels for the object a target stores the file in (Kubernetes: its ConfigMap or Secret), for
    # tools that find files by label (a Grafana sidecar picks up dashboards labelled so).
    object_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    # public: reachable from outside the private network (published on the Docker host, or a
    # LoadBalancer on Kubernetes). Only the proxy and media ports are public.
    public: bool = False
    # The host port when published; defaults to the container port.
    host_port: int | None = None


@dataclass(frozen=True)
class PortRange:
    """A contiguous public range (LiveKit's RTC UDP ports, the TURN relay range)."""

    name: str
    start: int
    end: int
    protocol: Literal["tcp", "udp"] = "udp"


@dataclass(frozen=True)
class Volume:
    """Persistent state. `name` is the logical volume, shared by services that mount it."""

    name: str
    path: str
    size: str = "10Gi"
    read_only: bool = False
    # "uid:gid" that must own the volume's root: a fresh Docker volume mounted where the image
    # has no directory is root's, and non-root processes could not write it (Kubernetes uses
    # fsGroup instead).
    owner: str | None = None
    # The owner takes the whole tree, not only the root: what a service that used to run as
    # root left there becomes its user's. Only for small volumes: the owner walks every file.
    owner_recursive: bool = False
    # A cache each instance keeps for itself, refilled from elsewhere (media fetched back from a
    # bucket): a target with pods gives each pod its own, bounded by `size` and emptied when the
    # pod restarts (an emptyDir); a Docker host keeps it as a volume. It makes no service stateful.
    cache: bool = False


@dataclass(frozen=True)
class ImageBuild:
    """The recipe an image is built from where the target builds images (each Docker host, under
    the service's image name); a target that cannot build pulls the image by that name from a
    registry the operator pushed it to. `dockerfile` is relative to the project's root; its
    context is the Dockerfile's directory."""

    dockerfile: str
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ProbeJob:
    """Targets a blackbox exporter (`prober`: its service and port) probes with one `module`,
    scraped under the job name `job` with `labels` on every series; each target becomes the
    series' instance."""

    job: str
    module: str
    targets: tuple[str, ...]
    prober: tuple[str, int]
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HealthCheck:
    # What Docker runs in the container; empty when the image has nothing to check with.
    command: tuple[str, ...]
    interval_s: int = 15
    timeout_s: int = 5
    retries: int = 5
    start_period_s: int = 30
    # Kubernetes probes an HTTP path when given (the image may lack curl for exec probes).
    http_path: str | None = None
    http_port: int | None = None


@dataclass(frozen=True)
class Wait:
    """A readiness probe of another service, run with this service's image until it succeeds,
    before this service starts (Docker: in the start command, since Docker does not wait on
    health; Kubernetes: an init container)."""

    service: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Gate:
    """A script of the target's operator verbs, run where `pulumi` runs, before its service is
    created or replaced, whenever `trigger` changes, once the services in `after` run. A non-zero
    exit stops the update with the script's output, before the service is touched (a database
    dump and a schema check before Synapse's main process starts a new release)."""

    name: str
    script: str
    trigger: str
    after: tuple[str, ...] = ()
    # Said instead when only the script changed (the trigger did not): nothing is run again.
    unchanged: str = "nothing to do"


@dataclass(frozen=True)
class Step:
    """A one-shot command in an image of its own, run to completion before each run of a
    scheduled service, in the same pod (a Kubernetes init container), with the service's files,
    volumes and scratch directories. Kubernetes only: a Docker host has no pod, so a component
    needing a step there runs it as a service of its own."""

    name: str
    image: str
    command: tuple[str, ...]
    user: str | None = None  # "uid:gid"; None: the image's own


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    memory_limit: str = "1Gi"


@dataclass(frozen=True)
class Edge:
    """What the routing proxy serves: its hostnames in a fixed order, and whether they are HTTPS
    (a target that fronts the proxy with its own TLS terminator, such as an Ingress, needs both)."""

    hostnames: tuple[str, ...]
    tls: bool


@dataclass(frozen=True)
class EdgeCertificate:
    """A certificate the program holds for some public hostnames (Cloudflare Origin CA, or the
    operator's own): the PEM chain and its (secret) key, as Pulumi values."""

    hostnames: tuple[str, ...]
    certificate: pulumi.Input[str]
    private_key: pulumi.Input[str]


@dataclass
class Service:
    """One process kind: a container on a Docker host, or a Deployment/StatefulSet on Kubernetes."""

    name: str
    component: str
    image: str
    args: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    env: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    secret_env: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    # Services whose secret env is the same (every Synapse process's database password) carry one
    # group name, so targets can store it once (one Secret) and roll every reader, as File.group.
    secret_env_group: str | None = None
    files: list[File] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    port_ranges: list[PortRange] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)
    health: HealthCheck | None = None
    replicas: int = 1
    user: str | None = None  # "uid:gid"
    # Why the service runs as a user other than its image's own, where it does: a command of ours
    # that needs none of the files the image gives its user (image_facts.violations).
    other_user_because: str | None = None
    read_only_root: bool = False
    writable_paths: tuple[str, ...] = ()  # scratch dirs (tmpfs / emptyDir) when the root is read-only
    # (host directory, path): a directory of the machine the service runs on, mounted read-only
    # with the mounts below it (node exporter reads the host's filesystems). Only a target whose
    # `reports_volume_usage` is False is given such a service; it is a hardening exception there.
    host_paths: tuple[tuple[str, str], ...] = ()
    resources: Resources = field(default_factory=Resources)
    # A one-shot check the target runs before the service (re)starts (Synapse's config check).
    init_args: tuple[str, ...] | None = None
    # Services that must be ready first, in order (PostgreSQL before main, main before workers).
    waits: tuple[Wait, ...] = ()
    # Roles that scale out get a PodDisruptionBudget on Kubernetes (one per role, see role_label).
    scalable: bool = False
    # Never two at once, even while it is replaced: the old instance stops before the new one
    # starts (Synapse's main, which migrates the schema, and its single-writer roles). Docker
    # replaces every container that way; a Kubernetes Deployment recreates instead of rolling.
    exclusive: bool = False
    # Who may connect (NetworkPolicy on Kubernetes): None = anyone on the private network.
    allowed_clients: tuple[str, ...] | None = None
    # A data store (PostgreSQL, Redis): on Docker it sits on a network of its own, which only its
    # allowed_clients join (Kubernetes' NetworkPolicies admit only them already).
    data_store: bool = False
    metrics_port: int | None = None
    metrics_path: str = "/metrics"
    # The labels a scraper sets on its series where the scrape job does not name them (a
    # ServiceMonitor's relabelings): the job and role the stack's alerts select, and the
    # instance an exporter reports for.
    metrics_labels: tuple[tuple[str, str], ...] = ()
    # Its series carry their own job labels, to be kept (what the Pushgateway holds for jobs).
    metrics_honor_labels: bool = False
    # Prometheus rule groups (a rule file's `groups`) this service evaluates: a target whose
    # cluster runs the Prometheus Operator (Kubernetes with service_monitors) hands them to it
    # too, as a PrometheusRule.
    alert_rules: tuple[Mapping[str, Any], ...] = ()
    # The blackbox probes this service schedules (its prometheus.yml's probe jobs): such a target
    # hands them to the Prometheus Operator too, as Probe objects.
    probe_jobs: tuple[ProbeJob, ...] = ()
    # The label (in `labels`) whose value names the role this service is one instance of
    # (Synapse's worker role). Targets treat a role's instances together: one ServiceMonitor, one
    # NetworkPolicy and, when scalable, one PodDisruptionBudget per role, not per service, so a
    # node drain takes down at most one instance of a role at a time.
    role_label: str | None = None
    # (service, port) pairs this service dials; a target whose services live on several hosts
    # publishes those ports on the owning host (placement.reach says when).
    reaches: tuple[tuple[str, int], ...] = ()
    # Why this service dials the internet (federation, push gateways, remote media, OIDC
    # providers, a backup repository ...); empty: it never does. A target that restricts egress
    # (Kubernetes NetworkPolicies) opens the public internet to exactly the services naming a
    # reason; the Docker target leaves every container's egress open and ignores it.
    egress_internet: tuple[str, ...] = ()
    # Networks off the cluster it dials although they are private, so not part of the internet
    # above (a private federation, a push gateway or a database on a LAN): CIDRs. The Docker
    # target ignores it too.
    egress_networks: tuple[str, ...] = ()
    # The public entry point (the routing proxy): the hostnames it serves, for the target's own
    # front door (Kubernetes Ingress). None for every other service.
    edge: Edge | None = None
    # The services its files route to (the proxy's upstreams): a target declares them first and
    # delivers a change of its live files only once they serve (Docker: once they are healthy),
    # so a new route never points at a process that is not there yet. The service follows their
    # addresses itself (the proxy's address watch), so their replacement never restarts it.
    routes_to: tuple[str, ...] = ()
    # With live files: a URL on the service that answers the sha256 (hex) of the live files'
    # contents, concatenated in path order, that it applies now; a target that delivers live
    # files waits for it to answer the new digest (the reload has happened and drained).
    live_applied_url: str | None = None
    # Two instances of the service may run at once for a moment (no stream it writes, no duty
    # only one process may hold, no host port): a target may start the new instance before it
    # stops the old one, so the role keeps serving while its instances are replaced. Without
    # it, the old instance stops first (one restart).
    start_before_stop: bool = False
    # Most images run fine with no capabilities (Pod Security `restricted` admits only
    # NET_BIND_SERVICE); a service that must act as root (the certificate copy's chown, Docker
    # only) keeps the few it needs.
    drop_capabilities: bool = True
    capabilities_add: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    # A cron expression (five fields, UTC; config/cron.py): the service runs to completion on
    # this schedule instead of running all the time (Kubernetes: a CronJob; Docker: BusyBox
    # crond in the service's image runs its command).
    schedule: str | None = None
    # Steps run before each scheduled run (Kubernetes only, see Step).
    steps: tuple[Step, ...] = ()
    # How `image` is built, when no registry ships it (see ImageBuild).
    build: ImageBuild | None = None
    # Scripts run where `pulumi` runs before the service is created or replaced (see Gate).
    gates: tuple[Gate, ...] = ()

    @property
    def stateful(self) -> bool:
        return any(not v.cache for v in self.volumes)


@dataclass
class Site:
    """A public virtual host the routing proxy serves for a component (call., jwt., ntfy. ...)."""

    hostname: str
    upstream_service: str
    upstream_port: int
    websockets: bool = False
    max_body: str = "1M"
    # extra nginx location blocks, rendered as given (e.g. a JSON document to return)
    static_json: dict[str, str] = field(default_factory=dict)
    # The origins whose pages may embed the site in a frame (besides its own); None: no page may.
    frame_ancestors: tuple[str, ...] | None = None
