"""Boot two federating stacks side by side and print figures (nothing asserted).

    .venv/bin/python scripts/bench_federation.py [--no-faults]

Boots stack A (monolith, a.test) and stack B (federation readers, inbound workers, senders, a
media worker; b.test) with the integration harness (tests/integration/federation.py), runs the
federation workload, then the two faults (a federation sender of B killed while B sends to A,
an inbound worker of B killed while A sends to B). Prints:
- time to ready for both stacks together (booted side by side), and each stack's memory
  (VmRSS of each server process; PSS of each process tree, which can be summed);
- federated message delivery times (send call started -> seen in the other user's /sync):
  median and 95th percentile, each way and overall;
- requests per process on both stacks (from each proxy's access log: the upstream that answered),
  and outbound transactions per process (from each process's log);
- the gaps the faults caused.
Needs loopback 127.0.0.1 and 127.0.0.2 and port 443 free on both: run it in a network namespace
when other servers are running (`unshare -n sh -c 'ip link set lo up && ...'`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.cluster import read_access_log  # noqa: E402
from tests.integration.federation import Pair, Stack, boot_pair  # noqa: E402
from tests.integration.federation_workload import run_fault, run_federation  # noqa: E402


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def memory(pair: Pair) -> None:
    print(f"\n{'stack':8} {'process':34} {'RSS MiB':>9} {'tree PSS MiB':>13}")
    for stack in pair.stacks():
        rss, pss = stack.cluster.rss(), stack.cluster.tree_pss()
        for name in stack.cluster.procs:
            if name in rss:
                print(f"{stack.spec.server_name:8} {name:34} {rss[name] / 1024:9.1f} {pss.get(name, 0) / 1024:13.1f}")
        print(f"{stack.spec.server_name:8} {'total':34} {sum(rss.values()) / 1024:9.1f} {sum(pss.values()) / 1024:13.1f}")


def requests(stack: Stack) -> None:
    by_port = stack.process_by_port()
    log = [a for a in read_access_log(stack.cluster.access_log) if a.ports]
    answered = Counter(by_port.get(a.ports[-1], str(a.ports[-1])) for a in log)
    federation = Counter(by_port.get(a.ports[-1], str(a.ports[-1])) for a in log
                         if a.path.startswith(("/_matrix/federation/", "/_matrix/key/")))
    print(f"\n{stack.spec.server_name}: requests per process ({len(log)} proxied)")
    print(f"  {'process':34} {'all':>6} {'federation':>11} {'transactions sent':>18}")
    for name in [p.name for p in stack.topology.processes]:
        sent = len(stack.log_lines(name, "Sending transaction"))
        print(f"  {name:34} {answered.get(name, 0):6} {federation.get(name, 0):11} {sent:18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-faults", action="store_true", help="skip the two kill -9 faults")
    args = parser.parse_args()

    with boot_pair() as pair:
        print(f"time to ready, both stacks side by side: {pair.ready_s:.1f}s")
        for stack in pair.stacks():
            slowest = max(stack.cluster.boot_s.items(), key=lambda kv: kv[1])
            print(f"  {stack.spec.server_name}: {len(stack.cluster.procs)} processes, slowest {slowest[0]} "
                  f"{slowest[1]:.1f}s")
        memory(pair)
        facts = run_federation(pair)
        print("\nfederated message delivery (send started -> seen in the other's /sync)")
        for label, values in (("a.test -> b.test", facts.a_to_b.delivery_s), ("b.test -> a.test", facts.b_to_a.delivery_s),
                              ("both ways", facts.a_to_b.delivery_s + facts.b_to_a.delivery_s)):
            print(f"  {label:18} n={len(values):3} median {statistics.median(values):.3f}s  p95 {p95(values):.3f}s  "
                  f"max {max(values):.3f}s")
        if not args.no_faults:
            sender = next(p.name for p in pair.b.senders() if pair.b.log_lines(p.name, "TX [a.test]"))
            fault = run_fault(pair, pair.b, pair.a, sender, facts.room_id, "bob", "alice", "sender-fault")
            print(f"\nkill -9 {sender} (b.test) while b.test sends to a.test, restarted after 3s: "
                  f"{fault.way.received == fault.way.sent and 'all' or 'NOT all'} {len(fault.way.sent)} delivered; "
                  f"healthy again {fault.restarted_at - fault.killed_at:.1f}s after the kill; longest silence at "
                  f"the receiver {fault.gap_s:.1f}s; first delivery after the kill {fault.first_after_kill_s:.1f}s")
            sends = [a for a in read_access_log(pair.b.cluster.access_log) if a.path.startswith("/_matrix/federation/v1/send/")]
            inbound = pair.b.process_by_port()[sends[-1].ports[-1]]
            fault = run_fault(pair, pair.a, pair.b, inbound, facts.room_id, "alice", "bob", "inbound-fault")
            print(f"kill -9 {inbound} (b.test) while a.test sends to b.test, restarted after 3s: "
                  f"{fault.way.received == fault.way.sent and 'all' or 'NOT all'} {len(fault.way.sent)} delivered; "
                  f"healthy again {fault.restarted_at - fault.killed_at:.1f}s after the kill; longest silence at "
                  f"the receiver {fault.gap_s:.1f}s; first delivery after the kill {fault.first_after_kill_s:.1f}s")
        for stack in pair.stacks():
            requests(stack)
        memory(pair)


if __name__ == "__main__":
    main()
