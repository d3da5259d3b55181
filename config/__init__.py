"""The typed stack config: models, defaults and loading."""

from .checks import Check, Finding, Rules
from .load import NAMESPACE, ConfigError, Problem, load, parse
from .model import DockerTarget, KubernetesTarget, StackConfig

__all__ = [
    "Check",
    "NAMESPACE",
    "ConfigError",
    "DockerTarget",
    "Finding",
    "KubernetesTarget",
    "Problem",
    "Rules",
    "StackConfig",
    "load",
    "parse",
]
