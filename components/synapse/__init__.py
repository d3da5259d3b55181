"""SynapseCluster: main, every worker role from the worker table, PostgreSQL, Redis, the routing
proxy and the secrets they share."""

from __future__ import annotations

from typing import Any

import pulumi

from components import secrets as gen
from config.model import StackConfig

from . import homeserver
from .services import Inputs, cluster_services, secret_names


class SynapseCluster(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        platform: Any,
        inputs: Inputs,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("matrix-stack:index:SynapseCluster", name, None, opts)
        values: dict[str, pulumi.Input[str]] = {}
        for secret in secret_names(cfg):
            if secret == "signing_key" and cfg.signing_key is not None:
                # A server's identity brought back from a backup (README, "Backups").
                values[secret] = pulumi.Output.secret(cfg.signing_key.get_secret_value().strip() + "\n")
            elif secret == "signing_key":
                values[secret] = gen.ed25519_signing_key(f"{name}-signing-key", self, protect=cfg.protect)
            elif secret == "postgres" and cfg.database_password is not None:
                values[secret] = pulumi.Output.secret(cfg.database_password.get_secret_value())
            else:
                values[secret] = gen.password(f"{name}-{secret}", self, protect=cfg.protect)
        if cfg.smtp_password is not None:
            values["smtp"] = pulumi.Output.secret(cfg.smtp_password.get_secret_value())
        if cfg.ldap_bind_password is not None:
            values["ldap_bind"] = pulumi.Output.secret(cfg.ldap_bind_password.get_secret_value())
        self.registration_shared_secret = values["registration"]
        self.services = cluster_services(cfg, values, inputs)
        self.topology = homeserver.topology(cfg)
        platform.run(self.services, parent=self)
        self.register_outputs({"processes": [p.name for p in self.topology.processes]})
