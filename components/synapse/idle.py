"""Workers that would run and do nothing: a valid topology that costs memory for no work.
Pure; the stack prints these as warnings (pulumi.log.warn), never as errors.
"""

from __future__ import annotations

from config.checks import Finding
from config.model import StackConfig

from . import homeserver as hs
from .routing import serving_role
from .workers import PRESETS, ROLES


def _count_key(cfg: StackConfig, role: str, count: int) -> str:
    """How to remove the role's workers, saying where they come from when the preset adds them."""
    preset = cfg.synapse.workers.preset
    if role not in cfg.synapse.workers.counts and PRESETS.get(preset, {}).get(role):
        return f"set synapse.workers.counts.{role}: 0 (the preset {preset} adds {count})"
    return f"set synapse.workers.counts.{role}: 0"


def idle_workers(cfg: StackConfig) -> list[Finding]:
    """(key path, count, what is idle and what to change) for each role whose workers would idle."""
    topo = hs.topology(cfg)
    counts = dict(topo.counts)
    found: list[Finding] = []
    for role in ROLES:
        count = counts.get(role.name, 0)
        if not count:
            continue
        key = f"synapse.workers.counts.{role.name}"
        if role.fallback and role.routes:
            takers = [serving_role(topo, group) for group in role.routes]
            if all(taker is not None and taker.name != role.name for taker in takers):
                dedicated = sorted({taker.name for taker in takers if taker is not None})
                found.append((key, count, f"{role.name} workers serve no requests: every route group they could "
                              f"take has a dedicated role here ({', '.join(dedicated)}); "
                              f"{_count_key(cfg, role.name, count)} to save their memory, or drop a dedicated role"))
        if role.federation_only:
            federation = cfg.synapse.federation
            if not federation.enabled:
                why, fix = "synapse.federation.enabled is false", "or enable federation"
            elif federation.domain_whitelist == []:
                why = "synapse.federation.domain_whitelist is empty, so no server federates with this one"
                fix = "or list the servers to federate with"
            else:
                continue
            found.append((key, count, f"{role.name} workers have nothing to do: {why}; "
                          f"{_count_key(cfg, role.name, count)}, {fix}"))
    return found


def warnings(cfg: StackConfig) -> list[str]:
    """The idle workers as warning lines, worded like the config's problems."""
    from config import Problem

    return [str(Problem(key, advice, str(count))) for key, count, advice in idle_workers(cfg)]
