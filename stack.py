"""build(cfg): the whole deployment from one typed config. __main__.py and the offline render
both call it; tests call it under Pulumi's mocks with many configs.

parse(raw, secret_keys) and load(): the typed config judged by every rule, the config's own and
the stack-wide ones that need the parts (components/checks.py), which only this layer knows.

The view of the stack is resolved once from the enabled parts' declarations; every part the
config enables is then built in stage order, reading the view; the target realizes every part's
services in one call. This is the one module that knows every part (through the catalog)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pulumi

import config
from components import catalog, checks
from components.part import BuildContext, Contribution
from components.platform import make_platform
from components.platform.contract import Graph
from components.platform.spec import Service
from components.synapse import idle
from components.view import resolve
from config.model import StackConfig


@dataclass
class Deployment:
    cfg: StackConfig
    services: list[Service] = field(default_factory=list)
    outputs: dict[str, object] = field(default_factory=dict)
    # Kubernetes target: manifest key -> object, secrets masked (the offline render writes them).
    manifests: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


def parse(raw: Mapping[str, object], secret_keys: Iterable[str] = ()) -> StackConfig:
    """config.parse with the stack-wide rules: raises config.ConfigError with every problem."""
    return config.parse(raw, secret_keys, rules=checks.RULES)


def load() -> StackConfig:
    """The running stack's config (config.load) with the stack-wide rules."""
    return config.load(rules=checks.RULES)


def build(cfg: StackConfig) -> Deployment:
    # Warnings, not errors: these topologies deploy and run, but pay for workers with no work.
    for text in idle.warnings(cfg):
        pulumi.log.warn(text)
    view, parts = resolve(cfg, catalog.PARTS)
    platform = make_platform(cfg)
    ctx = BuildContext(platform, view)
    if cfg.cloudflare.enabled:
        from components import dns

        ctx.cloudflare_provider = dns.provider(cfg)
    graph = Graph()
    outputs: dict[str, object] = {}
    by_name: dict[str, Contribution] = {}
    for part in sorted(parts, key=lambda part: part.stage):
        built = part.build(cfg, ctx)
        ctx.built.append(built)
        by_name[part.name] = built
        if built.parent is not None:
            # A part whose resources another part's component owned before keeps them (aliases).
            former = by_name.get(part.formerly_part) if part.formerly_part else None
            graph.add(built.services, built.parent, former.parent if former is not None else None)
        if built.edge_certificate is not None:
            graph.edge_certificate, graph.edge_certificate_owner = built.edge_certificate, built.parent
        outputs.update(built.outputs)
    platform.realize(graph)
    return Deployment(cfg, services=[s for s, _parent in graph.services], outputs=outputs,
                      manifests=platform.manifests)


def export(deployment: Deployment) -> None:
    for key, value in deployment.outputs.items():
        pulumi.export(key, value)
