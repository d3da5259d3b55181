"""Which certificate each public hostname gets on a Docker target. Pure.

- A hostname Cloudflare proxies gets a Cloudflare Origin CA certificate: free, 15 years, no
  renewal, but trusted only by Cloudflare's edge, so it is right exactly where every client
  comes through that edge.
- A hostname that is DNS-only (no Cloudflare, or the LiveKit and TURN hosts, which carry
  WebRTC) is reached directly by browsers and remote servers: it needs a publicly trusted
  certificate, from ACME (HTTP-01, answered by the routing proxy from a webroot shared with a
  certbot container; HTTP-01 works because the name is not proxied).
- A local stack (localhost) runs plain HTTP.

On Kubernetes the Ingress terminates TLS (cert-manager), so the proxy behind it stays plain.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.model import DockerTarget, StackConfig

TLS_DIR = "/etc/nginx/tls"
ACME_DIR = "/etc/letsencrypt"
ACME_WEBROOT = "/var/www/acme"
# Where nginx reads ACME certificates: certbot's deploy hook copies `live/<name>` here, and a
# self-signed placeholder sits here until the first issuance, so nginx can always start.
ACME_SERVED = f"{ACME_DIR}/matrix-stack"


@dataclass(frozen=True)
class Certificate:
    name: str  # "origin" or the ACME certificate name
    source: str  # "origin_ca" or "acme"
    hostnames: tuple[str, ...]

    @property
    def cert_path(self) -> str:
        if self.source == "origin_ca":
            return f"{TLS_DIR}/{self.name}.crt"
        return f"{ACME_SERVED}/{self.name}/fullchain.pem"

    @property
    def key_path(self) -> str:
        if self.source == "origin_ca":
            return f"{TLS_DIR}/{self.name}.key"
        return f"{ACME_SERVED}/{self.name}/privkey.pem"


def proxy_terminates_tls(cfg: StackConfig) -> bool:
    return isinstance(cfg.target, DockerTarget) and cfg.tls_mode != "none"


def http_hostnames(cfg: StackConfig) -> list[str]:
    """Every hostname the routing proxy answers for, in a fixed order, without repeats."""
    from components.dns import records

    names: list[str] = []
    for _key, host, http in records.hosts(cfg):
        if http or _key == "livekit":  # LiveKit's signalling WebSocket goes through the proxy
            if host not in names:
                names.append(host)
    return names


def _proxied(cfg: StackConfig) -> set[str]:
    if not cfg.cloudflare.enabled:
        return set()
    from components.dns import records

    return {r.name for r in records.plan(cfg) if r.proxied}


def certificates(cfg: StackConfig) -> list[Certificate]:
    if not proxy_terminates_tls(cfg):
        return []
    proxied = _proxied(cfg)
    hosts = http_hostnames(cfg)
    if cfg.tls_mode == "origin_ca":
        origin = tuple(h for h in hosts if h in proxied)
        acme = tuple(h for h in hosts if h not in proxied)
    else:
        origin, acme = (), tuple(hosts)
    certs: list[Certificate] = []
    if origin:
        certs.append(Certificate("origin", "origin_ca", origin))
    # One ACME certificate per hostname: a failed challenge on one name cannot block the others.
    certs += [Certificate(host, "acme", (host,)) for host in acme]
    return certs


def certificate_for(cfg: StackConfig, hostname: str) -> Certificate | None:
    for cert in certificates(cfg):
        if hostname in cert.hostnames:
            return cert
    return None
