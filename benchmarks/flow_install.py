"""Flow install: a host that must learn 1k, 10k and 50k peer endpoints at once.

Lab: 2 shards, hv1 with one blue VM, blue (ctl1) peered with red (ctl2), red a /14
(benchmarks/topologies/flowinstall.yaml). For each size N, ascending:

1. stop hv1's OHC (by the pid in its pidfile) and remove every flow from hv1's br-int;
2. create red endpoints on hv2 through the REST API, --workers concurrent calls, until red
   holds N. The creation rate is measured. REST creation stops for good once it has used
   --create-budget seconds in total: the rate falls with the VPC's size, and the table says
   how many endpoints REST created and the projected time for N. The rest are then created
   through REST too, by batch creates of up to 5,000 (``endpoints:batchCreate``, also timed;
   --no-batch: stop where single creates stopped instead).
3. start hv1's OHC and time until its status file reports a sync holding the expected flows
   (the flows hv1 holds for blue alone, plus 2 per red endpoint: an L3 lookup and a tunnel
   source check) and then no further sync for --quiet seconds. The flow count is checked on
   the switch with `ovs-ofctl dump-aggregate`;
4. with the OHC running and all N installed, create --updates more red endpoints one at a
   time with ``?wait=programmed`` (the call returns once hv1's switch holds the new flows) and
   time each: the cost of one update when the host already holds N peer endpoints, with the
   OHC's own compile time for that sync (the engine compiles only the units the change owns,
   ohc/engine.py);
5. restart the OHC once more with every flow already installed (nothing to change) and time
   that too (read-back and diff only).

hv2's OHC stays stopped: it would program the same N endpoints (they are red's own) and
compete for the same CPUs. Reports the time to installed, flows, the OHC's RSS (VmRSS) and
the bytes and objects it received over its subscriptions.

    .venv/bin/python benchmarks/flow_install.py [--sizes 1000,10000,50000] [--json PATH]

Prints a table and writes benchmarks/results/flow_install.json. Needs root and OVS.
"""

from __future__ import annotations

import argparse
import itertools
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common

from meshpeer.client import Client
from meshpeer.controller.handlers.endpoints import MAX_BATCH
from meshpeer.lab import ovs
from meshpeer.lab.plan import HostPlan

FLOWS_PER_PEER_ENDPOINT = 2  # L3_LOOKUP exact /32 and TUNNEL_SRC check (ohc/compiler.py)
EP_HOST = "hv2"


def endpoint(i: int) -> dict[str, Any]:
    """The i-th red endpoint on hv2: 10.4.0.11 and up, avoiding .0 and .255 of each /24."""
    n = i + 10
    return {
        "name": f"e{i}",
        "kind": "vm",
        "ip": f"10.{4 + n // 62500}.{n // 250 % 250}.{n % 250 + 1}",
        "host": EP_HOST,
    }


