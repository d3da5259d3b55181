"""Ntfy: UnifiedPush distributor and Matrix push gateway, with a generated admin user."""

from __future__ import annotations

from typing import Any

import pulumi

from components import image_facts
from components import secrets as gen
from components.part import Part
from components.platform.spec import File, Port, Service, Site, Volume
from config.model import StackConfig

from . import render

COMPONENT = "ntfy"


class Ntfy(Part):
    def __init__(self, name: str, cfg: StackConfig, platform: Any, opts: pulumi.ResourceOptions | None = None):
        super().__init__("matrix-stack:index:Ntfy", name, opts)
        admin = gen.password_resource(f"{name}-admin-password", self, protect=cfg.protect, length=32)
        self.admin_user = render.ADMIN_USER
        self.admin_password: pulumi.Output[str] = pulumi.Output.secret(admin.result)
        # ntfy applies auth-users at every start, so the user exists (and has this password)
        # without a one-shot init command; the hash is stable across runs (stored in state).
        users: pulumi.Output[str] = pulumi.Output.secret(admin.bcrypt_hash.apply(render.auth_users))
        service = Service(
            name=render.SERVICE,
            component=COMPONENT,
            image=cfg.ntfy.image,
            args=("serve", "--config", render.CONFIG),
            secret_env={"NTFY_AUTH_USERS": users},
            files=[File(render.CONFIG, render.server_yml(cfg))],
            ports=[Port("http", render.PORT)],
            volumes=[Volume("ntfy-cache", render.CACHE_DIR, size="2Gi"),
                     Volume("ntfy-auth", render.AUTH_DIR, size="1Gi")],
            health=image_facts.http_check(cfg.ntfy.image, render.PORT),
            user=image_facts.user(cfg.ntfy.image),
            capabilities_add=image_facts.capabilities(cfg.ntfy.image),
            read_only_root=True,
            writable_paths=("/tmp",),
        )
        self.services = [service]
        self.expose(cfg, platform, Site(cfg.host("ntfy"), render.SERVICE, render.PORT, websockets=True,
                                        max_body="16M"))
        self.homeserver = render.homeserver(cfg)
        self.urls = {"ntfy_url": render.base_url(cfg), "ntfy_push_gateway_url": render.push_gateway_url(cfg)}
        platform.run(self.services, parent=self)
        self.register_outputs({**self.urls, "admin_user": self.admin_user})
