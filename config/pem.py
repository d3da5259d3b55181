"""Certificate files named in the stack config (a private federation's CA, a provided proxy
certificate): read on the machine that runs the program, checked before anything is deployed,
and shipped to the services as file contents."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING

# cryptography is imported where a file is checked: every stack's config check imports this
# module, and most name no certificate file (loading cryptography costs more than the check).
if TYPE_CHECKING:
    from cryptography import x509

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


def read_text(path: str) -> str:
    """The file's text, as the services receive it."""
    return Path(path).expanduser().read_text()


def certificates(path: str) -> list[x509.Certificate]:
    from cryptography import x509

    return x509.load_pem_x509_certificates(Path(path).expanduser().read_bytes())


def problems(field: str, path: str, *, ca: bool, hostnames: tuple[str, ...] = ()) -> list[tuple[str, object, str]]:
    """What is wrong with the certificate file at `path`, blamed on `field`.

    `ca`: the file must hold exactly one CA certificate (Synapse's federation_custom_ca_list reads
    one certificate per file). Otherwise it is a server certificate chain whose first certificate
    must name every one of `hostnames`.
    """
    from cryptography import x509

    file = Path(path).expanduser()
    if not file.is_file():
        return [(field, path, "must name an existing file holding a PEM certificate")]
    try:
        certs = certificates(path)
    except ValueError:
        return [(field, path, "must hold PEM certificate(s) (-----BEGIN CERTIFICATE-----); this file has none "
                 "or an unreadable one")]
    found: list[tuple[str, object, str]] = []
    now = datetime.datetime.now(datetime.UTC)
    if certs[0].not_valid_after_utc < now:
        found.append((field, path, f"the certificate expired on {certs[0].not_valid_after_utc:%Y-%m-%d}"))
    if ca:
        if len(certs) != 1:
            found.append((field, path, f"must hold exactly one CA certificate per file (has {len(certs)}); "
                          "list each in its own file"))
        try:
            is_ca = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            found.append((field, path, "must be a CA certificate (basicConstraints CA:TRUE)"))
        return found
    try:
        names = set(certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = set()
    missing = [h for h in hostnames if not _covered(h, names)]
    if missing:
        found.append((field, path, "the certificate's subjectAltName must cover every public hostname; "
                      "missing: " + ", ".join(missing)))
    return found


def _covered(hostname: str, names: set[str]) -> bool:
    if hostname in names:
        return True
    head, _, rest = hostname.partition(".")
    return bool(rest) and f"*.{rest}" in names


def key_problems(field: str, pem: str) -> list[tuple[str, object, str]]:
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return [(field, None, "must be an unencrypted PEM private key")]
    return []
