"""Certificates for the public hostnames: Cloudflare Origin CA for proxied names, ACME for names
browsers reach directly. See components/view/certificates.py for why.

Docker: the routing proxy reads the Origin CA certificate as files, and a certbot container
keeps the ACME ones. Kubernetes: the Origin CA certificate is handed to the adapter for the
proxied names' Ingress; cert-manager keeps the ACME ones, so nothing runs here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from components.part import BuildContext, Component, Contribution, Part
from components.platform.spec import EdgeCertificate, File, HealthCheck, Service, Volume
from components.view import StackView
from components.view.certificates import ACME_DIR, ACME_SERVED, ACME_WEBROOT, Certificate
from config import images
from config.checks import Finding
from config.model import StackConfig

COMPONENT = "tls"
ACME_SERVICE = "acme"
ACME_SCRIPT = "/conf/acme/run.sh"
ACME_PLACEHOLDER = "/conf/acme/placeholder.py"
# certbot runs as nobody in the proxy's group (the image has no user; certbot needs none: see
# its state_dirs fact). What it writes is that group's, so the copies it publishes are nginx's
# to read at 0440 without a chown, while its account and archive stay its own (0700, 0600).
PROXY_GID = (images.facts_for(images.NGINX).user or "101:101").split(":")[-1]
ACME_USER = f"65534:{PROXY_GID}"
RENEW_EVERY_S = 12 * 3600
# certbot's work and logs are scratch: the work dir holds its lock, the logs repeat its output.
ACME_SCRATCH = "/tmp"
ACME_STATE = {"--config-dir": ACME_DIR, "--work-dir": f"{ACME_SCRATCH}/certbot/work",
              "--logs-dir": f"{ACME_SCRATCH}/certbot/logs"}
# Each run starts a log file of its own: a few are enough on a scratch directory.
ACME_LOG_BACKUPS = 10

# Owned whole by certbot's user: a stack whose certbot ran as root left its account, archive and
# challenge directories root's.
ACME_VOLUMES = (Volume("acme-certs", ACME_DIR, size="64Mi", owner=ACME_USER, owner_recursive=True),
                Volume("acme-webroot", ACME_WEBROOT, size="16Mi", owner=ACME_USER, owner_recursive=True))


def certbot_dirs() -> str:
    """certbot's flags for each directory it writes (its image's state_dirs), in ACME_STATE."""
    defaults = images.facts_for(images.CERTBOT).state_dirs
    missing = set(defaults) - set(ACME_STATE)
    if missing:
        raise ValueError(f"certbot writes {sorted(missing)} by default: give each a place in ACME_STATE")
    return " ".join(f"{flag} {ACME_STATE[flag]}" for flag in defaults)


def acme_script(cfg: StackConfig, certs: list[Certificate]) -> str:
    """certbot in a loop: a placeholder until the first issuance, then renewals; each result is
    copied where nginx reads it, readable by the proxy's group (certbot's own group, ACME_USER)."""
    acme = [c for c in certs if c.source == "acme"]
    email = cfg.tls.acme_email or ""
    lines = [
        "#!/bin/sh",
        "# Rendered by matrix-stack.",
        "set -u",
        f"served={ACME_SERVED}",
        "publish() {",
        '    mkdir -p "$served/$1"',
        '    rm -f "$served/$1/fullchain.pem.new" "$served/$1/privkey.pem.new"  # left read-only by a cut-off run',
        '    cp -L "$2/fullchain.pem" "$served/$1/fullchain.pem.new"',
        '    cp -L "$2/privkey.pem" "$served/$1/privkey.pem.new"',
        '    chmod 0440 "$served/$1/"*.new',
        '    mv "$served/$1/fullchain.pem.new" "$served/$1/fullchain.pem"',
        '    mv "$served/$1/privkey.pem.new" "$served/$1/privkey.pem"',
        "}",
    ]
    # One certificate per hostname (components/view/certificates.py), so the loops run over names.
    names = " ".join(c.name for c in acme)
    lines += [
        f"for name in {names}; do",
        '    if [ ! -s "$served/$name/fullchain.pem" ]; then',
        f'        python3 {ACME_PLACEHOLDER} "$served/$name" "$name"',
        '        chmod 0440 "$served/$name/"*.pem',
        "    fi",
        "done",
        "while :; do",
        f"    for name in {names}; do",
        f"        certbot certonly --non-interactive --agree-tos --email {email} --webroot -w {ACME_WEBROOT} "
        f"{certbot_dirs()} --max-log-backups {ACME_LOG_BACKUPS} "
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
        user=ACME_USER,
        read_only_root=True,
        writable_paths=(ACME_SCRATCH,),
        egress_internet=("ACME directory",),
    )


class Tls(Part):
    """Provisions the certificates; hands the proxy its files and volumes when it terminates TLS
    itself, and the certificate the program holds (Origin CA or provided) to the edge (the
    Kubernetes Ingress reads it)."""

    name = "tls"
    reads = ("tls", "tls_private_key", "target", "server_name", "hostnames", "cloudflare")

    def needed(self, cfg: StackConfig, view: StackView) -> bool:
        """Whether it has anything to do: a proxy to equip, or a certificate to hold."""
        return view.proxy_terminates_tls or any(c.held for c in view.certificates)

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return [acme_service(cfg, list(view.certificates))] if view.runs_acme_client else []

    def together(self, cfg: StackConfig, view: StackView, services: list[Service]) -> list[list[str]]:
        # The ACME client shares its certificate and webroot volumes with the proxy.
        if not (services and view.edge_service):
            return []
        return [[s.name for s in services] + [view.edge_service]]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        component = Component("Tls", self.name)
        certs = list(ctx.view.certificates)
        out = Contribution(parent=component, services=self.services(cfg, ctx.view, {}))
        for cert in certs:
            if not cert.held:
                continue
            if cert.source == "origin_ca":
                out.edge_certificate = _origin_ca(self.name, component, cert, ctx.cloudflare_provider)
            else:
                out.edge_certificate = _provided(cfg, cert)
            if ctx.view.proxy_terminates_tls:
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


def target_check(view: StackView) -> list[Finding]:
    """What the target needs to serve the hostnames reached directly with trusted certificates."""
    direct = [h for h, source in view.certificate_sources.items() if source == "acme"]
    return view.target.certificate_problems(direct)


def provided_check(cfg: StackConfig, view: StackView) -> list[Finding]:
    """tls.mode provided: the certificate file and the secret key, checked before any resource."""
    from config import pem

    found: list[Finding] = []
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
                              hostnames=tuple(view.proxy_hostnames))
    if cfg.tls_private_key is None:
        found.append(("tls_private_key", None, "required when tls.mode is 'provided'; set it with --secret"))
    else:
        found += pem.key_problems("tls_private_key", cfg.tls_private_key.get_secret_value())
    return found
