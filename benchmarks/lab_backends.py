"""The two lab backends side by side: 'lab up'/'lab down' of the demo topology, and the data plane.

For each backend (netns: hosts in namespaces; docker: hosts in containers) --runs times,
interleaved: ``build.fresh`` (what 'lab up' runs, from an empty machine: on docker that
includes starting the lab's own engine and the containers, the image being cached) and
``teardown.down`` (on docker: removing the containers and stopping the engine). Then both labs
up at once, and interleaved --iperf-runs times: iperf3 TCP b1 -> b2 (blue, hv1 -> hv2 over
Geneve) and b1 -> r1 (blue -> red across the shards' peering, hv1 -> hv2), plus 50 pings b1 ->
b2; the ratio docker / netns of each median.

    .venv/bin/python benchmarks/lab_backends.py [--runs 5] [--iperf-runs 3] [--seconds 5]

Prints a table and writes benchmarks/results/lab_backends.json. Needs root, OVS, iperf3 and the
docker backend's packages (scripts/bootstrap); run it under the lab lock.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

import common
from dataplane import iperf

from meshpeer.lab import build, teardown
from meshpeer.lab.cli import load_topology
from meshpeer.lab.handflows import vm_named
from meshpeer.lab.plan import BACKENDS, LabPlan
from meshpeer.lab.sh import run

DEMO = f"{common.ROOT}/topologies/demo.yaml"
CASES = [("blue across hosts", "b1", "b2"), ("peered across hosts", "b1", "r1")]


def rtt_ms(plan: LabPlan, src: str, dst: str, count: int = 50) -> float:
    """The average RTT of ``count`` pings (the first one, resolving ARP, not counted)."""
    a, b = vm_named(plan, src), vm_named(plan, dst)
    run(["ping", "-n", "-q", "-c", "1", "-W", "2", b.ip], netns=a.netns)
    out = run(
        ["ping", "-n", "-q", "-c", str(count), "-i", "0.02", b.ip], netns=a.netns, timeout=60
    ).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert m is not None, out
    return float(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--iperf-runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="iperf3 -t")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args()
    topo = load_topology(DEMO)
    # A new lab name per run: meshpeer.tls caches a client's SSL context by CA file path, and
    # every 'up' makes a new CA at the same path for the same lab name.
    labs = {"netns": "bkn", "docker": "bkd"}
    t_start = time.monotonic()
    m = common.machine()
    ups: dict[str, list[float]] = {b: [] for b in BACKENDS}
    downs: dict[str, list[float]] = {b: [] for b in BACKENDS}
    gbps: dict[str, dict[str, list[float]]] = {b: {c: [] for c, _, _ in CASES} for b in BACKENDS}
    rtts: dict[str, list[float]] = {b: [] for b in BACKENDS}
    with common.LoadSampler() as load:
        for k in range(args.runs):
            for backend in BACKENDS:
                try:
                    name = f"{labs[backend]}{k}"
                    _, up_s = build.fresh(topo, name, lambda _: None, backend=backend)
                    ups[backend].append(up_s)
                finally:
                    t0 = time.monotonic()
                    teardown.down(name)
                    downs[backend].append(time.monotonic() - t0)
                print(f"  run {k + 1} {backend:<6} up {up_s:5.2f}s down {downs[backend][-1]:5.2f}s",
                      flush=True)  # fmt: skip
        plans: dict[str, LabPlan] = {}
        try:
            for backend in BACKENDS:
                plans[backend] = build.fresh(topo, labs[backend], lambda _: None, backend=backend)[
                    0
                ]
            for k in range(args.iperf_runs):
                for backend in BACKENDS:
                    for case, a, b in CASES:
                        g = iperf(plans[backend], a, b, args.seconds)["gbps"]
                        gbps[backend][case].append(g)
                        print(f"  run {k + 1} {backend:<6} {case:<20} {g:5.2f} Gbit/s", flush=True)
                    rtts[backend].append(rtt_ms(plans[backend], "b1", "b2"))
        finally:
            for backend in BACKENDS:
                teardown.down(labs[backend])

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 4)

    result: dict[str, Any] = {
        "benchmark": "lab_backends",
        "topology": "topologies/demo.yaml",
        "runs": args.runs,
        "iperf_runs": args.iperf_runs,
        "seconds": args.seconds,
        "backends": {
            b: {
                "up_s": {"median": med(ups[b]), "min": min(ups[b]), "max": max(ups[b])},
                "down_s": {"median": med(downs[b]), "min": min(downs[b]), "max": max(downs[b])},
                "gbps_median": {c: med(gbps[b][c]) for c, _, _ in CASES},
                "gbps_runs": gbps[b],
                "rtt_ms_median": med(rtts[b]),
            }
            for b in BACKENDS
        },
        "docker_over_netns": {
            **{c: round(med(gbps["docker"][c]) / med(gbps["netns"][c]), 3) for c, _, _ in CASES},
            "rtt": round(med(rtts["docker"]) / med(rtts["netns"]), 3),
        },
        "machine": m,
        "load_1min_during_run": load.result(),
        "wall_s": round(time.monotonic() - t_start, 1),
        "when": common.now_utc(),
    }
    print()
    print(f"demo topology, {args.runs} up/down runs, {args.iperf_runs} iperf3 runs of "
          f"{args.seconds}s (medians)")  # fmt: skip
    print(f"{'backend':<8} {'up s':>6} {'down s':>7} " + " ".join(f"{c:>20}" for c, _, _ in CASES)
          + f" {'rtt ms':>7}")  # fmt: skip
    for b in BACKENDS:
        r = result["backends"][b]
        print(f"{b:<8} {r['up_s']['median']:6.2f} {r['down_s']['median']:7.2f} "
              + " ".join(f"{r['gbps_median'][c]:14.2f} Gbit/s" for c, _, _ in CASES)
              + f" {r['rtt_ms_median']:7.3f}")  # fmt: skip
    print(f"docker / netns: {result['docker_over_netns']}")
    common.print_machine(m, result["load_1min_during_run"])
    common.write_json(result, args.json, "lab_backends.json")


if __name__ == "__main__":
    main()
