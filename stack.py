"""build(cfg): the whole deployment from one typed config. __main__.py and the offline render
both call it; tests call it under Pulumi's mocks with many configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

import components.checks  # noqa: F401  (registers the stack-wide config rules)
from components import parts as stack_parts
from components.platform import make_platform
from components.platform.spec import Service
from components.synapse import SynapseCluster, idle
from components.tls import Tls, component_needed
from config.model import KubernetesTarget, StackConfig


@dataclass
class Deployment:
    cfg: StackConfig
    services: list[Service] = field(default_factory=list)
    outputs: dict[str, object] = field(default_factory=dict)
    # Kubernetes target: manifest key -> object, secrets masked (the offline render writes them).
    manifests: dict[str, dict[str, object]] = field(default_factory=dict)


def build(cfg: StackConfig) -> Deployment:
    # Warnings, not errors: these topologies deploy and run, but pay for workers with no work.
    for text in idle.warnings(cfg):
        pulumi.log.warn(text)
    platform = make_platform(cfg)
    # Element Call, ntfy, coturn, Element Web and DNS first: their homeserver keys, sites and
    # secret files are the cluster's inputs.
    parts = stack_parts.build(cfg, platform)
    inputs = parts.inputs
    extra_services: list[Service] = []
    if component_needed(cfg):
        tls = Tls("tls", cfg, platform, cloudflare_provider=parts.cloudflare_provider)
        inputs.proxy_files += tls.proxy_files
        inputs.proxy_volumes += tls.proxy_volumes
        inputs.proxy_watches_acme = bool(tls.services)
        extra_services += tls.services
        if isinstance(cfg.target, KubernetesTarget) and tls.held is not None:
            # Before the cluster runs the proxy: its Ingress for proxied names reads this.
            platform.use_origin_ca(tls.held.certificate, tls.held.private_key, parent=tls)
    synapse = SynapseCluster("synapse", cfg, platform, inputs)
    deployment = Deployment(cfg, services=[*synapse.services, *parts.services, *extra_services])
    deployment.outputs = {
        "server_name": cfg.server_name,
        "homeserver_url": cfg.url("matrix"),
        "synapse_processes": [p.name for p in synapse.topology.processes],
        **parts.outputs,
    }
    deployment.manifests = getattr(platform, "manifests", {})
    return deployment


def export(deployment: Deployment) -> None:
    for key, value in deployment.outputs.items():
        pulumi.export(key, value)
