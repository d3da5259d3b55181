"""Coturn: TURN for legacy 1:1 calls, sharing a generated secret with Synapse."""

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

COMPONENT = "coturn"


class Coturn(Part):
    name = "coturn"
    switches = ("coturn.enabled",)
    reads = ("coturn", "element_call.enabled", "element_call.livekit")

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.coturn.enabled

    def endpoints(self, cfg: StackConfig) -> list[Endpoint]:
        # Clients reach coturn directly; the record points at its own public address when set.
        return [Endpoint("turn", served_by_proxy=False, media=True, address=cfg.coturn.external_ip, ipv6=False)]

    def probes(self, cfg: StackConfig) -> list[Probe]:
        # The blackbox exporter has no UDP prober besides DNS: its TCP listener on the same port
        # stands for the process (one turnserver serves both).
        return [Probe(render.SERVICE, render.PORT, "tcp", "TURN relaying for calls", calls=True)]

    def metrics_targets(self, cfg: StackConfig) -> list[MetricsTarget]:
        return [MetricsTarget(render.SERVICE, render.METRICS_PORT, render.METRICS_PATH, role="coturn",
                              job=render.METRICS_JOB)]

    def check(self, cfg: StackConfig, view: StackView) -> list[Finding]:
        return render.check(cfg)

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        return ("shared_secret",)

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        turn = cfg.coturn
        return [Service(
            name=render.SERVICE,
            component=COMPONENT,
            image=turn.image,
            entrypoint=render.command(),
            files=[File(render.CONFIG, render.turnserver_conf(cfg)),
                   File(render.AUTH_CONFIG, derive(secrets["shared_secret"], render.auth_conf), secret=True, mode=0o400)],
            ports=[Port("turn-udp", render.PORT, "udp", public=True),
                   Port("turn-tcp", render.PORT, "tcp", public=True)],
            port_ranges=[PortRange("relay", turn.relay_port_start, turn.relay_port_end, "udp")],
            user=image_facts.user(turn.image),
            # /usr/bin/turnserver carries CAP_NET_BIND_SERVICE (setcap): with it outside the
            # bounding set the kernel refuses to exec the binary at all.
            capabilities_add=image_facts.capabilities(turn.image),
            read_only_root=True,
            writable_paths=("/tmp",),
            egress_internet=("relayed media to peers",),
            metrics_port=render.METRICS_PORT,
            metrics_path=render.METRICS_PATH,
            metrics_labels=(("job", render.METRICS_JOB), ("role", "coturn")),
        )]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        from components import secrets as gen

        component = Component("Coturn", self.name)
        shared_secret = gen.password(f"{self.name}-shared-secret", component, protect=cfg.protect)
        if not render.external_ip(cfg):
            # Not an error (a host with a public address of its own works), but behind Docker's
            # NAT or a load balancer coturn would advertise an address nobody can reach.
            pulumi.log.warn("coturn.external_ip is unset: coturn advertises the address it sees "
                            "locally; set it to the public IP", resource=component)
        outputs: dict[str, object] = {"turn_uris": ", ".join(render.turn_uris(cfg))}
        component.register_outputs(dict(outputs))
        return Contribution(
            parent=component,
            services=self.services(cfg, ctx.view, {"shared_secret": shared_secret}),
            homeserver=render.homeserver(cfg),
            secret_files={render.SYNAPSE_SECRET_PATH: shared_secret},
            outputs=outputs,
        )
