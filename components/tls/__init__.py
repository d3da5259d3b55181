"""Certificates for the public hostnames: Cloudflare Origin CA for proxied names, ACME for names
browsers reach directly. See plan.py for why.

Docker: the routing proxy reads the Origin CA certificate as files, and a certbot container
keeps the ACME ones. Kubernetes: the Origin CA certificate is handed to the adapter for the
proxied names' Ingress; cert-manager keeps the ACME ones, so nothing runs here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from components.part import BuildContext, Component, Contribution, Part
from components.platform.spec import EdgeCertificate, File, HealthCheck, Service, Volume
from config import images
from config.model import StackConfig

from .plan import (
    ACME_DIR,
    ACME_SERVED,
    ACME_WEBROOT,
    Certificate,
    certificates,
    proxy_terminates_tls,
    runs_acme_client,
)

COMPONENT = "tls"
ACME_SERVICE = "acme"
ACME_SCRIPT = "/conf/acme/run.sh"
ACME_PLACEHOLDER = "/conf/acme/placeholder.py"
PROXY_RUN = "/conf/proxy-run.sh"
PROXY_UID = (images.facts_for(images.NGINX).user or "101").split(":")[0]  # the proxy's nginx user
RENEW_EVERY_S = 12 * 3600

ACME_VOLUMES = (Volume("acme-certs", ACME_DIR, size="64Mi"), Volume("acme-webroot", ACME_WEBROOT, size="16Mi"))


def acme_script(cfg: StackConfig, certs: list[Certificate]) -> str:
    """certbot in a loop: a placeholder until the first issuance, then renewals; each result is
    copied where nginx reads it, readable by the proxy's unprivileged user."""
    acme = [c for c in certs if c.source == "acme"]
    email = cfg.tls.acme_email or ""
    lines = [
        "#!/bin/sh",
        "# Rendered by matrix-stack.",
        "set -u",
        f"served={ACME_SERVED}",
        "publish() {",
        '    mkdir -p "$served/$1"',
        '    cp -L "$2/fullchain.pem" "$served/$1/fullchain.pem.new"',
        '    cp -L "$2/privkey.pem" "$served/$1/privkey.pem.new"',
        f'    chown {PROXY_UID}:{PROXY_UID} "$served/$1/"*.new && chmod 0440 "$served/$1/"*.new',
        '    mv "$served/$1/fullchain.pem.new" "$served/$1/fullchain.pem"',
        '    mv "$served/$1/privkey.pem.new" "$served/$1/privkey.pem"',
        "}",
    ]
    # One certificate per hostname (plan.py), so the loops run over names.
    names = " ".join(c.name for c in acme)
    lines += [
        f"for name in {names}; do",
        '    if [ ! -s "$served/$name/fullchain.pem" ]; then',
        f'        python3 {ACME_PLACEHOLDER} "$served/$name" "$name"',
        f'        chown -R {PROXY_UID}:{PROXY_UID} "$served/$name"',
        "    fi",
        "done",
        "while :; do",
        f"    for name in {names}; do",
        f"        certbot certonly --non-interactive --agree-tos --email {email} --webroot -w {ACME_WEBROOT} "
        '--cert-name "$name" -d "$name" --keep-until-expiring '
        '|| echo "acme: $name not issued yet; retrying at the next round" >&2',
        f'        if [ -s "{ACME_DIR}/live/$name/fullchain.pem" ]; then publish "$name" "{ACME_DIR}/live/$name"; fi',
        "    done",
    ]
    lines += [f"    sleep {RENEW_EVERY_S}", "done", ""]
    return "\n".join(lines)


PLACEHOLDER_PY = '''"""A self-signed certificate so nginx can start before ACME has issued the real one."""
import datetime
import pathlib
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

target, host = pathlib.Path(sys.argv[1]), sys.argv[2]
target.mkdir(parents=True, exist_ok=True)
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number()).not_valid_before(now)
    .not_valid_after(now + datetime.timedelta(days=7))
    .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
    .sign(key, hashes.SHA256())
)
(target / "privkey.pem").write_bytes(key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
(target / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
'''


UPSTREAMS_LOADED = "/tmp/upstreams.loaded"


def proxy_run_script(nginx_conf: str, watch_acme: bool, upstream_hosts: tuple[str, ...] = (),
                     health_url: str = "") -> str:
    """nginx in the foreground; with ACME, a watcher reloads it when a certificate changes.

    With upstream host names, nginx (which resolves them once, at start or reload) starts only
    once every name resolves, and a watcher reloads it when an address changes (Docker gives a
    restarted container a new address). `health` as the first argument checks that nginx holds
    the current addresses and answers."""
    lines = ["#!/bin/sh", "# Rendered by matrix-stack.", "set -eu"]
    if upstream_hosts:
        lines += [
            f'UPSTREAMS="{" ".join(upstream_hosts)}"',
            "addresses() {",
            '    for h in $UPSTREAMS; do',
            """        printf '%s=%s\\n' "$h" "$(getent hosts "$h" | cut -d' ' -f1 | sort | paste -sd, -)\"""",
            "    done",
            "}",
            'if [ "${1:-}" = health ]; then',
            f'    [ "$(addresses)" = "$(cat {UPSTREAMS_LOADED})" ] || exit 1',
            f"    exec wget -qO- {health_url}",
            "fi",
            "until ! addresses | grep -q '=$'; do echo 'waiting for upstream addresses'; sleep 1; done",
            f"addresses > {UPSTREAMS_LOADED}",
            "watch_upstreams() {",
            "    while sleep 2; do",
            "        now=$(addresses)",
            f'        [ "$now" = "$(cat {UPSTREAMS_LOADED})" ] && continue',
            "        printf '%s\\n' \"$now\" | grep -q '=$' && continue",
            f"        if nginx -t -q -c {nginx_conf}; then",
            f"            printf '%s\\n' \"$now\" > {UPSTREAMS_LOADED}",
            f"            nginx -c {nginx_conf} -s reload",
            "        fi",
            "    done",
            "}",
            "watch_upstreams &",
        ]
    if watch_acme:
        lines += [
            "watch_certificates() {",
            '    last=""',
            "    while sleep 60; do",
            f'        now=$(cat {ACME_SERVED}/*/fullchain.pem 2>/dev/null | md5sum)',
            f'        if [ -n "$last" ] && [ "$now" != "$last" ]; then nginx -c {nginx_conf} -s reload; fi',
            '        last="$now"',
            "    done",
            "}",
            "watch_certificates &",
        ]
    lines += [f"exec nginx -c {nginx_conf} -g 'daemon off;'", ""]
    return "\n".join(lines)


