"""The parts of the stack, one line each, imported by stack.py alone. Their order is the order of
the public endpoints (DNS records, certificates) and of the database claims; the stack builds
them sorted by stage.

Adding a part is one declaration (components/part.py) and one line here (docs/adding-a-part.md).
The modules imported here are declarations only: each part loads its SDKs inside `build`.
"""

from __future__ import annotations

from components.backup import Backup
from components.coturn import Coturn
from components.dns import PublicDns
from components.edge import EdgeProxy
from components.element_call import ElementCall
from components.element_web import ElementWeb
from components.mas import Mas
from components.monitoring import Monitoring
from components.ntfy import Ntfy
from components.part import Part
from components.postgres import BundledPostgres
from components.synapse import SynapseCluster
from components.tls import Tls

PARTS: list[Part] = [
    SynapseCluster(),
    EdgeProxy(),
    ElementCall(),
    ElementWeb(),
    Ntfy(),
    Coturn(),
    Mas(),
    # Before the bundled PostgreSQL: it hands it its exporter's database password.
    Monitoring(),
    BundledPostgres(),
    Tls(),
    PublicDns(),
    Backup(),
]


def switches() -> tuple[str, ...]:
    """The config keys that decide which parts run, from every part's declaration."""
    keys: list[str] = []
    for part in PARTS:
        keys += [key for key in part.switches if key not in keys]
    return tuple(keys)
