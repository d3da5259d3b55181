"""Target adapters: how target-neutral services (spec.py) become Pulumi resources. The contract
they fulfil is contract.py; their config-only facts are targets.py."""

from __future__ import annotations

from config.model import DockerTarget, StackConfig

from .contract import Platform


def make_platform(cfg: StackConfig) -> Platform:
    # Imported here: each adapter loads its provider SDK.
    if isinstance(cfg.target, DockerTarget):
        from .docker import DockerPlatform

        return DockerPlatform(cfg)
    from .kubernetes.platform import KubernetesPlatform

    return KubernetesPlatform(cfg)
