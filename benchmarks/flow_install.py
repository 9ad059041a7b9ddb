"""Flow install: a host that must learn 1k, 10k and 50k peer endpoints at once.

Lab: 2 shards, hv1 with one blue VM, blue (ctl1) peered with red (ctl2), red a /14
(benchmarks/topologies/flowinstall.yaml). For each size N, ascending:

1. stop hv1's OHC (by the pid in its pidfile) and remove every flow from hv1's br-int;
2. create red endpoints on hv2 through the REST API (a pool of --workers concurrent calls)
   until red holds N; the creation rate is measured, and creating stops at --create-budget
   seconds for a size (the size is then capped at what was reached, and the table says so);
3. start hv1's OHC and time until its status file reports a sync holding the expected flows
   (the flows hv1 holds for blue alone, plus 2 per red endpoint: an L3 lookup and a tunnel
   source check) and then no further sync for --quiet seconds. The flow count is checked on
   the switch with `ovs-ofctl dump-aggregate`;
4. restart the OHC once more with every flow already installed (nothing to change) and time
   that too (read-back and diff only).

hv2's OHC stays stopped: it would program the same N endpoints (they are red's own) and
compete for the same CPUs. Reports the time to installed, flows, the OHC's RSS (VmRSS) and
the bytes and objects it received over its subscriptions.

    .venv/bin/python benchmarks/flow_install.py [--sizes 1000,10000,50000] [--json PATH]

Prints a table and writes benchmarks/results/flow_install.json. Needs root and OVS.
"""

from __future__ import annotations

import argparse
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common

from meshpeer.client import Client
from meshpeer.lab import ovs
from meshpeer.lab.plan import HostPlan

FLOWS_PER_PEER_ENDPOINT = 2  # L3_LOOKUP exact /32 and TUNNEL_SRC check (ohc/compiler.py)


def endpoint(i: int) -> dict[str, Any]:
    """The i-th red endpoint on hv2: 10.4.0.10 and up, avoiding .0 and .255 of each /24."""
    n = i + 10
    return {
        "name": f"e{i}",
        "kind": "vm",
        "ip": f"10.{4 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}",
        "host": "hv2",
    }


class Creator:
    """Creates red endpoints e0, e1, ... with a pool of concurrent REST calls."""

    def __init__(self, client: Client, workers: int) -> None:
        self.client = client
        self.workers = workers
        self.created = 0  # e0 .. e{created-1} exist
        self.seconds = 0.0
        self.lock = threading.Lock()

    def up_to(self, n: int, budget: float) -> tuple[int, float, list[tuple[int, float]]]:
        """Create until ``n`` exist or ``budget`` seconds pass; returns (created now, seconds,
        progress samples (count, seconds))."""
        start_count, t0 = self.created, time.monotonic()
        deadline = t0 + budget
        nxt = iter(range(self.created, n))
        done = [self.created]
        samples: list[tuple[int, float]] = []

        def worker() -> None:
            while time.monotonic() < deadline:
                with self.lock:
                    i = next(nxt, None)
                if i is None:
                    return
                self.client.post("/v1/vpcs/red/endpoints", endpoint(i))
                with self.lock:
                    done[0] += 1
                    if done[0] % 1000 == 0:
                        samples.append((done[0], time.monotonic() - t0))
                        print(
                            f"    {done[0]:6d} red endpoints "
                            f"({(done[0] - start_count) / (time.monotonic() - t0):.0f}/s)",
                            flush=True,
                        )

        with ThreadPoolExecutor(self.workers) as pool:
            for f in [pool.submit(worker) for _ in range(self.workers)]:
                f.result()
        # Workers take indices in order; one that stopped at the deadline left a gap only if
        # it never posted, so what exists is exactly the count of successful posts.
        self.created = done[0]
        elapsed = time.monotonic() - t0
        self.seconds += elapsed
        return self.created - start_count, elapsed, samples


def switch_flows(h: HostPlan) -> int:
    out = ovs.ofctl(h, "dump-aggregate")
    m = re.search(r"flow_count=(\d+)", out)
    return int(m.group(1)) if m else -1


def clear_switch(h: HostPlan) -> None:
    ovs.ofctl(h, "del-flows")
    ovs.ofctl(h, "del-groups")


