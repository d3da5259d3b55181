"""Warnings for topologies that deploy and run but pay for workers with nothing to do: each names
the key and what to change, reaches the Pulumi engine through pulumi.log.warn, is printed by the
offline render, and never fails the stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import config
import stack
from components.synapse import idle
from components.synapse.workers import ROLES

DEDICATED = {"sync": 1, "client_reader": 1, "event_creator": 1, "federation_reader": 1}
OFF = {"element_call": {"enabled": False}, "ntfy": {"enabled": False}, "element_web": {"enabled": False}}


def _cfg(synapse: dict[str, Any]) -> config.StackConfig:
    return stack.parse({"server_name": "localhost", "synapse": synapse, **OFF})


def _warned(cfg: config.StackConfig) -> dict[str, str]:
    return {key: advice for key, _count, advice in idle.idle_workers(cfg)}


def test_generic_workers_are_idle_when_every_group_they_serve_has_a_dedicated_role() -> None:
    cfg = _cfg({"workers": {"counts": {"generic": 2, **DEDICATED}}})
    [line] = idle.warnings(cfg)
    assert line.startswith("matrix-stack:synapse.workers.counts.generic: generic workers serve no requests")
    assert "client_reader, event_creator, federation_reader, sync" in line
    assert "set synapse.workers.counts.generic: 0" in line
    assert line.endswith("(got 2)")


@pytest.mark.parametrize("missing", sorted(DEDICATED))
def test_generic_workers_that_still_take_a_group_are_not_idle(missing: str) -> None:
    counts = {"generic": 2, **{k: v for k, v in DEDICATED.items() if k != missing}}
    assert _warned(_cfg({"workers": {"counts": counts}})) == {}


def test_the_advice_says_when_the_preset_adds_the_workers() -> None:
    cfg = _cfg({"workers": {"preset": "seed-000", "counts": {"sync": 1, "client_reader": 1, "event_creator": 1}}})
    advice = _warned(cfg)["synapse.workers.counts.generic"]
    assert "set synapse.workers.counts.generic: 0 (the preset seed-000 adds 6)" in advice


FEDERATION_ROLES = ["federation_reader", "federation_inbound", "federation_sender"]


def test_the_federation_only_roles_are_the_table_s() -> None:
    assert sorted(r.name for r in ROLES if r.federation_only) == sorted(FEDERATION_ROLES)


@pytest.mark.parametrize("role", FEDERATION_ROLES)
def test_federation_workers_on_a_stack_without_federation_are_idle(role: str) -> None:
    cfg = _cfg({"workers": {"counts": {role: 2}}, "federation": {"enabled": False}})
    advice = _warned(cfg)[f"synapse.workers.counts.{role}"]
    assert "synapse.federation.enabled is false" in advice
    assert f"set synapse.workers.counts.{role}: 0" in advice and "or enable federation" in advice


@pytest.mark.parametrize("role", FEDERATION_ROLES)
def test_federation_workers_whitelisted_to_nothing_are_idle(role: str) -> None:
    cfg = _cfg({"workers": {"counts": {role: 1}}, "federation": {"domain_whitelist": []}})
    advice = _warned(cfg)[f"synapse.workers.counts.{role}"]
    assert "synapse.federation.domain_whitelist is empty" in advice
    assert f"set synapse.workers.counts.{role}: 0" in advice and "list the servers to federate with" in advice


@pytest.mark.parametrize("federation", [{}, {"domain_whitelist": ["localhost", "example.org"]}], ids=["open", "whitelist"])
def test_federation_workers_that_federate_are_not_idle(federation: dict[str, Any]) -> None:
    cfg = _cfg({"workers": {"counts": dict.fromkeys(FEDERATION_ROLES, 1)}, "federation": federation})
    assert _warned(cfg) == {}


def test_the_shipped_stacks_warn_of_nothing() -> None:
    from tests.conftest import stack_raw

    for name in ("dev", "staging", "prod"):
        raw = stack_raw(name)
        cfg = config.StackConfig.model_validate(raw)
        assert idle.warnings(cfg) == [], name


IDLE = {"server_name": "localhost", **OFF,
        "synapse": {"workers": {"counts": {"generic": 1, "federation_sender": 1, **DEDICATED}},
                    "federation": {"enabled": False}}}


def test_the_warnings_reach_the_engine_and_the_stack_still_builds() -> None:
    from render import offline

    result = offline.run(IDLE)
    assert result.warnings == idle.warnings(result.cfg)
    assert len(result.warnings) == 3  # generic, federation_reader, federation_sender
    assert any(r.type == "docker:index/container:Container" for r in result.resources)


def test_the_render_prints_the_warnings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import render.__main__ as render_main

    monkeypatch.setattr(render_main, "stack_config", lambda name: (IDLE, ()))
    assert render_main.main(["--stack", "idle", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    printed = [line for line in err if line.startswith("render: warning: ")]
    assert [line.removeprefix("render: warning: ") for line in printed] == idle.warnings(stack.parse(IDLE))
    assert any("matrix-stack:synapse.workers.counts.generic: " in line for line in printed)