def acme_service(cfg: StackConfig, certs: list[Certificate]) -> Service:
    return Service(
        name=ACME_SERVICE,
        component=COMPONENT,
        image=images.CERTBOT,
        entrypoint=("/bin/sh",),
        args=(ACME_SCRIPT,),
        files=[File(ACME_SCRIPT, acme_script(cfg, certs), mode=0o555),
               File(ACME_PLACEHOLDER, PLACEHOLDER_PY, mode=0o444)],
        volumes=list(ACME_VOLUMES),
        health=HealthCheck(("sh", "-c", f"ls {ACME_SERVED}/*/fullchain.pem >/dev/null")),
        drop_capabilities=False,  # chown of the published copies needs CAP_CHOWN
    )


def component_needed(cfg: StackConfig) -> bool:
    """Whether the Tls part has anything to do: a proxy to equip, or a certificate to hold."""
    return proxy_terminates_tls(cfg) or any(c.held for c in certificates(cfg))


class Tls(Part):
    """Provisions the certificates; hands the proxy its files and volumes when it terminates TLS
    itself, and the certificate the program holds (Origin CA or provided) to the edge (the
    Kubernetes Ingress reads it)."""

    name = "tls"
    reads = ("tls", "tls_private_key", "target", "server_name", "hostnames", "cloudflare")

    def enabled(self, cfg: StackConfig) -> bool:
        return component_needed(cfg)

    def services(self, cfg: StackConfig, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return [acme_service(cfg, certificates(cfg))] if runs_acme_client(cfg) else []

    def together(self, cfg: StackConfig, services: list[Service]) -> list[list[str]]:
        from components.synapse.services import PROXY_SERVICE

        # The ACME client shares its certificate and webroot volumes with the proxy.
        return [[s.name for s in services] + [PROXY_SERVICE]] if services else []

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        component = Component("Tls", self.name)
        certs = certificates(cfg)
        out = Contribution(parent=component, services=self.services(cfg, {}))
        for cert in certs:
            if not cert.held:
                continue
            if cert.source == "origin_ca":
                out.edge_certificate = _origin_ca(self.name, component, cert, ctx.cloudflare_provider)
            else:
                out.edge_certificate = _provided(cfg, cert)
            if proxy_terminates_tls(cfg):
                out.proxy_files += [
                    File(cert.cert_path, out.edge_certificate.certificate, mode=0o444),
                    File(cert.key_path, out.edge_certificate.private_key, secret=True, mode=0o400),
                ]
        if out.services:
            out.proxy_volumes = [Volume(v.name, v.path, size=v.size, read_only=True) for v in ACME_VOLUMES]
            out.proxy_watches_acme = True
        component.register_outputs({"certificates": [c.name for c in certs]})
        return out


def _provided(cfg: StackConfig, cert: Certificate) -> EdgeCertificate:
    """The operator's certificate (a file beside the stack) and key (a Pulumi secret)."""
    from config import pem

    assert cfg.tls.certificate_file is not None and cfg.tls_private_key is not None
    chain = pulumi.Output.from_input(pem.read_text(cfg.tls.certificate_file))
    key = pulumi.Output.secret(cfg.tls_private_key.get_secret_value())
    return EdgeCertificate(cert.hostnames, chain, key)


def _origin_ca(name: str, component: Component, cert: Certificate, provider: Any) -> EdgeCertificate:
    import pulumi_cloudflare as cloudflare
    import pulumi_tls as tls

    opts = pulumi.ResourceOptions(parent=component)
    key = tls.PrivateKey(f"{name}-{cert.name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    csr = tls.CertRequest(
        f"{name}-{cert.name}-csr",
        private_key_pem=key.private_key_pem,
        subject={"common_name": cert.hostnames[0]},
        dns_names=list(cert.hostnames),
        opts=opts,
    )
    issued = cloudflare.OriginCaCertificate(
        f"{name}-{cert.name}-certificate",
        csr=csr.cert_request_pem,
        hostnames=list(cert.hostnames),
        request_type="origin-ecc",
        requested_validity=5475,  # 15 years, the longest Cloudflare issues
        opts=pulumi.ResourceOptions(parent=component, provider=provider),
    )
    return EdgeCertificate(cert.hostnames, issued.certificate, pulumi.Output.secret(key.private_key_pem))


__all__ = ["ACME_SERVICE", "PROXY_RUN", "Tls", "certificates", "component_needed", "proxy_run_script",
           "proxy_terminates_tls"]
