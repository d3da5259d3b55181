"""Load benchmark of the deployed cluster: how much each Synapse topology carries on this machine.

    .venv/bin/python scripts/bench_cluster.py [--stacks monolith,seed-000] [--levels 10,25,50,100]
        [--hold 45] [--seed 1] [--out bench-out]

For each stack, one after another: render it, boot it as the boot tests do (real PostgreSQL,
Valkey, Synapse main and workers, nginx on loopback; tests/integration/cluster.py), drive the
seeded load of tests/integration/load.py through the proxy at each level, print the figures, stop.
A stack is a worker preset (`monolith`, `seed-000`), the name of a stack config of this project
(`dev` reads Pulumi.dev.yaml) or a path to any Pulumi.<stack>.yaml: its `synapse.workers` and
database pool (`cp_max`) are what is booted; the rest is the boot tests' localhost stack.

Writes <out>/bench-<stamp>.json (every figure) and <out>/bench-<stamp>.png (p95 delivery latency
against active users per stack; CPU seconds per role at the top level), and prints a Markdown
table. Timing figures hold for this machine only; the ratios between stacks are the result.
Nothing is asserted: the CI guard is test_synapse_boot.py's short run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.synapse.workers import PRESETS  # noqa: E402
from tests.integration.cluster import Cluster, boot_config, render  # noqa: E402
from tests.integration.load import (  # noqa: E402
    DRAIN_S,
    SHORT_DRAIN_S,
    SHORT_HOLD_S,
    SHORT_LEVELS,
    LevelFigures,
    as_dict,
    guard_problems,
    knee,
    run_load,
)


def stack_config(spec: str) -> dict[str, Any]:
    """The boot config for one --stacks entry (see the module's doc)."""
    if spec in PRESETS:
        return boot_config(None, preset=spec)
    path = Path(spec) if spec.endswith((".yaml", ".yml")) else ROOT / f"Pulumi.{spec}.yaml"
    if not path.is_file():
        raise SystemExit(f"{spec}: neither a preset ({', '.join(PRESETS)}) nor a stack config ({path} not found)")
    config = (yaml.safe_load(path.read_text()) or {}).get("config", {})
    synapse: dict[str, Any] = next((v for k, v in config.items() if k.endswith(":synapse")), {}) or {}
    workers = synapse.get("workers", {})
    raw = boot_config(workers.get("counts"), preset=workers.get("preset", "monolith"))
    database = synapse.get("database") or {}
    if database.get("cp_max") and database.get("kind", "bundled") == "bundled":
        raw["synapse"]["database"] = {"cp_max": database["cp_max"]}
    return raw


def describe(cluster: Cluster) -> str:
    workers = cluster.worker_names()
    return f"main + {len(workers)} workers" if workers else "main only"


def bench_stack(spec: str, levels: list[int], hold_s: float, seed: int, drain_s: float) -> dict[str, Any]:
    raw = stack_config(spec)
    print(f"\n== {spec}: rendering", flush=True)
    result = render(raw)
    t0 = time.monotonic()
    with Cluster(result) as cluster:
        boot_s = time.monotonic() - t0
        print(f"== {spec}: booted {describe(cluster)} in {boot_s:.0f}s; {max(levels)} users, levels {levels}, "
              f"{hold_s:.0f}s each", flush=True)
        t0 = time.monotonic()
        figures = run_load(cluster, levels, hold_s, seed, drain_s)
        print(f"   set-up of {max(levels)} users and their rooms: {figures[0].setup_s:.0f}s", flush=True)
        for f in figures:
            print_level(spec, f)
        problems = guard_problems(figures, worker_topology=bool(cluster.worker_names()))
        for problem in problems:
            print(f"   GUARD {spec}: {problem}", flush=True)
        return {"guard_problems": problems, "stack": spec, "topology": describe(cluster), "processes": sorted(cluster.procs),
                "boot_s": round(boot_s, 1), "load_s": round(time.monotonic() - t0, 1),
                "knee_users": knee(figures), "levels": as_dict(figures)}


def print_level(spec: str, f: LevelFigures) -> None:
    print(f"   {spec} {f.users:4d} users: {f.events_per_s:6.1f} ev/s  send p95 {f.send_ms['p95']:7.0f} ms  "
          f"delivery p50/p95/p99 {f.delivery_ms['p50']:.0f}/{f.delivery_ms['p95']:.0f}/{f.delivery_ms['p99']:.0f} ms  "
          f"errors {f.errors}  main {100 * f.main_share:.1f}%  pg {f.pg_busy_peak}/{f.pg_open_peak}", flush=True)
    if f.error_samples:
        print("     errors: " + "; ".join(f.error_samples[:3]), flush=True)


def table(runs: list[dict[str, Any]]) -> str:
    head = ("| stack | users | events/s | send p50/p95/p99 ms | delivery p50/p95/p99 ms | undelivered | errors "
            "| main's share | PG busy/open (max) | CPU s (all roles) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for run in runs:
        for f in run["levels"]:
            s, d = f["send_ms"], f["delivery_ms"]
            lines.append(
                f"| {run['stack']} | {f['users']} | {f['events_per_s']:.1f} | {s['p50']:.0f}/{s['p95']:.0f}/{s['p99']:.0f} "
                f"| {d['p50']:.0f}/{d['p95']:.0f}/{d['p99']:.0f} | {f['undelivered']} | {f['errors']} "
                f"| {100 * f['main_share']:.1f} % | {f['pg_busy_peak']}/{f['pg_open_peak']} ({f['pg_max_connections']}) "
                f"| {sum(f['cpu_s'].values()):.0f} |")
    lines.append("")
    lines.append("Knee (first level with p95 delivery > 1 s): "
                 + ", ".join(f"{r['stack']}: {r['knee_users'] or 'none up to ' + str(r['levels'][-1]['users'])}"
                             for r in runs))
    return "\n".join(lines)


def role_table(runs: list[dict[str, Any]]) -> str:
    """CPU seconds and peak memory per role at the top level."""
    lines = ["| stack | role | CPU s | peak MiB |", "|---|---|---|---|"]
    for run in runs:
        top = run["levels"][-1]
        for role, cpu in sorted(top["cpu_s"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {run['stack']} | {role} | {cpu:.1f} | {top['peak_mib'].get(role, 0):.0f} |")
    return "\n".join(lines)


def picture(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    # More than 5 % of deliveries lost makes p95 infinite: such points sit on one line above every
    # finite one, drawn as crosses.
    finite = [f["delivery_ms"]["p95"] for run in runs for f in run["levels"] if f["delivery_ms"]["p95"] != float("inf")]
    cap = max([*finite, 1000.0]) * 1.15
    for run in runs:
        xs = [f["users"] for f in run["levels"]]
        ys = [min(f["delivery_ms"]["p95"], cap) for f in run["levels"]]
        line = left.plot(xs, ys, marker="o", label=f"{run['stack']} ({run['topology']})")[0]
        lost = [(x, y) for x, y in zip(xs, ys, strict=True) if y == cap]
        if lost:
            left.scatter(*zip(*lost, strict=True), marker="x", s=120, color=line.get_color(), zorder=3)
    left.axhline(cap, color="red", linestyle=":", linewidth=1, label="p95 infinite (> 5 % lost)")
    left.axhline(1000, color="grey", linestyle="--", linewidth=1, label="1 s (knee)")
    left.set_xlabel("active users")
    left.set_ylabel("p95 delivery latency (ms)")
    left.set_title("Delivery p95 against load")
    left.legend(fontsize=8)
    roles = sorted({r for run in runs for r in run["levels"][-1]["cpu_s"]},
                   key=lambda r: -max(run["levels"][-1]["cpu_s"].get(r, 0) for run in runs))
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        top = run["levels"][-1]
        left_edges = [j + i * width for j in range(len(roles))]
        right.bar(left_edges, [top["cpu_s"].get(r, 0) for r in roles], width=width,
                  label=f"{run['stack']} at {top['users']} users")
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(roles))], roles, rotation=45, ha="right", fontsize=8)
    right.set_ylabel(f"CPU seconds over {runs[0]['levels'][-1]['hold_s']:.0f} s + drain")
    right.set_title("CPU per role at the top level")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", default="monolith,seed-000", help="comma-separated presets, stack names or files")
    parser.add_argument("--levels", default="10,25,50,100", help="active users per level, ascending")
    parser.add_argument("--hold", type=float, default=45.0, help="seconds each level is held")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain", type=float, default=DRAIN_S,
                        help="seconds syncs go on after a level's last send; later deliveries count as lost")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--short", action="store_true",
                        help=f"the CI mode: one level of {SHORT_LEVELS[0]} users for {SHORT_HOLD_S:.0f}s")
    parser.add_argument("--no-picture", action="store_true", help="skip the PNG (no matplotlib needed)")
    args = parser.parse_args()
    levels = sorted(int(n) for n in args.levels.split(","))
    if args.short:
        levels, args.hold, args.drain = list(SHORT_LEVELS), SHORT_HOLD_S, SHORT_DRAIN_S
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    for spec in stacks:
        stack_config(spec)  # every bad name before any boot

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    runs: list[dict[str, Any]] = []
    for spec in stacks:
        runs.append(bench_stack(spec, levels, args.hold, args.seed, args.drain))
        # Written after each stack, so a long run interrupted later keeps what it measured.
        write_figures(args, stamp, levels, runs)
    print("\n" + table(runs) + "\n\n" + role_table(runs))
    if not args.no_picture:
        picture(runs, args.out / f"bench-{stamp}.png")
        print(f"\npicture: {args.out / f'bench-{stamp}.png'}")
    print(f"figures: {args.out / f'bench-{stamp}.json'}")


def write_figures(args: argparse.Namespace, stamp: str, levels: list[int], runs: list[dict[str, Any]]) -> None:
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "seed": args.seed, "hold_s": args.hold,
            "drain_s": args.drain,
            "levels": levels, "cpus": os.cpu_count(), "machine": platform.machine(),
            "load_average_at_end": os.getloadavg(), "when_utc": stamp}
    (args.out / f"bench-{stamp}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
