"""build(cfg): the whole deployment from one typed config. __main__.py and the offline render
both call it; tests call it under Pulumi's mocks with many configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

import config
from components.platform import make_platform, placement
from components.platform.spec import Service
from components.synapse import SynapseCluster, homeserver
from components.synapse import services as synapse_services
from config.model import StackConfig


def check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    problems = homeserver.check(cfg)
    if problems:
        return problems
    cluster = synapse_services.service_names(cfg)
    return placement.check(cfg, cluster, [sorted(cluster)])


if check not in config.EXTRA_CHECKS:
    config.EXTRA_CHECKS.append(check)


@dataclass
class Deployment:
    cfg: StackConfig
    services: list[Service] = field(default_factory=list)
    outputs: dict[str, object] = field(default_factory=dict)


def build(cfg: StackConfig) -> Deployment:
    platform = make_platform(cfg)
    inputs = synapse_services.Inputs()
    synapse = SynapseCluster("synapse", cfg, platform, inputs)
    deployment = Deployment(cfg, services=list(synapse.services))
    deployment.outputs = {
        "server_name": cfg.server_name,
        "homeserver_url": cfg.url("matrix"),
        "synapse_processes": [p.name for p in synapse.topology.processes],
    }
    return deployment


def export(deployment: Deployment) -> None:
    for key, value in deployment.outputs.items():
        pulumi.export(key, value)