def time_install(
    lab: common.Lab, h: HostPlan, expected: int, quiet: float, timeout: float
) -> dict[str, Any]:
    """Start the OHC; seconds until a sync holds ``expected`` flows, then until it is quiet."""
    t0 = time.time()
    common.start_ohc(lab.plan, h)
    timeline: list[tuple[float, int, int]] = []  # (seconds, sync n, flows) per new sync
    installed_at: float | None = None
    last_n, last_change = -1, time.time()
    rss_peak = 0.0
    while time.time() - t0 < timeout:
        rss_peak = max(rss_peak, common.rss_mib(common.ohc_pid(h)) or 0.0)
        st = common.ohc_status(h)
        last = st.get("last_sync") or {}
        at = last.get("at", 0)
        if at >= t0 and last.get("n") != last_n:
            last_n, last_change = last["n"], time.time()
            timeline.append((round(at - t0, 3), last["n"], last["flows"]))
            if installed_at is None and last["flows"] >= expected:
                installed_at = at
        if installed_at is not None and time.time() - last_change >= quiet:
            break
        time.sleep(0.05)
    st = common.ohc_status(h)
    last = st.get("last_sync") or {}
    pid = common.ohc_pid(h)
    received = st.get("received") or {}
    return {
        "expected_flows": expected,
        "installed_s": None if installed_at is None else round(installed_at - t0, 3),
        "flows_reported": last.get("flows"),
        "flows_on_switch": switch_flows(h),
        "last_sync_s": last.get("total_s"),
        "last_sync_counts": last.get("counts"),
        "syncs": last.get("n"),
        "timeline": timeline,
        "rss_mib": round(common.rss_mib(pid) or 0.0, 1),
        "rss_peak_mib": round(rss_peak, 1),
        "received_bytes": received.get("bytes"),
        "received_objects": received.get("objects"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,50000", help="comma-separated, ascending")
    p.add_argument("--workers", type=int, default=8, help="concurrent REST calls when creating")
    p.add_argument(
        "--create-budget", type=float, default=300, help="max seconds creating for one size"
    )
    p.add_argument("--quiet", type=float, default=3.0, help="seconds without a sync = settled")
    p.add_argument("--timeout", type=float, default=900, help="max seconds to wait for install")
    p.add_argument("--lab", default="bflow")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))

    t_start = time.monotonic()
    m = common.machine(args.lab)
    rows: list[dict[str, Any]] = []
    topo = common.topology("flowinstall.yaml")
    with common.LoadSampler() as load, common.lab(topo, args.lab) as lab:
        hv1, hv2 = lab.host("hv1"), lab.host("hv2")
        common.stop_ohc(hv2)
        base = (common.ohc_status(hv1).get("last_sync") or {}).get("flows", 0)
        print(f"hv1 holds {base} flows with no red endpoints; hv2's OHC stopped")
        creator = Creator(lab.client("red", timeout=60), args.workers)
        for n in sizes:
            print(f"size {n}: stop hv1's OHC, clear br-int, create red endpoints ...", flush=True)
            common.stop_ohc(hv1)
            clear_switch(hv1)
            made, secs, samples = creator.up_to(n, args.create_budget)
            rate = made / secs if secs > 0 else 0.0
            capped = creator.created < n
            if capped:
                print(f"  capped: {creator.created} of {n} after {secs:.0f}s ({rate:.0f}/s)")
            reached = creator.created
            expected = base + FLOWS_PER_PEER_ENDPOINT * reached
            print(f"  {made} created in {secs:.1f}s ({rate:.0f}/s); start hv1's OHC", flush=True)
            cold = time_install(lab, hv1, expected, args.quiet, args.timeout)
            print(f"  installed {cold['flows_on_switch']} flows in {cold['installed_s']}s, "
                  f"RSS {cold['rss_mib']} MiB; restart with everything installed", flush=True)  # fmt: skip
            common.stop_ohc(hv1)
            warm = time_install(lab, hv1, expected, args.quiet, args.timeout)
            ctl_pid = common.read_pidfile(f"{lab.plan.state_dir}/ctl2/controller.pid")
            rows.append(
                {
                    "size": n,
                    "endpoints": reached,
                    "capped": capped,
                    "created_now": made,
                    "create_s": round(secs, 2),
                    "create_rate_per_s": round(rate, 1),
                    "create_progress": samples,
                    "cold": cold,
                    "warm_restart": warm,
                    "ctl2_rss_mib": round(common.rss_mib(ctl_pid) or 0.0, 1),
                    "load_1min": round(common.loadavg()[0], 2),
                }
            )
            print(f"  warm restart settled at {warm['installed_s']}s", flush=True)
            if capped:
                break

    result = {
        "benchmark": "flow_install",
        "topology": "benchmarks/topologies/flowinstall.yaml",
        "flows_without_red": base,
        "workers": args.workers,
        "create_budget_s": args.create_budget,
        "rows": rows,
        "machine": m,
        "load_1min_during_run": load.result(),
        "wall_s": round(time.monotonic() - t_start, 1),
        "when": common.now_utc(),
    }
    print()
    print("flow install on hv1: N peer endpoints learnt at once (OHC start -> flows installed)")
    print(
        f"{'peers':>7} {'flows':>7} {'install s':>9} {'restart s':>9} {'RSS MiB':>8}"
        f" {'recv MB':>8} {'objects':>8} {'create/s':>8} {'ctl2 MiB':>8}"
    )
    for r in rows:
        c, w = r["cold"], r["warm_restart"]
        mark = "*" if r["capped"] else " "
        print(
            f"{r['endpoints']:>6}{mark} {c['flows_on_switch']:>7} {c['installed_s'] or -1:>9.2f}"
            f" {w['installed_s'] or -1:>9.2f} {c['rss_peak_mib']:>8.0f}"
            f" {(c['received_bytes'] or 0) / 1e6:>8.1f} {c['received_objects'] or 0:>8}"
            f" {r['create_rate_per_s']:>8.0f} {r['ctl2_rss_mib']:>8.0f}"
        )
    if any(r["capped"] for r in rows):
        print(f"* capped: creating stopped after {args.create_budget:.0f}s for that size")
    common.print_machine(m, result["load_1min_during_run"])
    print(f"benchmark wall time {result['wall_s']} s")
    common.write_json(result, args.json, "flow_install.json")


if __name__ == "__main__":
    main()
