"""Boot the every-role topology with the integration harness and print figures (nothing asserted).

    .venv/bin/python scripts/bench_synapse_boot.py [--rounds N]

Prints, per process: time from spawn to healthy, and resident memory (VmRSS from /proc, summed
over the process and its children, so nginx workers and postgres backends are included). Then
runs the fixed client workload N times through the proxy and prints how the proxied requests
were spread, in particular main's share: the point of the worker table is to keep main idle.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.cluster import ALL_ROLES_COUNTS, Cluster, boot_config, read_access_log, render  # noqa: E402
from tests.integration.workload import run_workload  # noqa: E402

MAIN_PORT = 8008


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="times to run the client workload")
    args = parser.parse_args()

    t0 = time.monotonic()
    result = render(boot_config(ALL_ROLES_COUNTS))
    print(f"render: {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    with Cluster(result) as cluster:
        boot_total = time.monotonic() - t0
        rss, pss = cluster.rss(), cluster.tree_pss()
        # RSS: the server process alone. Tree PSS: with its children (nginx workers, postgres
        # backends), shared pages divided among sharers so the column can be summed.
        print(f"\n{'process':34} {'boot s':>8} {'RSS MiB':>9} {'tree PSS MiB':>13}")
        for name, proc in cluster.procs.items():
            print(f"{name:34} {proc.ready_s or 0:8.1f} {rss.get(name, 0) / 1024:9.1f} {pss.get(name, 0) / 1024:13.1f}")
        synapse = [n for n in cluster.synapse_names() if n in rss]
        print(f"{'total (all processes)':34} {boot_total:8.1f} {sum(rss.values()) / 1024:9.1f} "
              f"{sum(pss.values()) / 1024:13.1f}")
        print(f"{'synapse processes only':34} {'':8} {sum(rss[n] for n in synapse) / 1024:9.1f} "
              f"{sum(pss[n] for n in synapse) / 1024:13.1f}")

        t0 = time.monotonic()
        for i in range(args.rounds):
            run_workload(cluster, tag=f"bench{i}")
        workload_s = time.monotonic() - t0
        rss_after = cluster.rss()

        log = [a for a in read_access_log(cluster.access_log) if a.upstreams]
        by_port = Counter(p for a in log for p in a.ports[-1:])  # the upstream that answered
        names_by_port = {cluster.http_port(n): n for n in cluster.synapse_names()}
        print(f"\nworkload: {args.rounds} round(s) in {workload_s:.1f}s, {len(log)} proxied requests")
        for port, n in by_port.most_common():
            print(f"  {names_by_port.get(port, port)!s:34} {n:5d}  {100 * n / len(log):5.1f}%")
        on_main = by_port.get(MAIN_PORT, 0)
        print(f"main's share of proxied requests: {on_main}/{len(log)} = {100 * on_main / max(1, len(log)):.1f}%")
        print(f"main RSS after workload: {rss_after.get('synapse-main', 0) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
