"""Coturn: TURN for legacy 1:1 calls, sharing a generated secret with Synapse."""

from __future__ import annotations

from typing import Any

import pulumi

from components import image_facts
from components import secrets as gen
from components.part import Part
from components.platform.spec import File, Port, PortRange, Service
from components.synapse import homeserver as hs
from config.model import StackConfig

from . import render

COMPONENT = "coturn"


class Coturn(Part):
    def __init__(self, name: str, cfg: StackConfig, platform: Any, opts: pulumi.ResourceOptions | None = None):
        super().__init__("matrix-stack:index:Coturn", name, opts)
        self.shared_secret = gen.password(f"{name}-shared-secret", self, protect=cfg.protect)
        turn = cfg.coturn
        if not render.external_ip(cfg):
            # Not an error (a host with a public address of its own works), but behind Docker's
            # NAT or a load balancer coturn would advertise an address nobody can reach.
            pulumi.log.warn("coturn.external_ip is unset: coturn advertises the address it sees "
                            "locally; set it to the public IP", resource=self)
        service = Service(
            name=render.SERVICE,
            component=COMPONENT,
            image=turn.image,
            entrypoint=render.command(),
            files=[File(render.CONFIG, render.turnserver_conf(cfg)),
                   File(render.AUTH_CONFIG, self.shared_secret.apply(render.auth_conf), secret=True, mode=0o400)],
            ports=[Port("turn-udp", render.PORT, "udp", public=True),
                   Port("turn-tcp", render.PORT, "tcp", public=True)],
            port_ranges=[PortRange("relay", turn.relay_port_start, turn.relay_port_end, "udp")],
            user=image_facts.user(turn.image),
            # /usr/bin/turnserver carries CAP_NET_BIND_SERVICE (setcap): with it outside the
            # bounding set the kernel refuses to exec the binary at all.
            capabilities_add=image_facts.capabilities(turn.image),
            read_only_root=True,
            writable_paths=("/tmp",),
        )
        self.services = [service]
        self.homeserver = render.homeserver(cfg)
        self.secret_files = {hs.secret_path("turn"): self.shared_secret}
        self.urls = {"turn_uris": ", ".join(render.turn_uris(cfg))}
        platform.run(self.services, parent=self)
        self.register_outputs(dict(self.urls))
