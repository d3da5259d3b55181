"""Target adapters: how target-neutral services (spec.py) become Pulumi resources."""

from __future__ import annotations

from typing import Any

from config.model import DockerTarget, StackConfig


def make_platform(cfg: StackConfig) -> Any:
    if isinstance(cfg.target, DockerTarget):
        from .docker import DockerPlatform

        return DockerPlatform(cfg)
    from .kubernetes import KubernetesPlatform

    return KubernetesPlatform(cfg)
