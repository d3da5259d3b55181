"""The program's own cost per stack, against the cost of importing the SDKs it needs (prints figures).

    .venv/bin/python scripts/bench_program.py [--runs 5] [--stacks dev staging prod] [--profile STACK]
    .venv/bin/python scripts/bench_program.py --instructions [--stacks ...]   # under valgrind

For each stack, `--runs` rounds of three runs, each in a fresh interpreter:
  - program: what __main__.py runs under `pulumi up` (stack.load(), stack.build(), export),
    under Pulumi's mocks (render.offline.declare) with the config of Pulumi.STACK.yaml handed over
    as the engine hands it (values parsed), timed from the first import; the runtime awaits
    every Output before the run ends;
  - floor: importing exactly the SDK modules the stack needs, in the order the program run itself
    had them in sys.modules, and nothing else. Needed: pulumi and pydantic (the config), and the
    provider SDK of every resource type the run declared (docker:..., kubernetes:...); an SDK
    the run loaded without declaring any of its resources is reported as loaded in vain.
  - SDK: the same resources declared again by the SDK alone (scripts/replay_graph.py: the graph
    the program run declared, with its types, inputs and options, and no program), under the
    same mocks. (floor + SDK) estimates what any program declaring this graph costs at least;
    the program's own work is what it costs beyond that.
All three run without the cyclic garbage collector, as __main__.py runs the program.
Bytecode is cached as it is where `pulumi up` runs (pip compiles on install, Python caches the
program's modules): the children run with PYTHONPYCACHEPREFIX under ~/.cache/matrix-stack and
one discarded warm-up pair per stack fills it. Without a cache every run would compile the SDKs'
sources (Cloudflare's alone is 11 MB), on both sides of the ratio.

Printed: medians of wall and CPU seconds (CPU = all threads of the process, the steadier figure
on a loaded machine), the program/floor and SDK/floor ratios, resources declared per wall and per CPU second,
peak resident memory (ru_maxrss) of both, and how much of the program's CPU the mock engine took
(registrations: what the engine and the provider plugins do in their own processes under
`pulumi up`), with the ratio without it. The halves of a pair run back to back and their
order rotates, so load from elsewhere falls on all of them.

--profile STACK prints where the program's time goes beyond its floor: the CPU of each phase with
the floor's modules imported beforehand (medians of 5), `python -X importtime` totals per
top-level package, and cProfile's most expensive calls.
"""

from __future__ import annotations

import gc
import time

# Both halves run as __main__.py runs the program under `pulumi up`: without the cyclic garbage
# collector from the first import on. The floor's imports then cost what they cost the program.
gc.disable()
T0_WALL, T0_CPU = time.perf_counter(), time.process_time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STACKS = ("dev", "staging", "prod")
GOALS = {"dev": 1.5, "prod": 1.3}
MEMORY_HEADROOM_MB = 50.0
BYTECODE = Path.home() / ".cache" / "matrix-stack" / "bytecode"


def is_sdk(module: str) -> bool:
    top = module.split(".")[0]
    return top == "pulumi" or top.startswith("pulumi_") or top in ("pydantic", "pydantic_core")


def needed_packages(resource_types: set[str]) -> set[str]:
    """The SDK packages a run needs: the core ones, plus one provider SDK per provider it used."""
    providers = {t.split(":")[0] for t in resource_types if not t.startswith(("pulumi:", "matrix-stack:"))}
    providers |= {t.split(":")[2] for t in resource_types if t.startswith("pulumi:providers:")}
    return {"pulumi", "pydantic", "pydantic_core"} | {f"pulumi_{p}" for p in providers}