class Creator:
    """Creates red endpoints e0, e1, ... with a pool of concurrent REST calls."""

    def __init__(self, client: Client, workers: int, budget: float) -> None:
        self.client = client
        self.workers = workers
        self.budget = budget  # seconds of REST creation in total
        self.created = 0  # e0 .. e{created-1} exist
        self.by_rest = 0
        self.by_batch = 0  # created by batch creates, in batch_seconds
        self.batch_seconds = 0.0
        self.seconds = 0.0
        self.samples: list[tuple[int, float]] = []  # (endpoints, seconds spent creating)
        self.lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        return self.seconds >= self.budget

    def up_to(self, n: int) -> tuple[int, float]:
        """Create until ``n`` exist or the budget is spent; returns (created, seconds)."""
        start_count, spent_before, t0 = self.created, self.seconds, time.monotonic()
        deadline = t0 + max(0.0, self.budget - self.seconds)
        nxt = iter(range(self.created, n))
        done = [self.created]

        def worker() -> None:
            while time.monotonic() < deadline:
                with self.lock:
                    i = next(nxt, None)
                if i is None:
                    return
                self.client.post("/v1/vpcs/red/endpoints", endpoint(i))
                with self.lock:
                    done[0] += 1
                    if done[0] % 500 == 0:
                        spent = spent_before + time.monotonic() - t0
                        self.samples.append((done[0], round(spent, 2)))
                        rate = (done[0] - start_count) / (time.monotonic() - t0)
                        print(f"    {done[0]:6d} red endpoints ({rate:.1f}/s)", flush=True)

        with ThreadPoolExecutor(self.workers) as pool:
            for f in [pool.submit(worker) for _ in range(self.workers)]:
                f.result()
        # A worker checks the deadline before taking an index and posts every index it took,
        # so e0 .. e{done-1} all exist.
        self.created = done[0]
        self.by_rest += self.created - start_count
        elapsed = time.monotonic() - t0
        self.seconds += elapsed
        return self.created - start_count, elapsed

    def batch_up_to(self, n: int) -> tuple[int, float]:
        """Create the rest up to ``n`` by batch creates; returns (created, seconds)."""
        t0, start = time.monotonic(), self.created
        while self.created < n:
            upto = min(n, self.created + MAX_BATCH)
            body = {"endpoints": [endpoint(i) for i in range(self.created, upto)]}
            self.client.post("/v1/vpcs/red/endpoints:batchCreate", body)
            self.created = upto
        took = time.monotonic() - t0
        self.by_batch += self.created - start
        self.batch_seconds += took
        return self.created - start, took

    def projected_s(self, n: int) -> float | None:
        """Seconds REST creation of ``n`` endpoints would take from an empty VPC, from a
        least-squares fit of the time per endpoint against the VPC's size (a + b * size)."""
        pts = [(0, 0.0), *self.samples]
        xs, ys = [], []
        for (c0, s0), (c1, s1) in itertools.pairwise(pts):
            if c1 > c0:
                xs.append((c0 + c1) / 2)
                ys.append((s1 - s0) / (c1 - c0))
        if len(xs) < 2:
            return None
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        a = my - b * mx
        return a * n + b * n * n / 2


def switch_flows(h: HostPlan) -> int:
    return switch_flows_on(h, "br-int")


def switch_flows_on(h: HostPlan, bridge: str) -> int:
    out = ovs.ofctl(h, "dump-aggregate", bridge=bridge)
    m = re.search(r"flow_count=(\d+)", out)
    return int(m.group(1)) if m else -1


def clear_switch(h: HostPlan) -> None:
    ovs.ofctl(h, "del-flows")
    ovs.ofctl(h, "del-groups")


BENCH_BRIDGE = "br-bench"


def bundle_baseline(h: HostPlan) -> dict[str, Any]:
    """The switch's own speed for the same state: br-int's flows and groups, dumped as text,
    put into an empty scratch bridge of the same switch with ``ovs-ofctl --bundle add-flows``
    (what issue 10 calls the limit to aim at). Wall time of that one command, text parsing
    included; groups go in first, untimed, since flows point at them."""
    flows = [
        ln.strip()
        for ln in ovs.ofctl(h, "dump-flows", "--no-stats").splitlines()
        if ln.strip() and not ln.startswith(("NXST", "OFPST"))
    ]
    groups = [
        ln.strip() for ln in ovs.ofctl(h, "dump-groups").splitlines()
        if ln.strip().startswith("group_id=")
    ]  # fmt: skip
    ovs.vsctl(h, "--may-exist", "add-br", BENCH_BRIDGE, "--", "set", "bridge", BENCH_BRIDGE,
              "datapath_type=netdev", "fail_mode=secure", f"protocols={ovs.OF_PROTOCOLS}",
              "other-config:datapath-id=00000000000000bb")  # fmt: skip
    try:
        if groups:
            ovs.ofctl(h, "add-groups", "-", bridge=BENCH_BRIDGE, stdin="\n".join(groups) + "\n")
        t0 = time.monotonic()
        ovs.ofctl(
            h, "add-flows", "-", "--bundle", bridge=BENCH_BRIDGE, stdin="\n".join(flows) + "\n"
        )
        took = time.monotonic() - t0
        held = switch_flows_on(h, BENCH_BRIDGE)
    finally:
        ovs.vsctl(h, "--if-exists", "del-br", BENCH_BRIDGE)
    return {"bundle_s": round(took, 3), "bundle_flows": held, "bundle_groups": len(groups)}


