"""The typed stack config: models, defaults and loading."""

from .load import EXTRA_CHECKS, NAMESPACE, ConfigError, Problem, load, parse
from .model import DockerTarget, KubernetesTarget, StackConfig

__all__ = [
    "EXTRA_CHECKS",
    "NAMESPACE",
    "ConfigError",
    "DockerTarget",
    "KubernetesTarget",
    "Problem",
    "StackConfig",
    "load",
    "parse",
]
