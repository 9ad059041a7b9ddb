"""Data plane throughput: iperf3 TCP between lab VMs, with flows from the OHCs vs by hand.

Cases (benchmarks/topologies/peered.yaml, 2 shards, OHCs programming every br-int):
  same host      b1 -> b2   both blue, both on hv1
  own VPC        b1 -> b3   blue, hv1 -> hv2 over Geneve
  peered VPC     b1 -> r1   blue on hv1 -> red on hv2 over Geneve (cross-shard peering)
Baseline, the ceiling (benchmarks/topologies/baseline.yaml: the same VMs and hosts, no
`controllers` key, so no shards and no OHCs): hand-written L2 flows from
meshpeer.lab.handflows.tunnel_flows, one flow per (source port, destination MAC), no
pipeline tables at all:
  baseline same host   b1 -> b2
  baseline tunnel      b1 -> b3

Each case runs --runs times (`iperf3 -J -t 5`, the cases interleaved so that a burst of load
from elsewhere does not hit one case only); the median is reported, in Gbit/s received, with
its ratio to the baseline of the same kind (same host, or across hosts).

    .venv/bin/python benchmarks/dataplane.py [--runs 3] [--seconds 5] [--json PATH]

Prints a table and writes benchmarks/results/dataplane.json. Needs root, OVS and iperf3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from typing import Any

import common

from meshpeer.lab import ovs
from meshpeer.lab.handflows import tunnel_flows, vm_named
from meshpeer.lab.matrix import ping
from meshpeer.lab.plan import LabPlan
from meshpeer.lab.sh import netns_cmd, run

MESHPEER_CASES = [
    ("same host", "b1", "b2", "baseline same host"),
    ("own VPC, across hosts", "b1", "b3", "baseline tunnel"),
    ("peered VPC, across hosts", "b1", "r1", "baseline tunnel"),
]
BASELINE_CASES = [("baseline same host", "b1", "b2"), ("baseline tunnel", "b1", "b3")]
BASELINE_PAIRS = [("b1", "b2"), ("b2", "b1"), ("b1", "b3"), ("b3", "b1")]


def iperf(plan: LabPlan, client: str, server: str, seconds: int) -> dict[str, float]:
    """One iperf3 TCP run client -> server; Gbit/s received and the sender's retransmits."""
    c, s = vm_named(plan, client), vm_named(plan, server)
    srv = subprocess.Popen(
        netns_cmd(s.netns, ["iperf3", "-s", "-1", "-B", s.ip]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while ":5201" not in run(["ss", "-ltn"], netns=s.netns).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {server} did not listen")
            time.sleep(0.05)
        out = run(
            ["iperf3", "-J", "-t", str(seconds), "-c", s.ip], netns=c.netns, timeout=seconds + 30
        ).stdout
    finally:
        srv.kill()
        srv.wait()
    end = json.loads(out)["end"]
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits", 0),
    }


def measure(
    plan: LabPlan, cases: list[tuple[str, str, str]], runs: int, seconds: int
) -> dict[str, list[dict[str, float]]]:
    for _, a, b in cases:  # reachable at all, and ARP resolved, before timing anything
        if not ping(vm_named(plan, a), vm_named(plan, b).ip, count=2):
            raise RuntimeError(f"{a} cannot reach {b}")
    got: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
    for k in range(runs):
        for name, a, b in cases:
            r = iperf(plan, a, b, seconds)
            got[name].append(r)
            print(f"  run {k + 1}: {name:<26} {a} -> {b}  {r['gbps']:6.2f} Gbit/s", flush=True)
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="iperf3 -t")
    p.add_argument("--lab", default="bdata")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args()

    t_start = time.monotonic()
    m = common.machine(args.lab)
    results: dict[str, list[dict[str, float]]] = {}
    flows: dict[str, int] = {}
    with common.LoadSampler() as load:
        print("baseline lab: no controllers, hand-written tunnel flows")
        with common.lab(common.topology("baseline.yaml"), args.lab) as lab:
            for host in ("hv1", "hv2"):
                fl = tunnel_flows(lab.plan, host, BASELINE_PAIRS)
                ovs.ofctl(lab.host(host), "add-flows", "-", stdin="\n".join(fl) + "\n")
            flows["baseline hv1"] = len(common.dump_flows(lab.host("hv1")).splitlines()) - 1
            results.update(measure(lab.plan, BASELINE_CASES, args.runs, args.seconds))
        print("meshpeer lab: 2 shards, OHCs")
        with common.lab(common.topology("peered.yaml"), args.lab) as lab:
            flows["meshpeer hv1"] = (common.ohc_status(lab.host("hv1")).get("last_sync") or {}).get(
                "flows", -1
            )
            cases = [(name, a, b) for name, a, b, _ in MESHPEER_CASES]
            results.update(measure(lab.plan, cases, args.runs, args.seconds))

    med = {name: statistics.median(r["gbps"] for r in rs) for name, rs in results.items()}
    rows: list[dict[str, Any]] = []
    for name, a, b in BASELINE_CASES:
        rows.append({"case": name, "pair": f"{a}->{b}", "baseline": None})
    for name, a, b, base in MESHPEER_CASES:
        rows.append({"case": name, "pair": f"{a}->{b}", "baseline": base})
    for r in rows:
        r["gbps_median"] = round(med[r["case"]], 4)
        r["gbps_runs"] = [round(x["gbps"], 4) for x in results[r["case"]]]
        r["retransmits"] = [x["retransmits"] for x in results[r["case"]]]
        r["ratio_to_baseline"] = (
            round(med[r["case"]] / med[r["baseline"]], 3) if r["baseline"] else None
        )
    result = {
        "benchmark": "dataplane",
        "topologies": ["benchmarks/topologies/peered.yaml", "benchmarks/topologies/baseline.yaml"],
        "runs": args.runs,
        "seconds": args.seconds,
        "rows": rows,
        "flows_on_hv1": flows,
        "machine": m,
        "load_1min_during_run": load.result(),
        "wall_s": round(time.monotonic() - t_start, 1),
        "when": common.now_utc(),
    }
    print()
    print(f"iperf3 TCP, median of {args.runs} runs of {args.seconds}s (Gbit/s received)")
    print(f"{'case':<26} {'pair':<7} {'Gbit/s':>7} {'ratio':>6}  runs")
    for r in rows:
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] else "-"
        runs = " ".join(f"{x:.2f}" for x in r["gbps_runs"])
        print(f"{r['case']:<26} {r['pair']:<7} {med[r['case']]:7.2f} {ratio:>6}  {runs}")
    print("ratio: to the baseline of the same kind (same host, or across hosts over Geneve)")
    print(f"flows on hv1: {flows}")
    common.print_machine(m, result["load_1min_during_run"])
    print(f"benchmark wall time {result['wall_s']} s")
    common.write_json(result, args.json, "dataplane.json")


if __name__ == "__main__":
    main()
