"""The resolved view of the stack: every fact that crosses parts, computed once from the enabled
parts' declarations (components/part.py) and handed to every part's `services`, `check`,
`together` and `build`. A part never imports another part; what it needs of the rest of the
stack it reads here.

The view is pure: it reads the typed config and the parts' declarations, which read only the
config, so the config checks resolve the same view before any resource exists.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from components.part import (
    DatabaseClaim,
    DatabaseServer,
    EdgeRoutes,
    Endpoint,
    Homeserver,
    KeptFile,
    MediaStore,
    MetricsTarget,
    OAuthClient,
    Part,
    Probe,
    ScheduledJob,
    Writer,
)
from components.platform.contract import Target
from components.platform.spec import Site
from components.platform.targets import target_of
from config.model import StackConfig

from . import certificates as certificate_plan
from . import records as record_plan
from .certificates import Certificate
from .records import Record

T = TypeVar("T")
# The role of the metrics target that accepts pushed metrics (Prometheus's Pushgateway).
PUSHGATEWAY_ROLE = "pushgateway"


@dataclass(frozen=True)
class StackView:
    target: Target
    # Every public endpoint with its hostname, in catalog order: the one list the proxy's sites,
    # DNS records, certificates, the zone check and the Ingress hosts derive from.
    endpoints: tuple[tuple[str, Endpoint], ...]
    records: tuple[Record, ...]
    # hostname -> "origin_ca", "provided" or "acme" (absent: plain HTTP).
    certificate_sources: Mapping[str, str]
    certificates: tuple[Certificate, ...]
    # Keys other parts add to the client well-known document (Element Call's foci).
    well_known_client: Mapping[str, object]
    # The service every public site goes through (None when no part runs one).
    edge_service: str | None
    # The bundled PostgreSQL (None when every database is external).
    database_server: DatabaseServer | None
    # The config and the enabled parts, in catalog order: the facts below derive from the worker
    # table, so they are computed when first read (a rule about another part must not depend on
    # the worker table being valid).
    cfg: StackConfig = field(repr=False, compare=False)
    enabled: tuple[Part, ...] = field(repr=False, compare=False)
    # Names of the parts that run, in catalog order.
    parts: tuple[str, ...] = field(default=())

    @functools.cached_property
    def edge_routes(self) -> tuple[EdgeRoutes, ...]:
        """The routes parts add to the routing proxy's virtual hosts (Synapse's worker routing,
        MAS's logins)."""
        return tuple(route for part in self.enabled for route in part.edge_routes(self.cfg))

    @functools.cached_property
    def databases(self) -> tuple[DatabaseClaim, ...]:
        """Every database the stack's parts claim, in catalog order."""
        return tuple(claim for part in self.enabled for claim in part.database_claims(self.cfg))

    @functools.cached_property
    def database_readers(self) -> tuple[str, ...]:
        """The services that dial every database without claiming one (the backup's dump)."""
        return tuple(name for part in self.enabled for name in part.database_readers(self.cfg))

    @functools.cached_property
    def metrics_targets(self) -> tuple[MetricsTarget, ...]:
        """Every Prometheus endpoint the parts declare, in catalog order."""
        return tuple(target for part in self.enabled for target in part.metrics_targets(self.cfg))

    @property
    def metrics_push_target(self) -> MetricsTarget | None:
        """Where a job that is never scraped (the backup) pushes its metrics: the metrics target
        declared with the role `pushgateway`, when monitoring runs one."""
        return next((t for t in self.metrics_targets if t.role == PUSHGATEWAY_ROLE), None)

    @functools.cached_property
    def probes(self) -> tuple[Probe, ...]:
        """Every directly dialled service the parts declare, in catalog order."""
        return tuple(probe for part in self.enabled for probe in part.probes(self.cfg))

    @functools.cached_property
    def scheduled_jobs(self) -> tuple[ScheduledJob, ...]:
        """Every scheduled job that reports its last success, in catalog order."""
        return tuple(job for part in self.enabled for job in part.scheduled_jobs(self.cfg))

    @functools.cached_property
    def oauth_clients(self) -> tuple[OAuthClient, ...]:
        """The services that log users in through MAS (MAS registers them as its clients)."""
        return tuple(client for part in self.enabled for client in part.oauth_clients(self.cfg))

    @functools.cached_property
    def kept_files(self) -> tuple[KeptFile, ...]:
        return tuple(kept for part in self.enabled for kept in part.kept_files(self.cfg))

    @functools.cached_property
    def media_store(self) -> MediaStore | None:
        return _one(part.media_store(self.cfg) for part in self.enabled)

    @functools.cached_property
    def writers(self) -> tuple[Writer, ...]:
        return tuple(writer for part in self.enabled for writer in part.writers(self.cfg))

    @functools.cached_property
    def homeserver(self) -> Homeserver | None:
        return _one(part.homeserver(self.cfg) for part in self.enabled)

    @functools.cached_property
    def backup_now(self) -> str | None:
        """The command that takes a backup now (None: the stack takes none)."""
        return _one(part.backup_now(self.cfg) for part in self.enabled)

    @property
    def proxy_hostnames(self) -> list[str]:
        """Every hostname the routing proxy answers for, in endpoint order, without repeats."""
        names: list[str] = []
        for host, endpoint in self.endpoints:
            if endpoint.served_by_proxy and host not in names:
                names.append(host)
        return names

    def sites(self, cfg: StackConfig) -> list[Site]:
        """The parts' virtual hosts the proxy forwards to their services."""
        present = {endpoint.key for _host, endpoint in self.endpoints}
        return [site for _host, endpoint in self.endpoints if (site := endpoint.site(cfg, present)) is not None]

    def certificate_for(self, hostname: str) -> Certificate | None:
        for cert in self.certificates:
            if hostname in cert.hostnames:
                return cert
        return None

    @property
    def proxy_terminates_tls(self) -> bool:
        return self.target.proxy_terminates_tls()

    @property
    def runs_acme_client(self) -> bool:
        """The Docker target's certbot container; on Kubernetes cert-manager does that job."""
        return self.proxy_terminates_tls and any(c.source == "acme" for c in self.certificates)


