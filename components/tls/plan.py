"""Which certificate each public hostname gets. Pure.

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


def proxy_terminates_tls(cfg: StackConfig) -> bool:
    from components.platform.targets import target_of

    return target_of(cfg).proxy_terminates_tls()


def runs_acme_client(cfg: StackConfig) -> bool:
    """The Docker target's certbot container; on Kubernetes cert-manager does that job."""
    return proxy_terminates_tls(cfg) and any(c.source == "acme" for c in certificates(cfg))


def http_hostnames(cfg: StackConfig) -> list[str]:
    """Every hostname the routing proxy answers for (the endpoints it serves), in a fixed order."""
    from components.catalog import proxy_hostnames

    return proxy_hostnames(cfg)


def _proxied(cfg: StackConfig) -> set[str]:
    if not cfg.cloudflare.enabled:
        return set()
    from components.dns import records

    return {r.name for r in records.plan(cfg) if r.proxied}


def certificate_sources(cfg: StackConfig) -> dict[str, str]:
    """hostname -> "origin_ca" or "acme", in http_hostnames order, on either target.

    A hostname missing from the result gets no certificate: the stack runs plain HTTP.
    """
    if cfg.tls_mode == "none":
        return {}
    if cfg.tls_mode == "provided":
        return {h: "provided" for h in http_hostnames(cfg)}
    proxied = _proxied(cfg) if cfg.tls_mode == "origin_ca" else set()
    return {h: "origin_ca" if h in proxied else "acme" for h in http_hostnames(cfg)}


def certificate_source(cfg: StackConfig, hostname: str) -> str | None:
    return certificate_sources(cfg).get(hostname)


def certificates(cfg: StackConfig) -> list[Certificate]:
    """The certificates to obtain, on either target (what serves them is the target's business)."""
    sources = certificate_sources(cfg)
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


def certificate_for(cfg: StackConfig, hostname: str) -> Certificate | None:
    for cert in certificates(cfg):
        if hostname in cert.hostnames:
            return cert
    return None


def target_check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    """What the target needs to serve the hostnames reached directly with trusted certificates."""
    from components.platform.targets import target_of

    direct = [h for h, source in certificate_sources(cfg).items() if source == "acme"]
    return target_of(cfg).certificate_problems(direct)


def check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    """tls.mode provided: the certificate file and the secret key, checked before any resource."""
    from config import pem

    found: list[tuple[str, object, str]] = []
    if cfg.tls_mode != "provided":
        if cfg.tls.certificate_file is not None:
            found.append(("tls.certificate_file", cfg.tls.certificate_file, "only used with tls.mode: provided"))
        if cfg.tls_private_key is not None:
            found.append(("tls_private_key", None, "only used with tls.mode: provided"))
        return found
    if cfg.tls.certificate_file is None:
        found.append(("tls.certificate_file", None, "required when tls.mode is 'provided'"))
    else:
        found += pem.problems("tls.certificate_file", cfg.tls.certificate_file, ca=False,
                              hostnames=tuple(http_hostnames(cfg)))
    if cfg.tls_private_key is None:
        found.append(("tls_private_key", None, "required when tls.mode is 'provided'; set it with --secret"))
    else:
        found += pem.key_problems("tls_private_key", cfg.tls_private_key.get_secret_value())
    return found
