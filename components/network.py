"""Address ranges the stack reasons about, each kept once."""

from __future__ import annotations

import ipaddress

# Never fetch URL previews from, nor push to, these (Synapse's documented list of private and
# reserved ranges): Synapse's url_preview_ip_range_blacklist and ntfy's refusal of pushes to them.
PRIVATE_RANGES = [
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "192.0.0.0/24",
    "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8",
    "fec0::/10",
]

# Where a private proxy in front of a service connects from: a Docker host's private networks or a
# Kubernetes pod network (RFC 1918 and IPv6 unique local addresses).
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
LOOPBACK = ("127.0.0.0/8", "::1/128")


def host_network(host: str) -> tuple[str, ...]:
    """The one-address network of a host given as an address (a service dials it although it may
    be private: Service.egress_networks); nothing for a name, reached through DNS."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ()
    return (f"{address}/{address.max_prefixlen}",)
