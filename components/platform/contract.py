"""The contract every target adapter fulfils. mypy holds both adapters to it.

Two layers, so the pure renderers can ask target questions without loading a target's SDK:

- `Target`: facts about where the stack runs, answered from the config alone (cheap, pure):
  how one service reaches another, whether the routing proxy terminates TLS itself, which
  client-address ranges it trusts, the public ports, the admin command, target-specific config
  problems. Renderers and config checks use it.
- `Platform`: a Target that also turns the whole service graph into Pulumi resources in one call
  (`realize`) and keeps the offline render's view of what it declared (`manifests`).

Adding a target is one Target class, one Platform class and a branch in `targets.target_of` /
`platform.make_platform` (docs/adding-a-target.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Target(Protocol):
    kind: str

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        """(address, port, crosses_hosts) the consumer dials to reach `service` on `port`."""
        ...

    def proxy_terminates_tls(self) -> bool:
        """Whether the routing proxy itself serves HTTPS (else something in front of it does, or
        the stack is plain HTTP)."""
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
        """The operator's command that runs `command` inside `service`."""
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