LOG_EVENTS = {  # (file in the host's rundir, text): counted during each install
    "ovs_probe_disconnects": ("ovs-vswitchd.log", "no response to inactivity probe"),
    "ohc_sync_failed": ("ohc.log", "sync failed"),
    "ohc_stream_silent": ("ohc.log", "nothing heard for"),
}


def log_marks(h: HostPlan) -> dict[str, int]:
    out = {}
    for key, (name, text) in LOG_EVENTS.items():
        try:
            with open(f"{h.rundir}/{name}", encoding="utf-8", errors="replace") as f:
                out[key] = sum(text in line for line in f)
        except OSError:
            out[key] = 0
    return out


def time_install(
    lab: common.Lab, h: HostPlan, expected: int, quiet: float, timeout: float
) -> dict[str, Any]:
    """Start the OHC; seconds until a sync holds ``expected`` flows, then until it is quiet."""
    before = log_marks(h)
    t0 = time.time()
    common.start_ohc(lab.plan, h)
    timeline: list[tuple[float, int, int]] = []  # (seconds, sync n, flows) per new sync
    installed_at: float | None = None
    install_sync_s: float | None = None  # the OHC's own time for that sync
    install_sync: dict[str, Any] = {}  # where that sync's time went (the OHC's status)
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
                installed_at, install_sync_s = at, last.get("total_s")
                parts = (
                    "compile_s",
                    "read_s",
                    "plan_s",
                    "send_s",
                    "read_unmatched",
                    "reasons",
                    "streamed",
                )
                install_sync = {k: last.get(k) for k in parts}
        if installed_at is not None and time.time() - last_change >= quiet:
            break
        time.sleep(0.05)
    cpu_s = common.cpu_seconds(common.ohc_pid(h))
    after = log_marks(h)
    st = common.ohc_status(h)
    last = st.get("last_sync") or {}
    pid = common.ohc_pid(h)
    received = st.get("received") or {}
    return {
        "expected_flows": expected,
        "installed_s": None if installed_at is None else round(installed_at - t0, 3),
        "flows_reported": last.get("flows"),
        "flows_on_switch": switch_flows(h),
        "install_sync_s": install_sync_s,
        "install_sync": install_sync,
        "last_sync_s": last.get("total_s"),
        "last_sync_counts": last.get("counts"),
        "syncs": last.get("n"),
        "timeline": timeline,
        "converged": installed_at is not None,
        "waited_s": round(time.time() - t0, 1),
        "ohc_cpu_s": cpu_s,
        "log_events": {k: after[k] - before[k] for k in after},
        "rss_mib": round(common.rss_mib(pid) or 0.0, 1),
        "rss_peak_mib": round(rss_peak, 1),
        "received_bytes": received.get("bytes"),
        "received_objects": received.get("objects"),
    }


