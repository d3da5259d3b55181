"""The typed stack config: models, defaults and loading."""

from .checks import CHECKS, check
from .load import NAMESPACE, ConfigError, Problem, load, parse
from .model import DockerTarget, KubernetesTarget, StackConfig

__all__ = [
    "CHECKS",
    "NAMESPACE",
    "ConfigError",
    "DockerTarget",
    "KubernetesTarget",
    "Problem",
    "StackConfig",
    "check",
    "load",
    "parse",
]
