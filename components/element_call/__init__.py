"""Element Call: the LiveKit SFU, lk-jwt-service (MatrixRTC authorisation) and the Element Call
web app, plus the Synapse settings and well-known keys that make clients find them."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components import image_facts
from components.part import BuildContext, Component, Contribution, Endpoint, MetricsTarget, Part, Probe, derive
from components.platform.spec import File, Port, PortRange, Service
from components.view import StackView
from config.checks import Finding
from config.model import StackConfig

from . import render

COMPONENT = "element-call"


class ElementCall(Part):
    name = "element-call"
    switches = ("element_call.enabled",)
    reads = ("element_call", "target")

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.element_call.enabled

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        return [
            # Element Web embeds Element Call as a widget (Element X opens it in a web view).
            Endpoint("call", render.WEB_SERVICE, render.WEB_PORT, embedded_by=("app",)),
            Endpoint("jwt", render.JWT_SERVICE, render.JWT_PORT),
            # The signalling WebSocket goes through the proxy; the name is also LiveKit's TURN
            # domain and its clients' media peer, so its record is DNS-only.
            Endpoint("livekit", render.LIVEKIT_SERVICE, render.LIVEKIT_PORT, media=True, websockets=True),
        ]

    def probes(self, cfg: StackConfig) -> list[Probe]:
        # LiveKit's HTTP port answers 200 at / while the server runs (its health check).
        return [Probe(render.LIVEKIT_SERVICE, render.LIVEKIT_PORT, "http", "LiveKit (call media and signalling)",
                      calls=True)]

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        # LiveKit's own Prometheus listener (livekit.yaml `prometheus`); lk-jwt-service and the
        # web app serve no metrics.
        return [MetricsTarget(render.LIVEKIT_SERVICE, render.LIVEKIT_METRICS_PORT, role="livekit",
                              job=render.LIVEKIT_METRICS_JOB)]

    def well_known_client(self, cfg: StackConfig) -> dict[str, object]:
        return render.well_known_client(cfg)

    def check(self, cfg: StackConfig, view: StackView) -> list[Finding]:
        # LiveKit's TURN domain is the livekit host name, whose record points at the proxy's host.
        if not (cfg.element_call.livekit.turn and view.edge_service):
            return []
        sfu, proxy = view.target.host_of(render.LIVEKIT_SERVICE), view.target.host_of(view.edge_service)
        if sfu and proxy and sfu.name != proxy.name:
            return [("element_call.livekit.turn", True, "LiveKit's embedded TURN answers on the livekit host "
                     f"name, which points at the proxy's host '{proxy.name}': place livekit there too")]
        return []

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        return ("livekit",)

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        lk = cfg.element_call.livekit
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
                   File(render.LIVEKIT_KEYS, derive(secrets["livekit"], render.livekit_keys), secret=True, mode=0o400)],
            ports=ports,
            port_ranges=ranges,
            health=image_facts.http_check(lk.image, render.LIVEKIT_PORT),
            # The image has no user of its own; the SFU binds no port below 1024 and writes nothing.
            user=image_facts.non_root_user(lk.image),
            capabilities_add=image_facts.capabilities(lk.image),
            read_only_root=True,
            writable_paths=("/tmp",),
            # Its webhook to lk-jwt-service (a published port when they live on different hosts).
            reaches=((render.JWT_SERVICE, render.JWT_PORT),),
            # ICE checks toward clients' candidates; STUN for its own public address.
            egress_internet=("ICE connectivity checks", "STUN"),
            # Not among `ports`: a target admits only the scraper there, not the namespace.
            metrics_port=render.LIVEKIT_METRICS_PORT,
            metrics_labels=(("job", render.LIVEKIT_METRICS_JOB), ("role", "livekit")),
        )
        jwt = Service(
            name=render.JWT_SERVICE,
            component=COMPONENT,
            image=cfg.element_call.jwt_image,
            env=dict(render.jwt_env(cfg)),
            files=[File(render.JWT_SECRET_FILE, secrets["livekit"], secret=True, mode=0o400)],
            ports=[Port("http", render.JWT_PORT)],
            # The routing proxy forwards clients; LiveKit delivers its webhook.
            allowed_clients=(*((view.edge_service,) if view.edge_service else ()), render.LIVEKIT_SERVICE),
            # FROM scratch: only a checker the image is known to ship could run (see its facts).
            health=image_facts.http_check(cfg.element_call.jwt_image, render.JWT_PORT),
            # The image has no user of its own; its static binary needs none.
            user=image_facts.non_root_user(cfg.element_call.jwt_image),
            capabilities_add=image_facts.capabilities(cfg.element_call.jwt_image),
            read_only_root=True,
            # It validates a client's OpenID token at the client's homeserver's federation API.
            egress_internet=("homeservers' federation API (OpenID token validation)",),
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
            # nginx-unprivileged keeps its pid and temp files under /tmp.
            read_only_root=True,
            writable_paths=("/tmp",),
        )
        return [livekit, jwt, web]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        from components import secrets as gen

        component = Component("ElementCall", self.name)
        livekit_secret = gen.password(f"{self.name}-livekit-secret", component, protect=cfg.protect, length=48)
        outputs: dict[str, object] = {
            "element_call_url": cfg.url("call"),
            "livekit_service_url": render.jwt_url(cfg),
            "livekit_url": render.livekit_url(cfg),
        }
        component.register_outputs(dict(outputs))
        return Contribution(
            parent=component,
            services=self.services(cfg, ctx.view, {"livekit": livekit_secret}),
            homeserver=render.homeserver(cfg),
            outputs=outputs,
        )