def resolve(cfg: StackConfig, parts: Sequence[Part]) -> tuple[StackView, list[Part]]:
    """The view of the stack the config describes, and the parts it enables (in `parts` order).

    A part's endpoints come first: a part without endpoints (TLS) may decide whether it is needed
    from the certificates those endpoints call for (Part.needed)."""
    enabled = [part for part in parts if part.enabled(cfg)]
    endpoints = tuple((endpoint.hostname(cfg), endpoint) for part in enabled for endpoint in part.endpoints(cfg))
    target = target_of(cfg)
    records = tuple(record_plan.plan(cfg, endpoints))
    proxied = {r.name for r in records if r.proxied}
    hostnames: list[str] = []
    for host, endpoint in endpoints:
        if endpoint.served_by_proxy and host not in hostnames:
            hostnames.append(host)
    sources = certificate_plan.certificate_sources(cfg, hostnames, proxied)
    well_known: dict[str, object] = {}
    for part in enabled:
        well_known.update(part.well_known_client(cfg))
    edge_service = _one(part.edge_service(cfg) for part in enabled)
    view = StackView(
        target=target,
        endpoints=endpoints,
        records=records,
        certificate_sources=sources,
        certificates=tuple(certificate_plan.certificates(sources)),
        well_known_client=well_known,
        edge_service=edge_service,
        database_server=_one(part.database_server(cfg) for part in enabled),
        cfg=cfg,
        enabled=tuple(enabled),
    )
    needed = [part for part in enabled if part.needed(cfg, view)]
    return dataclasses.replace(view, parts=tuple(part.name for part in needed)), needed


def _one(declared: Iterable[T | None]) -> T | None:
    """The one part's declaration of a fact only one part may declare."""
    found = [d for d in declared if d is not None]
    assert len(found) <= 1, f"declared by more than one part: {found}"
    return found[0] if found else None
