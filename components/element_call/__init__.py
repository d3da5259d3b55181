"""ElementCall: the LiveKit SFU, lk-jwt-service (MatrixRTC authorisation) and the Element Call
web app, plus the Synapse settings and well-known keys that make clients find them."""

from __future__ import annotations

from typing import Any

import pulumi

from components import image_facts
from components import secrets as gen
from components.part import Part
from components.platform.spec import File, Port, PortRange, Service, Site
from components.synapse.services import PROXY_SERVICE
from config.model import StackConfig

from . import render

COMPONENT = "element-call"
NOBODY = "65534:65534"


class ElementCall(Part):
    def __init__(self, name: str, cfg: StackConfig, platform: Any, opts: pulumi.ResourceOptions | None = None):
        super().__init__("matrix-stack:index:ElementCall", name, opts)
        lk = cfg.element_call.livekit
        self.livekit_secret = gen.password(f"{name}-livekit-secret", self, protect=cfg.protect, length=48)
        keys = self.livekit_secret.apply(render.livekit_keys)

        ports = [Port("http", render.LIVEKIT_PORT),
                 Port("rtc-tcp", lk.rtc_tcp_port, public=True)]
        ranges = [PortRange("rtc-udp", lk.rtc_udp_port_start, lk.rtc_udp_port_end, "udp")]
        if lk.turn:
            ports.append(Port("turn-udp", render.TURN_UDP_PORT, "udp", public=True))
            ranges.append(PortRange("turn-relay", render.TURN_RELAY_START, render.TURN_RELAY_END, "udp"))
        livekit = Service(
            name=render.LIVEKIT_SERVICE,
            component=COMPONENT,
            image=lk.image,
            args=("--config", render.LIVEKIT_CONFIG),
            files=[File(render.LIVEKIT_CONFIG, render.livekit_yaml(cfg)),
                   File(render.LIVEKIT_KEYS, keys, secret=True, mode=0o400)],
            ports=ports,
            port_ranges=ranges,
            health=image_facts.http_check(lk.image, render.LIVEKIT_PORT),
            user=image_facts.user(lk.image),
            capabilities_add=image_facts.capabilities(lk.image),
            read_only_root=True,
            writable_paths=("/tmp",),
        )
        jwt = Service(
            name=render.JWT_SERVICE,
            component=COMPONENT,
            image=cfg.element_call.jwt_image,
            env=dict(render.jwt_env(cfg)),
            secret_env={"LIVEKIT_SECRET": self.livekit_secret},
            ports=[Port("http", render.JWT_PORT)],
            # The routing proxy forwards clients; LiveKit delivers its webhook.
            allowed_clients=(PROXY_SERVICE, render.LIVEKIT_SERVICE),
            # FROM scratch: only a checker the image is known to ship could run (see its facts).
            health=image_facts.http_check(cfg.element_call.jwt_image, render.JWT_PORT),
            # The image has no user of its own; its static binary needs none.
            user=image_facts.user(cfg.element_call.jwt_image) or NOBODY,
            capabilities_add=image_facts.capabilities(cfg.element_call.jwt_image),
            read_only_root=True,
        )
        web = Service(
            name=render.WEB_SERVICE,
            component=COMPONENT,
            image=cfg.element_call.image,
            files=[File(render.WEB_CONFIG, render.web_config_json(cfg))],
            ports=[Port("http", render.WEB_PORT)],
            health=image_facts.http_check(cfg.element_call.image, render.WEB_PORT),
            user=image_facts.user(cfg.element_call.image),
            capabilities_add=image_facts.capabilities(cfg.element_call.image),
            writable_paths=("/tmp",),
        )
        self.services = [livekit, jwt, web]
        _host, _port, crosses = render.webhook_target(cfg)
        published = getattr(platform, "cross_host_ports", None)
        if crosses and published is not None:
            # LiveKit's webhook reaches lk-jwt-service on another host through its published port.
            published.add((render.JWT_SERVICE, render.JWT_PORT))
        self.expose(cfg, platform, Site(cfg.host("call"), render.WEB_SERVICE, render.WEB_PORT))
        self.expose(cfg, platform, Site(cfg.host("jwt"), render.JWT_SERVICE, render.JWT_PORT))
        self.expose(cfg, platform, Site(cfg.host("livekit"), render.LIVEKIT_SERVICE, render.LIVEKIT_PORT,
                                        websockets=True))
        self.homeserver = render.homeserver(cfg)
        self.well_known_client = render.well_known_client(cfg)
        self.urls = {
            "element_call_url": cfg.url("call"),
            "livekit_service_url": render.jwt_url(cfg),
            "livekit_url": render.livekit_url(cfg),
        }
        platform.run(self.services, parent=self)
        self.register_outputs(dict(self.urls))
