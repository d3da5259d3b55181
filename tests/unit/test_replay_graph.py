"""The benchmark's SDK-alone figure (scripts/replay_graph.py) is only a bound if the replay hands
the engine what the program did: the same resources, parents, providers, dependencies, options
and inputs, secrets still secret."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import pytest

from render import offline
from render.__main__ import stack_config
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import replay_graph  # noqa: E402


def _seen(registered: list[offline.Registered]) -> list[dict[str, Any]]:
    """What the engine received, with URNs (which name the stack) reduced to names."""
    names = {r.urn: r.name for r in registered}
    return sorted(({**r.masked(), "urn": r.name, "parent": names.get(r.parent, ""),
                    "dependsOn": sorted(names[u] for u in r.dependencies),
                    # Replacement triggers and which resource feeds which input are the
                    # program's own Output arithmetic: not replayed.
                    "replacementTrigger": None, "replacedWith": None, "inputDependencies": {}}
                   for r in registered), key=lambda r: (r["type"], r["name"]))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_replay_declares_exactly_what_the_program_declared(stack: str) -> None:
    raw, secret = stack_config(stack, ROOT)
    run = offline.run(raw, stack=stack, secret_keys=secret)
    # Through JSON, as the benchmark hands the graph to a fresh interpreter.
    graph = json.loads(json.dumps(replay_graph.record(run.registered)))
    monitor, _log = offline.declare(functools.partial(replay_graph.replay, graph), {}, stack=stack)
    assert len(monitor.registered) == len(run.registered)
    seen = _seen(run.registered)
    assert _seen(monitor.registered) == seen
    # Secrets are masked in what is compared: a replay that lost one would show its value.
    assert offline.MASK in json.dumps(seen)

