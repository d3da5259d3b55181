"""Which certificate each public hostname gets. Pure: the view computes it once from the
hostnames the parts declare and the DNS records.

- A hostname Cloudflare proxies gets a Cloudflare Origin CA certificate: free, 15 years, no
  renewal, but trusted only by Cloudflare's edge, so it is right exactly where every client
  comes through that edge.
- A hostname that is DNS-only (no Cloudflare, or the LiveKit and TURN hosts, which carry
  WebRTC) is reached directly by browsers and remote servers: it needs a publicly trusted
  certificate, from ACME (HTTP-01, answered by the routing proxy from a webroot shared with a
  certbot container; HTTP-01 works because the name is not proxied).
- A local stack (localhost) runs plain HTTP.

The same plan holds on Kubernetes, where the Ingress terminates TLS and the proxy behind it
stays plain: proxied names get an Ingress carrying the Origin CA certificate (cert-manager's
HTTP-01 would fail behind Cloudflare's edge), direct names an Ingress whose certificate
cert-manager issues (the publicly trusted equivalent of the Docker target's ACME client).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from config.model import StackConfig

TLS_DIR = "/etc/nginx/tls"
ACME_DIR = "/etc/letsencrypt"
ACME_WEBROOT = "/var/www/acme"
# Where nginx reads ACME certificates: certbot's deploy hook copies `live/<name>` here, and a
# self-signed placeholder sits here until the first issuance, so nginx can always start.
ACME_SERVED = f"{ACME_DIR}/matrix-stack"


@dataclass(frozen=True)
class Certificate:
    name: str  # "origin", "provided" or the ACME certificate name
    source: str  # "origin_ca", "provided" or "acme"
    hostnames: tuple[str, ...]

    @property
    def held(self) -> bool:
        """The program holds this certificate and its key (as Pulumi values), as opposed to an
        ACME client or cert-manager obtaining it where it runs."""
        return self.source in HELD_SOURCES

    @property
    def cert_path(self) -> str:
        if self.held:
            return f"{TLS_DIR}/{self.name}.crt"
        return f"{ACME_SERVED}/{self.name}/fullchain.pem"

    @property
    def key_path(self) -> str:
        if self.held:
            return f"{TLS_DIR}/{self.name}.key"
        return f"{ACME_SERVED}/{self.name}/privkey.pem"


# Certificates the program holds: Cloudflare's Origin CA one it issues, and one the operator
# provides (tls.mode provided: a private CA's certificate for a private federation, or a
# certificate bought elsewhere).
HELD_SOURCES = ("origin_ca", "provided")


def certificate_sources(cfg: StackConfig, hostnames: Sequence[str], proxied: Collection[str]) -> dict[str, str]:
    """hostname -> "origin_ca", "provided" or "acme", for the hostnames the routing proxy answers
    for (in their order), on either target; `proxied` are the names Cloudflare proxies.

    A hostname missing from the result gets no certificate: the stack runs plain HTTP.
    """
    if cfg.tls_mode == "none":
        return {}
    if cfg.tls_mode == "provided":
        return {h: "provided" for h in hostnames}
    proxied = proxied if cfg.tls_mode == "origin_ca" else ()
    return {h: "origin_ca" if h in proxied else "acme" for h in hostnames}


def certificates(sources: Mapping[str, str]) -> list[Certificate]:
    """The certificates to obtain, on either target (what serves them is the target's business)."""
    origin = tuple(h for h, source in sources.items() if source == "origin_ca")
    provided = tuple(h for h, source in sources.items() if source == "provided")
    acme = tuple(h for h, source in sources.items() if source == "acme")
    certs: list[Certificate] = []
    if origin:
        certs.append(Certificate("origin", "origin_ca", origin))
    if provided:
        certs.append(Certificate("provided", "provided", provided))
    # One ACME certificate per hostname: a failed challenge on one name cannot block the others.
    certs += [Certificate(host, "acme", (host,)) for host in acme]
    return certs
