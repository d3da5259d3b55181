"""The Matrix Authentication Service: logins, registration and sessions for Synapse over OAuth 2.0
and OpenID Connect (Element X's sign-in and QR login), with its own site on `auth.` of the domain."""

from __future__ import annotations

import pulumi

from config.model import MasBundledDatabase, StackConfig

from . import services as mas_services


def generate_secrets(cfg: StackConfig, name: str, parent: pulumi.Resource) -> dict[str, pulumi.Input[str]]:
    """MAS's secrets (services.secret_names) except the bundled database's superuser password:
    generated ones kept as Pulumi secrets (protected with the stack's data), the rest from the
    secret config keys."""
    import pulumi_random as random
    import pulumi_tls as tls

    from components import secrets as gen

    opts = pulumi.ResourceOptions(parent=parent, protect=cfg.protect)
    encryption = random.RandomBytes(f"{name}-encryption", length=32, opts=opts)
    rsa = tls.PrivateKey(f"{name}-rsa", algorithm="RSA", rsa_bits=4096, opts=opts)
    ec = tls.PrivateKey(f"{name}-ec", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    values: dict[str, pulumi.Input[str]] = {
        "encryption": pulumi.Output.secret(encryption.hex),
        "rsa": pulumi.Output.secret(rsa.private_key_pem),
        "ec": pulumi.Output.secret(ec.private_key_pem),
        "matrix": gen.password(f"{name}-matrix-secret", parent, protect=cfg.protect),
    }
    if isinstance(cfg.mas.database, MasBundledDatabase):
        values["database"] = gen.password(f"{name}-database-password", parent, protect=cfg.protect)
    else:
        assert cfg.mas_database_password is not None
        values["database"] = pulumi.Output.secret(cfg.mas_database_password.get_secret_value())
    if "smtp" in mas_services.secret_names(cfg):
        assert cfg.smtp_password is not None
        values["smtp"] = pulumi.Output.secret(cfg.smtp_password.get_secret_value())
    client_secrets = cfg.mas_client_secrets or {}
    for provider in cfg.mas.upstream_oauth2:
        if provider.needs_secret:
            values[mas_services.provider_secret(provider.name)] = pulumi.Output.secret(
                client_secrets[provider.name].get_secret_value())
    return values
