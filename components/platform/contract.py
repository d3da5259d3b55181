"""The contract every target adapter fulfils. mypy holds both adapters to it.

Two layers, so the pure renderers can ask target questions without loading a target's SDK:

- `Target`: facts about where the stack runs, answered from the config alone (cheap, pure):
  how one service reaches another, whether the routing proxy terminates TLS itself, which
  client-address ranges it trusts, the public ports, target-specific config problems, what the
  target can run (`scheduled_steps`); and the operator's verbs the parts' procedures (restore,
  migrations, admin commands) are written in: exec in a service, stop and start services, run an
  image once, hand the operator's secrets and files to those runs, name a volume. Renderers,
  procedures and config checks use it; none of them branches on the target's type.
- `Platform`: a Target that also turns the whole service graph into Pulumi resources in one call
  (`realize`) and keeps the offline render's view of what it declared (`manifests`).

Adding a target is one Target class, one Platform class and one entry in the registry,
`targets.TARGETS` (docs/adding-a-target.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import pulumi

from config.checks import Finding

from .spec import EdgeCertificate, Service


@dataclass
class Graph:
    """Everything the stack runs: each service with the component resource that owns it, and the
    certificate the program holds for the edge (None when it holds none)."""

    services: list[tuple[Service, pulumi.Resource]] = field(default_factory=list)
    # (component, the component that owned its services' resources before): those resources keep
    # their state through an alias of the former parent.
    former_parents: list[tuple[pulumi.Resource, pulumi.Resource]] = field(default_factory=list)
    edge_certificate: EdgeCertificate | None = None
    # The component resource that owns the held certificate (its Kubernetes Secret is parented there).
    edge_certificate_owner: pulumi.Resource | None = None

    def add(self, services: Sequence[Service], parent: pulumi.Resource,
            former_parent: pulumi.Resource | None = None) -> None:
        self.services += [(s, parent) for s in services]
        if former_parent is not None:
            self.former_parents.append((parent, former_parent))

    def aliases(self, parent: pulumi.Resource | None) -> list[pulumi.Alias]:
        """The aliases that carry a resource declared under `parent` over from the component that
        owned it before."""
        return [pulumi.Alias(parent=former) for now, former in self.former_parents if now is parent]


# ---------------------------------------------------------------- the operator's verbs


@dataclass(frozen=True)
class OperatorStep:
    """One step of an operator's procedure: why, and the exact command (run where `pulumi` runs)."""

    why: str
    command: str


class Workload(NamedTuple):
    """A service an operator's verb acts on. `stateful`: it owns its volumes (a Kubernetes
    StatefulSet rather than a Deployment)."""

    name: str
    stateful: bool = False


@dataclass(frozen=True)
class Mount:
    """One of the stack's volumes (spec.Volume.name) in a one-shot run, at `path`."""

    volume: str
    path: str
    read_only: bool = False


@dataclass(frozen=True)
class Handover:
    """What one-shot runs take from the operator's shell: environment variables holding secrets,
    and files in the working directory. A target that cannot pass them straight through stores
    them for the runs first and removes them at the end (Target.hand_over)."""

    name: str  # names what the target stores them in, and its runs
    purpose: str  # the procedure, in its steps' words ("restore")
    secret_env: tuple[str, ...]
    secrets_text: str  # what the variables are, in the steps' words ("The password (and credentials)")
    # (file name in the working directory, where a run would have it); may be moved (Session.files)
    files: tuple[tuple[str, str], ...] = ()
    files_label: str = "files"
    files_text: str = "the files"


@dataclass(frozen=True)
class Session:
    """A handover as a target carries it out: the steps before the runs, the steps after them,
    and where each handed-over file is inside a run."""

    before: tuple[OperatorStep, ...]
    after: tuple[OperatorStep, ...]
    files: Mapping[str, str]


@dataclass(frozen=True)
class OneShot:
    """An image run once from the operator's shell, its output (and, with `stdin`, its input)
    piped through the operator's."""

    name: str  # what the target names the run (a pod), within the handover's names
    container: str
    image: str
    args: tuple[str, ...]
    handover: Handover
    # `args` are the whole command, not arguments to the image's entrypoint (on Docker the image's
    # entrypoint receives them and runs them as a command, as the official images do).
    command: bool = False
    # With `command`: args[0] replaces the image's entrypoint on Docker too, for an image whose
    # entrypoint runs no other command (Synapse's start.py knows only its own modes).
    replaces_entrypoint: bool = False
    secret_env: tuple[str, ...] = ()  # handed-over variables the run reads
    env: tuple[tuple[str, str], ...] = ()  # plain values
    mounts: tuple[Mount, ...] = ()
    files: bool = False  # the handed-over files, where Session.files says
    stdin: bool = False
    beside: str | None = None  # run where this service runs (its Docker host), else anywhere
    # The service whose network rules the run follows (Kubernetes: its pod is selected by that
    # service's NetworkPolicies, so it dials what the service may); a target without network
    # policies ignores it.
    network_as: str | None = None


