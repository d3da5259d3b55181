"""Which Cloudflare DNS records the stack needs, and whether Cloudflare proxies each. Pure.

One record set per public endpoint (components/part.Endpoint). Every HTTP(S) host is served by
the routing proxy on 443 (federation included, through the
/.well-known/matrix/server delegation the proxy serves: Cloudflare does not proxy 8448), so they
all point at cloudflare.origin_ip. Media hosts are DNS-only whatever the settings: LiveKit's
TURN domain and coturn must resolve to the real address, and WebRTC cannot pass Cloudflare's
HTTP proxy (deployment-pitfalls.md 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.part import Endpoint
from config.model import StackConfig

CLOUDFLARE_UPLOAD_LIMIT_MB = 100  # request bodies above this get 413 at the edge (Free and Pro)


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


def plan(cfg: StackConfig) -> list[Record]:
    """The records, one set per distinct hostname (components/catalog.endpoints).

    Two endpoints may share a hostname (hostnames.matrix equal to the server name, say): one record
    then, DNS-only if any endpoint on it needs the real address.
    """
    from components.catalog import endpoints

    proxied_http = proxy_http(cfg)
    merged: dict[str, list[Endpoint]] = {}
    for host, endpoint in endpoints(cfg):
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


def _megabytes(size: str) -> int:
    number, unit = int(size[:-1]), size[-1]
    return number * {"K": 1, "M": 1024, "G": 1024 * 1024}[unit] // 1024


def check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    if not cfg.cloudflare.enabled:
        return []
    problems: list[tuple[str, object, str]] = []
    if proxy_http(cfg) and _megabytes(cfg.synapse.max_upload_size) > CLOUDFLARE_UPLOAD_LIMIT_MB:
        problems.append(("synapse.max_upload_size", cfg.synapse.max_upload_size,
                         f"at most {CLOUDFLARE_UPLOAD_LIMIT_MB}M while Cloudflare proxies the Matrix host "
                         "(it answers 413 above that); or set cloudflare.proxy_http: false"))
    return problems
