"""The registry of targets: each target config's `kind` names its Target class (its facts and
operator verbs, contract.Target, answered from the config alone: no SDK is loaded) and a loader
for its adapter (contract.Platform, which loads the target's SDK only when called).

`target_of` and `make_platform` (components/platform/__init__.py) look the kind up here; nothing
else in the program knows which targets exist. Registering a target is one entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from config.model import StackConfig

from .contract import Target
from .docker_hosts import DockerHosts
from .kubernetes_cluster import KubernetesCluster

if TYPE_CHECKING:  # pragma: no cover - types only
    from .contract import Platform


@dataclass(frozen=True)
class Registration:
    target: Callable[[StackConfig], Target]
    # Imports the adapter's module (and so its SDK) when called.
    platform: Callable[[], Callable[[StackConfig], Platform]]


def _docker_platform() -> Callable[[StackConfig], Platform]:
    from .docker import DockerPlatform

    return DockerPlatform


def _kubernetes_platform() -> Callable[[StackConfig], Platform]:
    from .kubernetes.platform import KubernetesPlatform

    return KubernetesPlatform


TARGETS: dict[str, Registration] = {
    DockerHosts.kind: Registration(DockerHosts, _docker_platform),
    KubernetesCluster.kind: Registration(KubernetesCluster, _kubernetes_platform),
}


def registration(cfg: StackConfig) -> Registration:
    kind = cfg.target.kind
    if kind not in TARGETS:
        raise KeyError(f"no target of kind {kind!r} is registered (components/platform/targets.py has "
                       f"{', '.join(sorted(TARGETS))})")
    return TARGETS[kind]


def target_of(cfg: StackConfig) -> Target:
    return registration(cfg).target(cfg)