@dataclass(frozen=True)
class Terms:
    """How an operator's procedure speaks of the target's things."""

    place: str  # what is lost when everything is ("host", "cluster")
    workloads: str  # what `pulumi up` recreates ("containers", "workloads")
    volume: str  # a volume as the target holds it ("volume", "claim")
    # `start` starts the services one after another in the order given; else together, each at
    # the stack's replica count.
    starts_in_order: bool


@dataclass(frozen=True)
class Host:
    """A machine the config places services on, and the address its engine answers on."""

    name: str
    url: str


class Target(Protocol):
    kind: str  # the target config's `kind`, its key in the registry (targets.TARGETS)
    terms: Terms
    # Whether a scheduled service runs its `steps` (spec.Service.steps: other images sharing its
    # volumes) before its command. Without them, a step's work is a service of its own, which the
    # scheduled one asks for it.
    scheduled_steps: bool
    # Whether the platform itself reports how full each of the stack's volumes is (Kubernetes:
    # the kubelet's kubelet_volume_stats_* per claim, which kube-prometheus-stack scrapes). Where
    # it does not, the monitoring part runs node exporter over the host's filesystems.
    reports_volume_usage: bool
    # Whether a cache volume (spec.Volume.cache) is one store that the services mounting it on
    # a machine share and that outlives them (Docker: the host's named volume), so something
    # must empty it; otherwise each instance's own, gone with it (Kubernetes: the pod's emptyDir,
    # bounded by its size limit).
    shares_caches: bool

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        """(address, port, crosses_hosts) the consumer dials to reach `service` on `port`."""
        ...

    def proxy_terminates_tls(self) -> bool:
        """Whether the routing proxy itself serves HTTPS (else something in front of it does, or
        the stack is plain HTTP)."""
        ...

    def per_machine(self, service: str) -> tuple[str, ...]:
        """The names `service` runs under, once on each machine the stack's volumes live on
        (Docker: each host), for what reads the machine itself; a target whose platform reports
        on its machines (reports_volume_usage) runs none."""
        ...

    def trusted_proxy_ranges(self) -> tuple[str, ...]:
        """Client-address ranges the proxy trusts X-Forwarded-For from, besides Cloudflare's edge
        (the target's own front door)."""
        ...

    def public_port(self, scheme: str) -> int:
        """The port clients reach the proxy's `scheme` (http or https) on."""
        ...

    def proxy_host_port(self, scheme: str) -> int | None:
        """The host port the proxy's `scheme` port is published on, when the target publishes it."""
        ...

    def admin_command(self, service: str, stateful: bool, command: str) -> str:
        """The operator's command that runs `command` inside `service`, interactively (a terminal)."""
        ...

    def host_of(self, service: str) -> Host | None:
        """The machine the config places `service` on; None where a scheduler places it."""
        ...

    def volume_name(self, volume: str) -> str:
        """The name the target stores the stack's volume `volume` (spec.Volume.name) under."""
        ...

    def exec_command(self, service: str, stateful: bool, command: str, *, stdin: bool = False) -> str:
        """The operator's command that runs `command` inside `service`, non-interactively (with
        `stdin`, reading the operator's input)."""
        ...

    def stop(self, services: Sequence[Workload], label: str | None = None) -> list[str]:
        """The commands that stop `services` (given in start order), keeping their state. `label`:
        a label they all carry and nothing else does, which a target may select them by."""
        ...

    def start(self, services: Sequence[Workload], stack: str) -> list[str]:
        """The commands that start `services` of the stack `stack` again after `stop` (see
        Terms.starts_in_order)."""
        ...

    def hand_over(self, handover: Handover) -> Session:
        """How the runs of a procedure get the operator's secrets and files."""
        ...

    def run_once(self, run: OneShot) -> str:
        """The operator's command that runs `run` (after hand_over's `before` steps)."""
        ...

    def run_scheduled(self, service: str, command: str, user: str | None) -> str:
        """The operator's command that runs a scheduled service's `command` now, once, where and
        as its schedule runs it (as `user`, the service's: Service.user), printing its output
        and failing when it fails."""
        ...

    def certificate_problems(self, direct_hostnames: Sequence[str]) -> list[Finding]:
        """What the target lacks to serve the hostnames reached directly (not through Cloudflare)
        with publicly trusted certificates."""
        ...

    def placement_problems(self, services: Sequence[str], together: Sequence[Sequence[str]]) -> list[Finding]:
        """Whether the services fit the target's placement rules (hosts, groups that share state)."""
        ...


class Platform(Target, Protocol):
    # The offline render's view of the declared objects (manifest key -> object, secrets masked);
    # empty for a target without manifests.
    @property
    def manifests(self) -> Mapping[str, Mapping[str, Any]]: ...

    def realize(self, graph: Graph) -> None:
        """Declare the Pulumi resources of every service in the graph. Called once."""
        ...