def _elapsed() -> dict[str, float]:
    return {"wall": time.perf_counter() - T0_WALL, "cpu": time.process_time() - T0_CPU,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_program(stack: str, config_file: str, graph_out: str | None = None) -> dict[str, Any]:
    """What __main__.py runs under `pulumi up` (load the config, build, export), under the mocks.
    The stack's config arrives as the engine hands it over: values already parsed."""
    import threading

    sys.path.insert(0, str(ROOT))
    from render import offline

    # CPU spent in the mock engine: decoding each registration's inputs, the stand-ins for
    # provider work, encoding the outputs back, keeping the render's record. Under `pulumi up`
    # the engine and the provider plugins do that work in their own processes, not the program.
    mock_cpu = [0.0]
    lock = threading.Lock()
    register = offline.RecordingMonitor.RegisterResource

    def timed(self: Any, request: Any) -> Any:
        started = time.thread_time()
        try:
            return register(self, request)
        finally:
            with lock:
                mock_cpu[0] += time.thread_time() - started

    offline.RecordingMonitor.RegisterResource = timed  # type: ignore[method-assign]
    given = json.loads(Path(config_file).read_text())

    def main() -> None:
        import stack as program

        program.export(program.build(program.load()))

    monitor, _log = offline.declare(main, given["raw"], stack=stack, secret_keys=tuple(given["secret"]))
    figures = _elapsed()
    figures["mock_cpu"] = mock_cpu[0]
    figures["resources"] = len(monitor.registered)
    loaded = [m for m, mod in list(sys.modules.items()) if mod is not None and is_sdk(m)]
    needed = needed_packages({r.type for r in monitor.registered})
    figures["sdk_modules"] = [m for m in loaded if m.split(".")[0] in needed]
    figures["unneeded"] = sorted({m.split(".")[0] for m in loaded} - needed)
    if graph_out:
        import replay_graph

        Path(graph_out).write_text(json.dumps(replay_graph.record(monitor.registered)))
    return figures


def _stack_config_file(stack: str, directory: str) -> str:
    """Pulumi.STACK.yaml's keys as the engine hands them to the program (secure values as
    stand-ins), in a file for the program's runs."""
    sys.path.insert(0, str(ROOT))
    from render.__main__ import stack_config

    raw, secret = stack_config(stack)
    path = os.path.join(directory, f"{stack}-config.json")
    Path(path).write_text(json.dumps({"raw": raw, "secret": list(secret)}))
    return path


def child_replay(stack: str, graph_file: str, modules_file: str) -> dict[str, Any]:
    """The SDK alone: the floor's imports, then the recorded graph declared again under the same
    mocks (so SDK - floor is the SDK's work on these resources)."""
    import functools

    _import_all(modules_file)
    sys.path.insert(0, str(ROOT))
    import replay_graph

    from render import offline

    # Reading the recorded graph is the replay's own work, not the SDK's: not counted.
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    graph = json.loads(Path(graph_file).read_text())
    reading = {"wall": time.perf_counter() - started_wall, "cpu": time.process_time() - started_cpu}
    offline.declare(functools.partial(replay_graph.replay, graph), {}, stack=stack)
    figures = _elapsed()
    figures["wall"] -= reading["wall"]
    figures["cpu"] -= reading["cpu"]
    figures["resources"] = len(graph)
    return figures


def child_phases(stack: str, config_file: str, modules_file: str) -> dict[str, Any]:
    """The program's CPU beyond the floor, phase by phase: the floor's modules are imported
    first, so what each phase costs is the program's own work."""
    import importlib

    for name in json.loads(Path(modules_file).read_text()):
        # A provider SDK's resource modules (CamelCase) come with their package, which binds
        # the class under the module's name; importing one by name again rebinds the module.
        if not name.rsplit(".", 1)[-1][:1].isupper():
            try:
                importlib.import_module(name)
            except Exception:  # as in child_floor
                pass
    sys.path.insert(0, str(ROOT))
    given = json.loads(Path(config_file).read_text())
    raw, secret = given["raw"], tuple(given["secret"])
    phases: dict[str, Any] = {}
    started = time.process_time()

    def phase(name: str) -> None:
        nonlocal started
        now = time.process_time()
        phases[name] = now - started
        started = now

    import stack as program
    from render import offline

    phase("import the program's modules (config models, components)")
    cfg = program.parse(raw, secret)
    phase("parse and check the config")

    def build() -> None:
        program.export(program.build(cfg))

    offline.declare(build, raw, stack=stack, secret_keys=secret)
    phase("build: declare, register and resolve every resource (first run)")
    offline.declare(build, raw, stack=stack, secret_keys=secret)
    phase("the same again (second run in the process)")
    return phases


def _import_all(modules_file: str) -> list[str]:
    """Import the listed modules; the names that failed."""
    failed = []
    for name in json.loads(Path(modules_file).read_text()):
        try:
            # __import__, not importlib.import_module: only the import statement's path is
            # logged by `python -X importtime`, which --profile compares with the program's.
            __import__(name)
        except Exception:  # a module the SDK registered under a name it cannot be imported by
            failed.append(name)
    return failed


def child_floor(modules_file: str) -> dict[str, Any]:
    failed = _import_all(modules_file)
    figures: dict[str, Any] = _elapsed()
    figures["failed"] = failed
    return figures


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(BYTECODE)
    return env


def _child(args: list[str], extra: list[str] | None = None) -> dict[str, Any]:
    done = subprocess.run([sys.executable, *(extra or []), __file__, *args], cwd=ROOT, env=_child_env(),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_program: child {args} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _kinds(stack: str, tmp: str) -> dict[str, list[str]]:
    """The child arguments of each kind of run, after one program run that records the graph
    and the SDK modules it loaded (and fills the bytecode cache)."""
    modules_file, graph_file = os.path.join(tmp, "modules.json"), os.path.join(tmp, "graph.json")
    config_file = _stack_config_file(stack, tmp)
    warm = _child(["--child-program", stack, config_file, "--graph-out", graph_file])
    Path(modules_file).write_text(json.dumps(warm["sdk_modules"]))
    return {
        "program": ["--child-program", stack, config_file],
        "floor": ["--child-floor", modules_file],
        "sdk": ["--child-replay", stack, graph_file, modules_file],
    }


def measure(stack: str, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        kinds = _kinds(stack, tmp)
        for warm_up in (kinds["floor"], kinds["sdk"]):  # discarded
            _child(warm_up)
        results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        order = list(kinds)
        for i in range(runs):
            # One round runs each kind back to back; which goes first rotates.
            for kind in order[i % 3:] + order[: i % 3]:
                results[kind].append(_child(kinds[kind]))
    programs, floors, sdks = results["program"], results["floor"], results["sdk"]
    med = {key: statistics.median(r[key] for r in programs) for key in ("wall", "cpu", "peak_mb", "mock_cpu")}
    floor = {key: statistics.median(r[key] for r in floors) for key in ("wall", "cpu", "peak_mb")}
    sdk = {key: statistics.median(r[key] for r in sdks) for key in ("wall", "cpu", "peak_mb")}
    modules = programs[0]["sdk_modules"]
    return {
        "stack": stack,
        "runs": runs,
        "program": med,
        "floor": floor,
        "sdk": sdk,
        "resources": programs[0]["resources"],
        "replayed": sdks[0]["resources"],
        "packages": sorted({m.split(".")[0] for m in modules}),
        "module_count": len(modules),
        "unneeded": programs[0]["unneeded"],
        "floor_failed": floors[0]["failed"],
    }


def instructions(stack: str) -> dict[str, int]:
    """Instructions each of the three kinds of run executes, counted by valgrind's callgrind: one
    run each, the same count whatever else the machine is doing (about 50 times slower)."""
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, args in _kinds(stack, tmp).items():
            _child(args)  # fills the bytecode cache for this kind
            done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                                   sys.executable, __file__, *args],
                                  cwd=ROOT, env=_child_env(), capture_output=True, text=True, check=False)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or not found:
                raise SystemExit(f"bench_program: callgrind of {args} failed:\n{done.stderr[-3000:]}")
            counts[kind] = int(found.group(1))
    return counts


def report(row: dict[str, Any]) -> list[str]:
    p, f, sdk = row["program"], row["floor"], row["sdk"]
    ratio_wall, ratio_cpu = p["wall"] / f["wall"], p["cpu"] / f["cpu"]
    sdk_ratio = sdk["cpu"] / f["cpu"]
    lines = [
        f"stack {row['stack']}: {row['resources']} resources; SDKs needed: {', '.join(row['packages'])} "
        f"({row['module_count']} modules)",
        f"  program  wall {p['wall']:6.2f} s   CPU {p['cpu']:6.2f} s   peak {p['peak_mb']:6.1f} MB",
        f"  floor    wall {f['wall']:6.2f} s   CPU {f['cpu']:6.2f} s   peak {f['peak_mb']:6.1f} MB",
        f"  ratio    wall {ratio_wall:6.2f} x   CPU {ratio_cpu:6.2f} x   peak +{p['peak_mb'] - f['peak_mb']:.1f} MB",
        f"  SDK      wall {sdk['wall']:6.2f} s   CPU {sdk['cpu']:6.2f} s   peak {sdk['peak_mb']:6.1f} MB   "
        f"({row['replayed']} resources declared again by the SDK alone: {sdk_ratio:.2f} x the floor)",
        f"  split    of the program's {p['cpu'] - f['cpu']:.2f} s CPU beyond the floor, the SDK's work on its resources "
        f"{sdk['cpu'] - f['cpu']:.2f} s, the program's own {p['cpu'] - sdk['cpu']:.2f} s",
        f"  of the program's CPU, the mock engine's (registrations) {p['mock_cpu']:.2f} s; without it "
        f"{p['cpu'] - p['mock_cpu']:.2f} s, {(p['cpu'] - p['mock_cpu']) / f['cpu']:.2f} x the floor",
        f"  resources/s  {row['resources'] / p['wall']:.0f} per wall s, {row['resources'] / p['cpu']:.0f} per CPU s"
        f"  ({row['resources'] / max(p['cpu'] - f['cpu'], 1e-3):.0f} per CPU s beyond the floor)",
    ]
    goal = GOALS.get(row["stack"])
    if goal is not None:
        verdict = "met" if ratio_cpu <= goal else "MISSED (see --profile)"
        if ratio_cpu > goal and sdk_ratio > goal:
            verdict += f"; the SDK's work on these {row['resources']} resources alone is {sdk_ratio:.2f} x"
        lines.append(f"  goal     CPU ratio <= {goal}x: {verdict}")
    memory_ok = p["peak_mb"] <= f["peak_mb"] + MEMORY_HEADROOM_MB
    lines.append(f"  goal     peak <= floor + {MEMORY_HEADROOM_MB:.0f} MB: {'met' if memory_ok else 'MISSED'}")
    if row["unneeded"]:
        lines.append(f"  loaded in vain (no resource of theirs): {', '.join(row['unneeded'])}")
    if row["floor_failed"]:
        lines.append(f"  note: floor could not import {row['floor_failed']}")
    return lines


def _import_times(args: list[str]) -> dict[str, int]:
    """Self import time in microseconds per module, from `python -X importtime`."""
    done = subprocess.run([sys.executable, "-X", "importtime", __file__, *args], cwd=ROOT,
                          env=_child_env(), capture_output=True, text=True, check=True)
    times: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (part.strip() for part in line.split("|"))
        times[name] = int(self_us.split(":")[-1])
    return times


def profile(stack: str) -> None:
    """Where the program's time goes beyond its floor: CPU per phase, the imports the floor does
    not make, per package, then cProfile's costliest calls."""
    with tempfile.TemporaryDirectory() as tmp:
        config_file = _stack_config_file(stack, tmp)
        warm = _child(["--child-program", stack, config_file])  # also warms the bytecode cache
        modules_file = os.path.join(tmp, "modules.json")
        Path(modules_file).write_text(json.dumps(warm["sdk_modules"]))
        runs = [_child(["--child-phases", stack, config_file, modules_file]) for _ in range(5)]
        print(f"CPU per phase beyond the floor, stack {stack} (floor's modules imported first; medians of 5, ms)")
        for name in runs[0]:
            print(f"  {statistics.median(r[name] for r in runs) * 1000:9.1f}  {name}")
        print()
        floor = _import_times(["--child-floor", modules_file])
        program = _import_times(["--child-program", stack, config_file])
        beyond: dict[str, int] = defaultdict(int)
        for name, us in program.items():
            if name not in floor:
                beyond[name.split(".")[0]] += us
        print(f"python -X importtime, stack {stack}: imports beyond the floor, self time per package (ms); "
              f"all imports {sum(program.values()) / 1000:.0f} ms, the floor's {sum(floor.values()) / 1000:.0f} ms")
        for name, us in sorted(beyond.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  {us / 1000:9.1f}  {name}")
        if warm["unneeded"]:
            print(f"  loaded in vain: {', '.join(warm['unneeded'])}")
        out = os.path.join(tmp, "program.prof")
        _child(["--child-program", stack, config_file], extra=["-m", "cProfile", "-o", out])
        import pstats

        print(f"\ncProfile, stack {stack}: the program's own functions by cumulative time")
        stats = pstats.Stats(out)
        stats.sort_stats("cumulative").print_stats(rf"^{ROOT}/(?!scripts|\.venv)", 20)
        print(f"cProfile, stack {stack}: top calls by own time")
        stats.sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stacks", nargs="+", default=list(STACKS))
    parser.add_argument("--profile", metavar="STACK")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line per stack")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind instead of timing (deterministic, slow)")
    parser.add_argument("--child-program", nargs=2, metavar=("STACK", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--child-phases", nargs=3, metavar=("STACK", "CONFIG", "MODULES"), help=argparse.SUPPRESS)
    parser.add_argument("--child-replay", nargs=3, metavar=("STACK", "GRAPH", "MODULES"), help=argparse.SUPPRESS)
    parser.add_argument("--graph-out", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_program:
        print(json.dumps(child_program(*args.child_program, args.graph_out)))
        return
    if args.child_replay:
        print(json.dumps(child_replay(*args.child_replay)))
        return
    if args.child_phases:
        print(json.dumps(child_phases(*args.child_phases)))
        return
    if args.child_floor:
        print(json.dumps(child_floor(args.child_floor)))
        return
    if args.profile:
        profile(args.profile)
        return
    if args.instructions:
        print("instructions executed (valgrind callgrind, one run each): program, floor, SDK alone")
        for stack in args.stacks:
            n = instructions(stack)
            print(f"stack {stack}: program {n['program'] / 1e9:.3f} G, floor {n['floor'] / 1e9:.3f} G, "
                  f"SDK alone {n['sdk'] / 1e9:.3f} G; program {n['program'] / n['floor']:.2f} x the floor, "
                  f"SDK alone {n['sdk'] / n['floor']:.2f} x; the program's own work "
                  f"{(n['program'] - n['sdk']) / n['floor']:.2f} x the floor", flush=True)
        return
    print(f"program under mocks vs. its SDK import floor; medians of {args.runs} rounds, "
          f"each in a fresh interpreter ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    for stack in args.stacks:
        row = measure(stack, args.runs)
        print("\n".join(report(row)), flush=True)
        if args.json:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
