"""Which Cloudflare DNS records the stack needs, and whether Cloudflare proxies each. Pure: a
function of the config and the endpoints the parts declare (the view computes it once).

One record set per public endpoint (components/part.Endpoint). Every HTTP(S) host is served by
the routing proxy on 443 (federation included, through the
/.well-known/matrix/server delegation the proxy serves: Cloudflare does not proxy 8448), so they
all point at cloudflare.origin_ip. Media hosts are DNS-only whatever the settings: LiveKit's
TURN domain and coturn must resolve to the real address, and WebRTC cannot pass Cloudflare's
HTTP proxy (deployment-pitfalls.md 1.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from components.part import Endpoint
from config.model import StackConfig


@dataclass(frozen=True)
class Record:
    key: str  # stable resource-name part: what the host is for
    name: str  # FQDN: Cloudflare returns FQDNs, a bare label would diff on every refresh
    type: str  # A, AAAA or CNAME
    content: str | None  # None: an Output supplied by the caller (the Pages subdomain)
    proxied: bool


def proxy_http(cfg: StackConfig) -> bool:
    explicit = cfg.cloudflare.proxy_http
    if explicit is not None:
        return explicit
    # An Origin CA certificate is trusted by Cloudflare's edge only: those hosts must be proxied.
    # An ACME HTTP-01 challenge does not survive the proxy: keep DNS-only.
    return cfg.tls_mode == "origin_ca"


def plan(cfg: StackConfig, endpoints: Sequence[tuple[str, Endpoint]]) -> list[Record]:
    """The records, one set per distinct hostname of the endpoints (hostname, endpoint).

    Two endpoints may share a hostname (hostnames.matrix equal to the server name, say): one record
    then, DNS-only if any endpoint on it needs the real address.
    """
    if not cfg.cloudflare.enabled:
        return []
    proxied_http = proxy_http(cfg)
    merged: dict[str, list[Endpoint]] = {}
    for host, endpoint in endpoints:
        merged.setdefault(host, []).append(endpoint)
    ipv4, ipv6 = cfg.cloudflare.origin_ip, cfg.cloudflare.origin_ipv6
    records: list[Record] = []
    for host, group in merged.items():
        first, alone = group[0], len(group) == 1
        if alone and first.cname:
            records.append(Record(first.key, host, "CNAME", None, True))  # Pages serves it: always proxied
            continue
        proxied = proxied_http and all(e.cloudflare_proxy and not e.media for e in group)
        address = (first.address if alone else None) or ipv4
        if address:
            records.append(Record(first.key, host, "A", address, proxied))
        if ipv6 and (not alone or first.ipv6):
            records.append(Record(first.key, host, "AAAA", ipv6, proxied))
    return records
