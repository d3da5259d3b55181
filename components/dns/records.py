"""Which Cloudflare DNS records the stack needs, and whether Cloudflare proxies each. Pure.

Every HTTP(S) host is served by the routing proxy on 443 (federation included, through the
/.well-known/matrix/server delegation the proxy serves: Cloudflare does not proxy 8448), so they
all point at cloudflare.origin_ip. Media hosts are DNS-only whatever the settings: LiveKit's
TURN domain and coturn must resolve to the real address, and WebRTC cannot pass Cloudflare's
HTTP proxy (deployment-pitfalls.md 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def hosts(cfg: StackConfig) -> list[tuple[str, str, bool]]:
    """(key, hostname, http) for every public host of this stack, in a fixed order."""
    found: list[tuple[str, str, bool]] = [("server", cfg.server_name, True), ("matrix", cfg.host("matrix"), True)]
    if cfg.element_call.enabled:
        found += [("call", cfg.host("call"), True), ("jwt", cfg.host("jwt"), True),
                  ("livekit", cfg.host("livekit"), False)]
    if cfg.element_web.enabled:
        found.append(("app", cfg.host("app"), True))
    if cfg.ntfy.enabled:
        found.append(("ntfy", cfg.host("ntfy"), True))
    if cfg.coturn.enabled:
        found.append(("turn", cfg.host("turn"), False))
    return found


def _turn_address(cfg: StackConfig) -> str | None:
    return cfg.coturn.external_ip


def plan(cfg: StackConfig) -> list[Record]:
    """The records, one set per distinct hostname.

    Two roles may share a hostname (hostnames.matrix equal to the server name, say): one record
    then, DNS-only if any role on it needs the real address.
    """
    proxied_http = proxy_http(cfg)
    merged: dict[str, tuple[str, bool, list[str]]] = {}
    for key, host, http in hosts(cfg):
        proxied = http and proxied_http
        if host in merged:
            first, was, keys = merged[host]
            merged[host] = (first, was and proxied, keys + [key])
        else:
            merged[host] = (key, proxied, [key])
    pages = cfg.element_web.enabled and cfg.element_web.mode == "pages"
    ipv4, ipv6 = cfg.cloudflare.origin_ip, cfg.cloudflare.origin_ipv6
    records: list[Record] = []
    for host, (key, proxied, keys) in merged.items():
        if pages and keys == ["app"]:
            records.append(Record(key, host, "CNAME", None, True))  # Pages serves it: always proxied
            continue
        address = ipv4
        if keys == ["turn"] and _turn_address(cfg):
            address = _turn_address(cfg)
        if address:
            records.append(Record(key, host, "A", address, proxied))
        if ipv6 and keys != ["turn"]:
            records.append(Record(key, host, "AAAA", ipv6, proxied))
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
