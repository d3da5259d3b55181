"""Rules over the validated stack config, each with the keys it reads.

The loader validates the config in one pass, replaces every value it refused with its default,
and then runs each rule whose keys all validated. A rule whose own input is invalid is skipped
(its verdict would be about a default the user never wrote); every other rule still runs, so
one bad section never hides another section's problems.

The loader runs the config's own rules (config/rules.py) and then the rules its caller hands it:
the stack-wide rules that need the parts (components/checks.py) come from the layer above
(stack.parse, stack.load), so the config never imports the components.

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
Rule = Callable[["StackConfig"], list[Finding]]


@dataclass(frozen=True)
class Check:
    name: str
    reads: tuple[str, ...]
    run: Rule


class Rules(list[Check]):
    """Rules in the order the loader runs them: each module of rules keeps its own."""

    def check(self, *reads: str) -> Callable[[Rule], Rule]:
        """Add the decorated function as a rule that reads the given key paths."""

        def decorate(run: Rule) -> Rule:
            self.append(Check(f"{run.__module__}.{run.__qualname__}", reads, run))
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
