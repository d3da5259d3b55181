"""Rules over the validated stack config, each with the keys it reads.

The loader validates the config in one pass, replaces every value it refused with its default,
and then runs each rule whose keys all validated. A rule whose own input is invalid is skipped
(its verdict would be about a default the user never wrote); every other rule still runs, so
one bad section never hides another section's problems.

A key path in `reads` covers everything below it (`synapse.workers`); a path ending in `.*`
reads the entries of a mapping one by one (`synapse.workers.counts.*`), so one refused entry
does not stop the rule judging the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import StackConfig

# (key path, the offending value or None, what is allowed)
Finding = tuple[str, object, str]


@dataclass(frozen=True)
class Check:
    name: str
    reads: tuple[str, ...]
    run: Callable[[StackConfig], list[Finding]]


# Every registered rule, run in registration order: the config's own (config/model.py) first,
# then those that need the components (worker table, placement, DNS), registered by them.
CHECKS: list[Check] = []


# The modules whose import registers rules, in order: the config's own, then those that need
# the parts (which register each part's own rules). The loader imports them by name, so loading
# a config never depends on who imported what before.
RULE_MODULES = ("config.model", "components.checks")


def rules() -> list[Check]:
    import importlib

    for module in RULE_MODULES:
        importlib.import_module(module)
    return list(CHECKS)


def register(rule: Check) -> None:
    CHECKS[:] = [c for c in CHECKS if c.name != rule.name]  # a reloaded module replaces its rules
    CHECKS.append(rule)


def check(*reads: str) -> Callable[[Callable[[StackConfig], list[Finding]]], Callable[[StackConfig], list[Finding]]]:
    """Register a rule that reads the given key paths."""

    def decorate(run: Callable[[StackConfig], list[Finding]]) -> Callable[[StackConfig], list[Finding]]:
        register(Check(f"{run.__module__}.{run.__qualname__}", reads, run))
        return run

    return decorate


Path = tuple[str | int, ...]


# Both are asked about the same few key paths again and again (every rule's reads against every
# refused key, on every parse): memoized.
@functools.cache
def split(path: str) -> Path:
    return tuple(path.split("."))


@functools.cache
def touches(read: str, invalid: Path) -> bool:
    """Whether an invalid key path is part of what `read` covers."""
    if read.endswith(".*"):
        # Entries are judged one by one: only the mapping as a whole being invalid matters.
        base = split(read[:-2])
        return base[: len(invalid)] == invalid
    want = split(read)
    n = min(len(want), len(invalid))
    return want[:n] == invalid[:n]
