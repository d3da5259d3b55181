"""The Matrix Authentication Service: logins, registration and sessions for Synapse over OAuth 2.0
and OpenID Connect (Element X's sign-in and QR login), with its own site on `auth.` of the domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pulumi

from components.nginx import indent, proxy_block, set_route
from components.part import (
    BuildContext,
    Component,
    Contribution,
    DatabaseClaim,
    EdgeRoutes,
    Endpoint,
    ExternalServer,
    KeptFile,
    MetricsTarget,
    OAuthClient,
    Part,
    Writer,
)
from components.platform.spec import Service
from components.view import StackView
from config.model import MasBundledDatabase, MasExternalDatabase, StackConfig

from . import render
from . import services as mas_services

# What MAS shares with later parts by name (Contribution.shared_secrets): its database password
# (the database setup, backups) and the files that cannot be regenerated without logging every
# user out (backups).
SHARED = {"database": "mas_database", "encryption": "mas_encryption", "rsa": "mas_rsa-4096", "ec": "mas_ec-p256"}


class Mas(Part):
    """MAS's own service, its site on `auth.`, what Synapse needs to delegate to it (homeserver
    keys, the shared secret as a file) and its stack outputs."""

    name = "mas"
    switches = ("mas.enabled",)
    reads = ("mas", "hostnames", "server_name", "target", "synapse.registration", "synapse.smtp",
             "synapse.database.kind", "synapse.workers", "mas_client_secrets", "mas_database_password",
             "smtp_password")

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.mas.enabled

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        return [Endpoint("auth", render.SERVICE, render.HTTP_PORT)]

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        return [MetricsTarget(render.SERVICE, render.METRICS_PORT, render.METRICS_PATH, role="mas",
                              job=render.METRICS_JOB)]

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        return tuple(n for n in mas_services.secret_names(cfg) if n != mas_services.SUPERUSER)

    def edge_routes(self, cfg: StackConfig) -> list[EdgeRoutes]:
        if not cfg.mas.owns_logins:
            return []
        # Its compatibility layer answers login, logout and refresh: first on the Matrix host, so
        # no Synapse route can match them (MAS's reverse-proxy guide).
        upstream = f"{render.SERVICE}:{render.HTTP_PORT}"
        return [EdgeRoutes("matrix", 0, locations=(
            f"location ~ {render.COMPAT_PATTERN} {{", *indent([set_route("mas"), *proxy_block(upstream)]), "}"))]

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return [mas_services.mas_service(cfg, view, secrets)]

    def database_claims(self, cfg: StackConfig) -> list[DatabaseClaim]:
        db = cfg.mas.database
        # syn2mas reads Synapse's database as MAS's role, only while migrating.
        if isinstance(db, MasExternalDatabase):
            return [DatabaseClaim(db.name, db.user, (render.SERVICE,), render.DATABASE_POOL, SHARED["database"],
                                  external=ExternalServer(db.host, db.port, db.sslmode),
                                  reads_all_data=cfg.mas.syn2mas)]
        return [DatabaseClaim(render.DATABASE_NAME, render.DATABASE_USER, (render.SERVICE,), render.DATABASE_POOL,
                              SHARED["database"], reads_all_data=cfg.mas.syn2mas)]

    def kept_files(self, cfg: StackConfig) -> list[KeptFile]:
        # Without them every session ends and the data MAS encrypted is lost.
        return [KeptFile(SHARED["encryption"], render.ENCRYPTION_FILE),
                *(KeptFile(f"mas_{kid}", path) for kid, path in render.SIGNING_KEYS.items())]

    def writers(self, cfg: StackConfig) -> list[Writer]:
        return [Writer(render.SERVICE, False)]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        component = Component("Mas", self.name)
        secrets = generate_secrets(cfg, self.name, component, ctx.view.oauth_clients)
        delegating = cfg.mas.owns_logins
        outputs: dict[str, object] = {
            "mas_url": render.public_base(cfg),
            "mas_create_admin_command": render.create_admin_command(cfg),
            "mas_syn2mas_commands": "\n\n".join(render.syn2mas_commands(cfg, ctx.view)),
        }
        if delegating:
            # Synapse has no shared-secret registration while MAS owns accounts: MAS makes the admin.
            outputs["create_admin_command"] = outputs["mas_create_admin_command"]
        component.register_outputs({"url": render.public_base(cfg)})
        return Contribution(
            parent=component,
            services=self.services(cfg, ctx.view, secrets),
            homeserver=render.homeserver(cfg) if delegating else {},
            secret_files={render.SYNAPSE_SECRET_PATH: secrets["matrix"]} if delegating else {},
            shared_secrets={**{shared: secrets[name] for name, shared in SHARED.items()},
                            **{client.secret: secrets[client.secret] for client in ctx.view.oauth_clients}},
            outputs=outputs,
        )


def generate_secrets(cfg: StackConfig, name: str, parent: pulumi.Resource,
                     clients: Sequence[OAuthClient] = ()) -> dict[str, pulumi.Input[str]]:
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
    for client in clients:
        # The stack's own OAuth clients: MAS reads each secret from a file, the client's part
        # reads it among the shared secrets.
        values[client.secret] = gen.password(f"{name}-client-{client.name}", parent, protect=cfg.protect)
    client_secrets = cfg.mas_client_secrets or {}
    for provider in cfg.mas.upstream_oauth2:
        if provider.needs_secret:
            values[mas_services.provider_secret(provider.name)] = pulumi.Output.secret(
                client_secrets[provider.name].get_secret_value())
    return values
