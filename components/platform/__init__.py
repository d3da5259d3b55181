"""Target adapters: how target-neutral services (spec.py) become Pulumi resources. The contract
they fulfil is contract.py; the registry of targets, their config-only facts and operator verbs,
is targets.py."""

from __future__ import annotations

from config.model import StackConfig

from .contract import Platform
from .targets import registration


def make_platform(cfg: StackConfig) -> Platform:
    # The loader imports the adapter, which loads its provider SDK.
    return registration(cfg).platform()(cfg)
