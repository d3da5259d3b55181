"""Ntfy: UnifiedPush distributor and Matrix push gateway, with a generated admin user."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components import image_facts
from components.part import BuildContext, Component, Contribution, Endpoint, MetricsTarget, Part, derive
from components.platform.spec import File, Port, Service, Volume
from components.view import StackView
from config.model import StackConfig

from . import render

COMPONENT = "ntfy"
# The shared secret (Contribution.shared_secrets) holding the alerts publisher's password.
ALERTS_PASSWORD = "ntfy_alerts_password"


class Ntfy(Part):
    name = "ntfy"
    switches = ("ntfy.enabled",)
    reads = ("ntfy",)

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.ntfy.enabled

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        return [Endpoint("ntfy", render.SERVICE, render.PORT, websockets=True, max_body="16M")]

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        return [MetricsTarget(render.SERVICE, render.METRICS_PORT, role="ntfy", job=render.METRICS_JOB)]

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        return ("auth_users",)

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        return [Service(
            name=render.SERVICE,
            component=COMPONENT,
            image=cfg.ntfy.image,
            args=("serve", "--config", render.CONFIG),
            files=[File(render.CONFIG, derive(secrets["auth_users"], lambda users: render.server_yml(cfg, users)),
                        secret=True, mode=0o400)],
            ports=[Port("http", render.PORT)],
            # Owned by its user on Docker (Kubernetes: fsGroup): the image has neither directory.
            volumes=[Volume("ntfy-cache", render.CACHE_DIR, size="2Gi", owner=image_facts.non_root_user(cfg.ntfy.image)),
                     Volume("ntfy-auth", render.AUTH_DIR, size="1Gi", owner=image_facts.non_root_user(cfg.ntfy.image))],
            health=image_facts.http_check(cfg.ntfy.image, render.PORT),
            # The image has no user of its own; ntfy listens on 8080 (render.PORT).
            user=image_facts.non_root_user(cfg.ntfy.image),
            capabilities_add=image_facts.capabilities(cfg.ntfy.image),
            read_only_root=True,
            writable_paths=("/tmp",),
            # Polls for iOS devices go through the upstream server (ntfy.sh).
            egress_internet=("upstream server",) if cfg.ntfy.upstream_base_url else (),
            metrics_port=render.METRICS_PORT,
            metrics_labels=(("job", render.METRICS_JOB), ("role", "ntfy")),
        )]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        from components import secrets as gen

        component = Component("Ntfy", self.name)
        admin = gen.password_resource(f"{self.name}-admin-password", component, protect=cfg.protect, length=32)
        # ntfy applies auth-users at every start, so the user exists (and has this password)
        # without a one-shot init command; the hash is stable across runs (stored in state).
        shared: dict[str, pulumi.Input[str]] = {}
        if cfg.monitoring.enabled:
            # Alertmanager publishes the stack's alerts with a password of its own.
            alerts = gen.password_resource(f"{self.name}-alerts-password", component, protect=cfg.protect, length=32)
            hashes = pulumi.Output.all(admin.bcrypt_hash, alerts.bcrypt_hash)
            users: pulumi.Output[str] = pulumi.Output.secret(hashes.apply(
                lambda h: render.auth_users(h[0], h[1], cfg.monitoring.ntfy_user)))
            shared[ALERTS_PASSWORD] = pulumi.Output.secret(alerts.result)
        else:
            users = pulumi.Output.secret(admin.bcrypt_hash.apply(render.auth_users))
        admin_password: pulumi.Output[str] = pulumi.Output.secret(admin.result)
        urls = {"ntfy_url": render.base_url(cfg), "ntfy_push_gateway_url": render.push_gateway_url(cfg)}
        component.register_outputs({**urls, "admin_user": render.ADMIN_USER})
        return Contribution(
            parent=component,
            services=self.services(cfg, ctx.view, {"auth_users": users}),
            homeserver=render.homeserver(cfg),
            outputs={**urls, "ntfy_admin_user": render.ADMIN_USER,
                     "ntfy_admin_password": admin_password},
            shared_secrets=shared,
        )