def time_updates(lab: common.Lab, h: HostPlan, creator: Creator, count: int) -> dict[str, Any]:
    """Create ``count`` more red endpoints one by one, each with ?wait=programmed."""
    client = lab.client("red", timeout=120)
    # The endpoints are on hv2, whose OHC is stopped on purpose: ?wait=programmed would wait
    # for hv2 too (the endpoint's own host must apply it). Report on its behalf that it holds
    # its endpoint stream, so each call waits for hv1 alone, the host this measures.
    hv2 = {"stream": "endpoint/hv2//", "version": 2**62}
    client.put("/v1/hosts/hv2/applied", {"streams": [hv2]})
    walls: list[float] = []
    compiles: list[float] = []
    syncs: list[float] = []
    for _ in range(count):
        i = creator.created
        t0 = time.monotonic()
        client.post("/v1/vpcs/red/endpoints?wait=programmed&timeout=60", endpoint(i))
        walls.append(time.monotonic() - t0)
        creator.created += 1
        last = common.ohc_status(h).get("last_sync") or {}
        compiles.append(float(last.get("compile_s") or 0.0))
        syncs.append(float(last.get("total_s") or 0.0))
    return {
        "count": count,
        "rest_to_programmed_s": common.summary(walls),
        "ohc_compile_s": common.summary(compiles),
        "ohc_sync_s": common.summary(syncs),
        "units": (common.ohc_status(h).get("last_sync") or {}).get("units"),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 1)


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,50000", help="comma-separated, ascending")
    p.add_argument("--workers", type=int, default=8, help="concurrent REST calls when creating")
    p.add_argument(
        "--create-budget", type=float, default=300, help="seconds of REST creation in total"
    )
    p.add_argument("--no-batch", action="store_true", help="stop where single creates stopped")
    p.add_argument("--quiet", type=float, default=3.0, help="seconds without a sync = settled")
    p.add_argument("--updates", type=int, default=10, help="single creates timed after install")
    p.add_argument("--timeout", type=float, default=240, help="max seconds to wait for install")
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
        common.stop_ohc(lab.plan, hv2)
        base = (common.ohc_status(hv1).get("last_sync") or {}).get("flows", 0)
        print(f"hv1 holds {base} flows with no red endpoints; hv2's OHC stopped")
        creator = Creator(lab.client("red", timeout=120), args.workers, args.create_budget)
        for n in sizes:
            print(f"size {n}: stop hv1's OHC, clear br-int, create red endpoints ...", flush=True)
            common.stop_ohc(lab.plan, hv1)
            clear_switch(hv1)
            rest_before = creator.by_rest
            made, secs = creator.up_to(n) if not creator.exhausted else (0, 0.0)
            rate = made / secs if secs > 0 else None
            if made:
                print(f"  {made} created through REST in {secs:.1f}s ({rate:.1f}/s)", flush=True)
            batched, batch_s = 0, 0.0
            if creator.created < n:
                print(f"  REST budget of {args.create_budget:.0f}s spent at "
                      f"{creator.created} endpoints", flush=True)  # fmt: skip
                if args.no_batch:
                    n = creator.created
                else:
                    batched, batch_s = creator.batch_up_to(n)
                    print(f"  {batched} more by batch creates in {batch_s:.1f}s "
                          f"({batched / batch_s:.0f}/s)", flush=True)  # fmt: skip
            expected = base + FLOWS_PER_PEER_ENDPOINT * creator.created
            # the OHC starts against a control plane at rest: what the batch left to do
            # (publishing, storing) is the shard's, not the OHC's install
            settled = common.wait_shards_quiet(lab.plan)
            print(f"  red holds {creator.created}; shards quiet after {settled}s; start hv1's OHC",
                  flush=True)  # fmt: skip
            cold = time_install(lab, hv1, expected, args.quiet, args.timeout)
            cold["shards_settled_s"] = settled
            print(f"  installed {cold['flows_on_switch']} flows in {cold['installed_s']}s, "
                  f"RSS {cold['rss_mib']} MiB", flush=True)  # fmt: skip
            baseline: dict[str, Any] = {}
            if cold["converged"]:
                baseline = bundle_baseline(hv1)
                print(f"  ovs-ofctl --bundle add-flows of the same {baseline['bundle_flows']} "
                      f"flows: {baseline['bundle_s']}s", flush=True)  # fmt: skip
            updates: dict[str, Any] | None = None
            if cold["converged"] and args.updates:
                updates = time_updates(lab, hv1, creator, args.updates)
                print(f"  {args.updates} more endpoints, one at a time: REST -> programmed p50 "
                      f"{updates['rest_to_programmed_s']['p50']:.3f}s, OHC compile p50 "
                      f"{updates['ohc_compile_s']['p50']:.3f}s", flush=True)  # fmt: skip
                expected = base + FLOWS_PER_PEER_ENDPOINT * creator.created
            print("  restart with everything installed", flush=True)
            common.stop_ohc(lab.plan, hv1)
            warm: dict[str, Any] | None = None
            if cold["converged"]:
                warm = time_install(lab, hv1, expected, args.quiet, args.timeout)
                print(f"  restart settled, installed at {warm['installed_s']}s", flush=True)
            else:
                print(f"  NOT installed within {args.timeout:.0f}s: {cold['log_events']}")
            rows.append(
                {
                    "size": n,
                    "endpoints": creator.created,
                    "by_rest_total": creator.by_rest,
                    "by_rest_now": creator.by_rest - rest_before,
                    "by_batch_now": batched,
                    "batch_s": round(batch_s, 2),
                    "create_s": round(secs, 2),
                    "create_rate_per_s": None if rate is None else round(rate, 2),
                    "cold": cold,
                    # the switch's own speed for the same flows, and the OHC's install over it
                    "bundle_s": baseline.get("bundle_s"),
                    "bundle_ratio": ratio(cold["installed_s"], baseline.get("bundle_s")),
                    "bundle": baseline or None,
                    "updates": updates,
                    "warm_restart": warm,
                    "ctl2_rss_mib": round(
                        common.rss_mib(common.controller_pid(lab.plan, "ctl2")) or 0.0, 1
                    ),
                    "load_1min": round(common.loadavg()[0], 2),
                }
            )
            if (args.no_batch and creator.exhausted) or not cold["converged"]:
                break  # a bigger size will not do better

    projected = {str(n): creator.projected_s(n) for n in sizes}
    result = {
        "benchmark": "flow_install",
        "topology": "benchmarks/topologies/flowinstall.yaml",
        "flows_without_red": base,
        "workers": args.workers,
        "rest": {
            "budget_s": args.create_budget,
            "created": creator.by_rest,
            "seconds": round(creator.seconds, 1),
            "progress": creator.samples,
            "projected_s_from_empty": {k: v and round(v) for k, v in projected.items()},
            # batch creates (endpoints:batchCreate, up to MAX_BATCH a call) for the rest
            "batch": {
                "created": creator.by_batch,
                "seconds": round(creator.batch_seconds, 2),
                "per_s": round(creator.by_batch / creator.batch_seconds)
                if creator.batch_seconds
                else None,
            },
        },
        "rows": rows,
        "machine": m,
        "load_1min_during_run": load.result(),
        "wall_s": round(time.monotonic() - t_start, 1),
        "when": common.now_utc(),
    }
    print()
    print("flow install on hv1: N peer endpoints learnt at once (OHC start -> flows installed)")
    print(
        f"{'peers':>7} {'via REST':>8} {'flows':>7} {'install s':>9} {'sync s':>6}"
        f" {'bundle s':>8} {'x bundle':>8}"
        f" {'OHC cpu s':>9} {'update s':>8} {'compile s':>9} {'restart s':>9} {'RSS MiB':>7}"
        f" {'recv MB':>7} {'objects':>7} {'probe drops':>11} {'ctl2 MiB':>8}"
    )
    for r in rows:
        c, w = r["cold"], r["warm_restart"] or {}
        u = r["updates"] or {}
        print(
            f"{r['endpoints']:>7} {r['by_rest_total']:>8} {c['flows_on_switch']:>7}"
            f" {num(c['installed_s']):>9} {num(c['install_sync_s']):>6}"
            f" {num(r['bundle_s']):>8} {num(r['bundle_ratio']):>8}"
            f" {num(c['ohc_cpu_s']):>9}"
            f" {num(u.get('rest_to_programmed_s', {}).get('p50')):>8}"
            f" {num(u.get('ohc_compile_s', {}).get('p50')):>9} {num(w.get('installed_s')):>9}"
            f" {c['rss_peak_mib']:>7.0f} {(c['received_bytes'] or 0) / 1e6:>7.1f}"
            f" {c['received_objects'] or 0:>7} {c['log_events']['ovs_probe_disconnects']:>11}"
            f" {r['ctl2_rss_mib']:>8.0f}"
        )
    print("install s: OHC start -> a sync holds every flow ('-': not within the timeout);")
    print("sync s: the OHC's own time for that sync (read back, plan, send; not compile);")
    print("bundle s: ovs-ofctl --bundle add-flows of the same flows into an empty bridge of the")
    print("  same switch; x bundle: install s / bundle s (issue 10's target: <= 5);")
    print("update s: p50 of one more endpoint, REST call -> hv1 programmed (?wait=programmed);")
    print("compile s: p50 of the OHC engine's update (the changed units) for those updates;")
    print("probe drops: OVS dropped the OHC's OpenFlow connection (no echo reply for 5 s).")
    print(f"REST creation: {creator.by_rest} endpoints in {creator.seconds:.0f}s "
          f"({args.workers} concurrent calls); progress (endpoints, s): {creator.samples}")  # fmt: skip
    for n, s in projected.items():
        if s is not None:
            print(f"  projected REST creation of {n} endpoints from an empty VPC: {s / 60:.0f} min")
    common.print_machine(m, result["load_1min_during_run"])
    print(f"benchmark wall time {result['wall_s']} s")
    common.write_json(result, args.json, "flow_install.json")


if __name__ == "__main__":
    main()
