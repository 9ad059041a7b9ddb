"""meshpeer and OVN side by side on the same lab hosts, one system at a time (issue 22, docs/ovn.md).

One topology: hosts hv1 and hv2, VPC blue with VM b1 on hv1, VPC red with VM r1 on hv2, blue
and red peered. For each size N (0 and 1,000 by default) each system in turn gets a fresh lab of
the same name (the same namespaces, addresses and userspace switches), N more red endpoints on
another host (bulk), then:

- ``add_ms``: ``--count`` (>= 20) more red endpoints one by one, each timed until programmed:
  meshpeer ``POST /v1/vpcs/red/endpoints?wait=programmed`` (every host following the change,
  hv1 included); OVN ``ovn-nbctl --wait=hv lsp-add`` (every chassis, hv1 included, has applied
  the NB change);
- ``flows_on_host``: flows on hv1's br-int (hv1 holds one VM, b1, of the other VPC), from the
  switch itself;
- ``rss_mib``: hv1's host controller (the OHC; ovn-controller);
- ``cold_s``: hv1's controller stopped, br-int emptied, the controller started: seconds until
  br-int holds as many flows as before.

Peer endpoints have no VM: meshpeer's are endpoints on hv2; OVN's bulk ports are bound (SB
``lsp-bind``) to a registered chassis with no ovn-controller, so hv1 holds tunnel output flows
for them as for a port on a real host; the timed ports stay unbound (the ``--wait=hv`` figure of
the probe in issue 22). Numbers are printed, never
asserted. Run: ``flock /tmp/meshpeer-lab.lock .venv/bin/python benchmarks/vs_ovn.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Any

import common

from meshpeer.controller.handlers.endpoints import MAX_BATCH
from meshpeer.controller.model import derived_mac
from meshpeer.lab import build, controllers, ovn, ovnplan, ovs, supervisor, teardown, topology
from meshpeer.lab.plan import HostPlan, LabPlan
from meshpeer.lab.procs import read_pidfile
from meshpeer.lab.sh import LabError, run
from meshpeer.lab.topology import Topology

LAB = "vsovn"
TOPOLOGY = {
    "controllers": [{"name": "ctl1"}],
    "hosts": [{"name": "hv1"}, {"name": "hv2"}],
    "vpcs": [
        {"name": "blue", "controller": "ctl1", "subnets": ["10.1.0.0/24"]},
        {"name": "red", "controller": "ctl1", "subnets": ["10.2.0.0/16"]},
    ],
    "endpoints": [
        {"name": "b1", "vpc": "blue", "host": "hv1", "ip": "10.1.0.11"},
        {"name": "r1", "vpc": "red", "host": "hv2", "ip": "10.2.0.11"},
    ],
    "peerings": [{"vpc": "blue", "peer": "red"}, {"vpc": "red", "peer": "blue"}],
}
COLD_BUDGET = 180.0
FAKE_CHASSIS = "remote0"  # OVN: the chassis the bulk ports are bound to (no ovn-controller)


def endpoint(i: int) -> dict[str, Any]:
    """The i-th peer endpoint (red, on hv2): 10.2.1.10 and up."""
    return {
        "name": f"p{i}",
        "kind": "vm",
        "ip": f"10.2.{1 + i // 200}.{10 + i % 200}",
        "host": "hv2",
    }


def flows(h: HostPlan) -> int:
    return sum(1 for ln in common.dump_flows(h).splitlines() if "cookie=" in ln)


def ms(xs: list[float]) -> dict[str, float]:
    s = common.summary([x * 1000 for x in xs])
    return {"p50": round(s["p50"], 1), "p99": round(s["p99"], 1)}


def row(
    bulk: dict[str, float],
    add_s: list[float],
    flows_on_host: int,
    rss: float | None,
    cold: float | None,
) -> dict[str, Any]:
    return {
        "bulk_s": {k: round(v, 2) for k, v in bulk.items()},
        "add_ms": ms(add_s),
        "flows_on_host": flows_on_host,
        "rss_mib": None if rss is None else round(rss, 1),
        "cold_s": None if cold is None else round(cold, 3),
    }


def cold_s(h: HostPlan, stop: Callable[[], None], start: Callable[[], None]) -> float | None:
    """Stop the host's controller, empty br-int, start the controller: seconds until br-int
    holds as many flows as before (the switch's table is the ground truth); None if it did
    not within ``COLD_BUDGET`` seconds."""
    want = flows(h)
    stop()
    ovs.ofctl(h, "del-flows")
    t0 = time.monotonic()
    start()
    while flows(h) < want:
        if time.monotonic() > t0 + COLD_BUDGET:
            print(f"  {h.name}: fewer than {want} flows {COLD_BUDGET:.0f} s after a cold start")
            return None
        # a dump of 40k flows costs the switch and the controller CPU: rarely after 2 s
        time.sleep(0.02 if time.monotonic() - t0 < 2 else 0.5)
    return time.monotonic() - t0


# --- meshpeer ----------------------------------------------------------------------------------


def run_meshpeer(topo: Topology, size: int, count: int) -> dict[str, Any]:
    try:
        plan, _ = build.fresh(topo, LAB, progress=lambda _: None)
        ctl = plan.controllers[0]
        client = controllers.client(plan, ctl, plan.api_token, timeout=300)
        t0 = time.monotonic()
        for lo in range(0, size, MAX_BATCH):
            body = {"endpoints": [endpoint(i) for i in range(lo, min(size, lo + MAX_BATCH))]}
            client.post("/v1/vpcs/red/endpoints:batchCreate", body)
        t1 = time.monotonic()
        path = "/v1/vpcs/red/endpoints?wait=programmed&timeout=60"  # the API's longest wait
        nxt = size
        for _ in range(5):  # until one is programmed, so is everything before it (bounded)
            nxt += 1
            if client.post(path, endpoint(nxt - 1))["programmed"]:
                break
        bulk = {"create": t1 - t0, "programmed": time.monotonic() - t1}
        add_s = []
        for i in range(nxt, nxt + count):
            t0 = time.monotonic()
            if not client.post(path, endpoint(i))["programmed"]:
                raise LabError(f"endpoint {i} not programmed within 60 s")
            add_s.append(time.monotonic() - t0)
        hv1 = plan.host("hv1")
        got = flows(hv1), common.rss_mib(common.ohc_pid(hv1))
        cold = cold_s(hv1, lambda: common.stop_ohc(plan, hv1), lambda: common.start_ohc(plan, hv1))
        return row(bulk, add_s, *got, cold)
    finally:
        teardown.down(LAB)


# --- OVN ---------------------------------------------------------------------------------------


def ovn_port(i: int) -> list[ovnplan.Command]:
    e = endpoint(i)
    return ovnplan.port_commands("red", e["name"], derived_mac("red", e["ip"]), e["ip"])


def run_ovn(topo: Topology, size: int, count: int) -> dict[str, Any]:
    try:
        plan = ovn.up(dataclasses.replace(topo, controllers=()), LAB, progress=lambda _: None)
        c = ovnplan.central(plan)
        t0 = t1 = t2 = time.monotonic()
        if size:
            ovn.sbctl(c, "chassis-add", FAKE_CHASSIS, "geneve", underlay_spare(plan))
            ovn.nbctl(c, [x for i in range(size) for x in ovn_port(i)], wait="sb", timeout=300)
            t1 = time.monotonic()
            bind(c, {f"p{i}" for i in range(size)})
            t2 = time.monotonic()
        syncs = wait_hv(c)  # hv1 has applied all of it
        bulk = {"create": t1 - t0, "bind": t2 - t1, "programmed": time.monotonic() - t2}
        bulk["syncs"] = syncs
        add_s = []
        for i in range(size, size + count):
            t0 = time.monotonic()
            ovn.nbctl(c, ovn_port(i), wait="hv", timeout=60)
            add_s.append(time.monotonic() - t0)
        hv1 = plan.host("hv1")
        got = flows(hv1), common.rss_mib(read_pidfile(f"{hv1.rundir}/ovn-controller.pid"))
        cold = cold_s(
            hv1,
            lambda: supervisor.release(plan, "ovn-controller", hv1.name),
            lambda: supervisor.supervise(plan, ovn.controller_spec(plan, hv1)),
        )
        return row(bulk, add_s, *got, cold)
    finally:
        ovn.down(LAB)


def wait_hv(c: ovnplan.Central, budget: float = 420.0) -> int:
    """``--wait=hv`` of a ``sync``, again (a new NB change) each time one has waited 30 s in
    vain: after a big batch one wait may never return until another NB change arrives
    (docs/ovn.md). Returns how many syncs it took; LabError past ``budget`` seconds."""
    deadline = time.monotonic() + budget
    for n in itertools.count(1):
        try:
            ovn.nbctl(c, [("sync",)], wait="hv", timeout=30)
            return n
        except LabError:
            if time.monotonic() > deadline:
                raise
    raise AssertionError("unreachable")


def bind(c: ovnplan.Central, ports: set[str]) -> None:
    """Bind ``ports`` to the registered chassis, by row UUID (``lsp-bind`` looks each port up
    by a scan: quadratic, minutes at 10k)."""
    chassis = ovn.sbctl(c, "--bare", "--columns=_uuid", "find", "Chassis", f"name={FAKE_CHASSIS}")
    rows = ovn.sbctl(c, "--bare", "--columns=_uuid,logical_port", "list", "Port_Binding").split()
    uuids = [u for u, port in zip(rows[::2], rows[1::2], strict=True) if port in ports]
    sets = [
        x for u in uuids for x in ("--", "set", "Port_Binding", u, f"chassis={chassis.strip()}")
    ]
    ovn.sbctl(c, *sets, timeout=300)


def underlay_spare(plan: LabPlan) -> str:
    """An underlay address no host holds (the registered chassis' tunnel endpoint)."""
    net = plan.underlay_subnet.rsplit(".", 1)[0]
    return f"{net}.200"


# --- the run -----------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def ratios(m: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    return {
        "add_ms": {q: ratio(m["add_ms"][q], o["add_ms"][q]) for q in ("p50", "p99")},
        **{k: ratio(m[k], o[k]) for k in ("flows_on_host", "rss_mib", "cold_s")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,1000", help="peer endpoints, comma-separated")
    ap.add_argument("--count", type=int, default=20, help="timed adds per size (>= 20)")
    ap.add_argument("--out", help="result file (default benchmarks/results/vs_ovn.json)")
    args = ap.parse_args()
    why = ovn.missing()
    if why:
        raise SystemExit(why)
    topo = topology.parse(TOPOLOGY)
    sizes = [int(s) for s in args.sizes.split(",")]
    m = common.machine(LAB)
    common.print_machine(m)
    rows = []
    t_run = time.monotonic()
    with common.LoadSampler() as load:
        for size in sizes:
            print(f"size {size}: meshpeer ...", flush=True)
            mp = run_meshpeer(topo, size, args.count)
            print(f"size {size}: OVN ...", flush=True)
            ov = run_ovn(topo, size, args.count)
            rows.append({"size": size, "meshpeer": mp, "ovn": ov, "ratio": ratios(mp, ov)})
            for name, r in (("meshpeer", mp), ("ovn", ov), ("ratio", rows[-1]["ratio"])):
                print(f"  {name:<9} add ms p50 {r['add_ms']['p50']} p99 {r['add_ms']['p99']}, "
                      f"flows on hv1 {r['flows_on_host']}, RSS MiB {r['rss_mib']}, cold s {r['cold_s']}")  # fmt: skip
            print(f"  bulk s: meshpeer {mp['bulk_s']}, OVN {ov['bulk_s']}", flush=True)
    result = {
        "benchmark": "vs_ovn",
        "when": common.now_utc(),
        "machine": m,
        "load": load.result(),
        "seconds": round(time.monotonic() - t_run, 1),
        "ovn": run(["ovn-controller", "--version"]).stdout.splitlines()[0],
        "count": args.count,
        "rows": rows,
    }
    common.write_json(result, args.out, "vs_ovn.json")


if __name__ == "__main__":
    main()
