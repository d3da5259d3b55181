"""The parts of the stack, one line each. Their order is the order of the public endpoints
(DNS records, certificates); `build_order` sorts them by stage for building.

Adding a part is one declaration (components/part.py) and one line here (docs/adding-a-part.md).
The modules imported here are declarations only: each part loads its SDKs inside `build`.
"""

from __future__ import annotations

from components.backup import Backup
from components.coturn import Coturn
from components.dns import PublicDns
from components.element_call import ElementCall
from components.element_web import ElementWeb
from components.mas import Mas, MasDatabase
from components.ntfy import Ntfy
from components.part import Endpoint, Part
from components.synapse import SynapseCluster
from components.tls import Tls
from config.model import StackConfig

PARTS: list[Part] = [
    SynapseCluster(),
    ElementCall(),
    ElementWeb(),
    Ntfy(),
    Coturn(),
    Mas(),
    MasDatabase(),
    Tls(),
    PublicDns(),
    Backup(),
]


def enabled_parts(cfg: StackConfig) -> list[Part]:
    return [part for part in PARTS if part.enabled(cfg)]


def build_order(cfg: StackConfig) -> list[Part]:
    return sorted(enabled_parts(cfg), key=lambda part: part.stage)


def bundled_database_clients(cfg: StackConfig) -> tuple[str, ...]:
    """Every part's services that connect to the bundled PostgreSQL, besides Synapse's own."""
    return tuple(name for part in enabled_parts(cfg) for name in part.database_clients(cfg))


def endpoints(cfg: StackConfig) -> list[tuple[str, Endpoint]]:
    """Every public endpoint of this stack with its hostname, in catalog order: the one list the
    proxy's sites, DNS records, certificates, the zone check and the Ingress hosts derive from."""
    found: list[tuple[str, Endpoint]] = []
    for part in PARTS:
        # endpoints() first: a part without endpoints (TLS, DNS) may decide whether it is enabled
        # from these very endpoints.
        declared = part.endpoints(cfg)
        if declared and part.enabled(cfg):
            found += [(endpoint.hostname(cfg), endpoint) for endpoint in declared]
    return found


def proxy_hostnames(cfg: StackConfig) -> list[str]:
    """Every hostname the routing proxy answers for, in endpoint order, without repeats."""
    names: list[str] = []
    for host, endpoint in endpoints(cfg):
        if endpoint.served_by_proxy and host not in names:
            names.append(host)
    return names
