"""meshpeer and OVN side by side on the same lab hosts, one system at a time (issue 22, docs/ovn.md).

One topology: hosts hv1 and hv2, VPC blue with VM b1 on hv1, VPC red with VM r1 on hv2, blue
and red peered. For each size N (0, 1,000, 5,000, 10,000 by default) each system in turn gets a
fresh lab of the same name (the same namespaces, addresses and userspace switches), then:

- ``bulk_s`` / ``batch_s``: N more red endpoints on another host at once, until programmed on
  every host: meshpeer batch creates, then ``?wait=programmed``; OVN one NB transaction through
  the IDL (meshpeer/lab/ovnidl.py), one SB transaction binding the ports, then ``--wait=hv``
  syncs (a fresh one every 30 s, bounded; ``syncs`` says how many); then, for both, until the
  watched host's br-int holds the batch's last endpoint (``bulk_s.switch_after_wait``);
- ``add_ms``: ``--count`` (>= 20) more red endpoints one by one, each timed until programmed:
  meshpeer ``POST /v1/vpcs/red/endpoints?wait=programmed`` (every host following the change,
  hv1 included); OVN an IDL transaction waited for as ``--wait=hv`` does (every chassis, hv1
  included, has applied it); and for both until the watched host's br-int agrees (the
  switch's table is the ground truth: when it does not yet agree as the wait returns, the
  time runs on until it does, and ``switch_late`` records it; ``switch_agrees`` counts the
  changes it already agreed with); ``add_host_ms``: OVN only, until hv1's
  ``Chassis_Private.nb_cfg_timestamp`` (its own report, without ovn-northd's round trip; across
  zones hv2's, ``host_watched``); ``controller_log``: OVN only, lines of the watched host's
  ovn-controller log that explain a late flow (OpenFlow errors, reconnects, long polls);
- ``delete_ms``: those endpoints deleted one by one, each timed the same way (until the
  address is in no flow);
- ``tcp_gbps``: iperf3 TCP b1 -> r1 across the peering (a connect and 3 s of data);
- ``flows_on_host``: flows on hv1's br-int (hv1 holds one VM, b1, of the other VPC), from the
  switch itself;
- ``rss_mib``: hv1's host controller (the OHC; ovn-controller);
- ``cold_s``: hv1's controller stopped, br-int emptied, the controller started: seconds until
  br-int holds as many flows as before;
- ``load``: the 1-minute load average at the start and end of each system's part.

Peer endpoints have no VM: meshpeer's are endpoints on hv2; OVN's bulk ports are bound (SB) to a
registered chassis with no ovn-controller, so hv1 holds tunnel output flows for them as for a
port on a real host; the timed ports stay unbound (the ``--wait=hv`` figure of the probe in
issue 22). ``--meshpeer-only`` sizes run meshpeer alone (50k: OVN's cold start and batch
handling at 10k already take minutes). ``--cross`` sizes put red on a second shard (OVN: a
second availability zone, hv2 its chassis and gateway, joined to hv1's zone by ovn-ic with a
transit switch between the routers; JSON ``cross_rows``). Numbers are printed, never asserted. Run:
``flock /tmp/meshpeer-lab.lock .venv/bin/python benchmarks/vs_ovn.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any

import common
import dataplane

from meshpeer.client import Client
from meshpeer.controller.handlers.endpoints import MAX_BATCH
from meshpeer.controller.model import derived_mac
from meshpeer.lab import (
    build,
    controllers,
    ovn,
    ovnidl,
    ovnplan,
    ovs,
    supervisor,
    teardown,
    topology,
)
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
# Across shards: red on a second shard; OVN: a second availability zone, joined by ovn-ic.
CROSS = {
    **TOPOLOGY,
    "controllers": [{"name": "ctl1"}, {"name": "ctl2"}],
    "vpcs": [
        {"name": "blue", "controller": "ctl1", "subnets": ["10.1.0.0/24"]},
        {"name": "red", "controller": "ctl2", "subnets": ["10.2.0.0/16"]},
    ],
}
COLD_BUDGET = 180.0
SWITCH_BUDGET = 30.0  # after a wait, until the watched switch agrees (rarely more than 0)
BATCH_SWITCH_BUDGET = 120.0  # the same after a batch (OVN: a reinstall of every flow)
BATCH_BUDGET = 420.0  # until a batch is on every host (OVN: 230 s at 10k in the first run)
TCP_S = 3
FAKE_CHASSIS = "remote0"  # OVN: the chassis the bulk ports are bound to (no ovn-controller)


def endpoint(i: int) -> dict[str, Any]:
    """The i-th peer endpoint (red, on hv2): 10.2.1.10 and up."""
    return {
        "name": f"p{i}",
        "kind": "vm",
        "ip": f"10.2.{1 + i // 200}.{10 + i % 200}",
        "host": "hv2",
    }


def on_switch(h: HostPlan, ip: str) -> bool:
    """Whether ``h``'s br-int holds a flow that matches on or sets ``ip``: the switch's own
    table as the ground truth behind both systems' waits."""
    return re.search("=" + re.escape(ip) + "(?![0-9])", common.dump_flows(h)) is not None


def switch_lag(h: HostPlan, ip: str, present: bool, budget: float = SWITCH_BUDGET) -> float | None:
    """Seconds from now until ``h``'s br-int agrees with a change (``ip`` in a flow after an
    add, in none after a delete): 0.0 when it already does at the first look (the usual case:
    one dump), else polled; None if not within ``budget`` seconds."""
    t0 = time.monotonic()
    if on_switch(h, ip) == present:
        return 0.0
    while time.monotonic() < t0 + budget:
        time.sleep(0.05)
        if on_switch(h, ip) == present:
            return time.monotonic() - t0
    return None


def flows(h: HostPlan) -> int:
    return sum(1 for ln in common.dump_flows(h).splitlines() if "cookie=" in ln)


def ms(xs: list[float]) -> dict[str, float]:
    s = common.summary([x * 1000 for x in xs])
    return {"p50": round(s["p50"], 1), "p99": round(s["p99"], 1)}


def load1() -> float:
    return round(common.loadavg()[0], 2)


@dataclasses.dataclass
class Measured:
    """One system at one size (JSON: ``row``)."""

    bulk: dict[str, float] = dataclasses.field(default_factory=dict)
    add_s: list[float] = dataclasses.field(default_factory=list)
    delete_s: list[float] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    tcp_gbps: float | None = None
    flows_on_host: int = 0
    rss: float | None = None
    cold: float | None = None
    load: list[float] = dataclasses.field(default_factory=lambda: [load1()])
    # after how many timed adds / deletes the watched host's switch already agreed when the
    # wait returned; the others in switch_late
    switch_agrees: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"add": 0, "delete": 0, "of": 0}
    )
    switch_late: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def batch_on_switch(self, h: HostPlan, ip: str) -> None:
        """The batch's last endpoint (``ip``) checked on ``h``'s switch once its wait returned:
        the time until the switch holds it is part of the batch's ``programmed`` step
        (``bulk_s.switch_after_wait``: that part; -1 if not within ``BATCH_SWITCH_BUDGET``)."""
        lag = switch_lag(h, ip, True, BATCH_SWITCH_BUDGET)
        self.bulk["switch_after_wait"] = -1.0 if lag is None else lag
        self.bulk["programmed"] += lag or 0.0

    def timed(
        self, times: list[float], wait_s: float, h: HostPlan, ip: str, added: bool
    ) -> dict[str, Any] | None:
        """One timed change whose wait returned ``wait_s`` after its start, checked on ``h``'s
        switch (``ip`` in a flow after an add, in none after a delete): its time is the wait's
        when the switch already agrees, else until the switch does (then also a record in
        ``switch_late``, returned for the caller's facts; not timed if the switch never agrees
        within ``SWITCH_BUDGET``)."""
        lag = switch_lag(h, ip, added)
        key = "add" if added else "delete"
        self.switch_agrees[key] += lag == 0.0
        self.switch_agrees["of"] += added
        if lag == 0.0:
            times.append(wait_s)
            return None
        late = {"change": key, "ip": ip, "wait_ms": round(wait_s * 1000, 1),
                "switch_after_wait_ms": None if lag is None else round(lag * 1000, 1)}  # fmt: skip
        self.switch_late.append(late)
        if lag is not None:
            times.append(wait_s + lag)
        return late


def row(m: Measured) -> dict[str, Any]:
    steps = ("create", "bind", "programmed")
    return {
        "bulk_s": {k: round(v, 2) for k, v in m.bulk.items()},
        "batch_s": round(sum(m.bulk.get(k, 0.0) for k in steps), 2) if m.bulk else None,
        "add_ms": ms(m.add_s),
        "delete_ms": ms(m.delete_s),
        "tcp_gbps": None if m.tcp_gbps is None else round(m.tcp_gbps, 2),
        "flows_on_host": m.flows_on_host,
        "rss_mib": None if m.rss is None else round(m.rss, 1),
        "cold_s": None if m.cold is None else round(m.cold, 3),
        "load": [*m.load, load1()],
        "switch_agrees": m.switch_agrees,
        "switch_late": m.switch_late,
        **m.extra,
    }


def tcp(plan: LabPlan) -> float | None:
    """iperf3 b1 -> r1 across the peering, Gbit/s; None (printed) if TCP does not get through."""
    try:
        return dataplane.iperf(plan, "b1", "r1", TCP_S)["gbps"]
    except (LabError, RuntimeError, KeyError, ValueError) as e:
        print(f"  TCP b1 -> r1 failed: {e}")
        return None


def cold_s(h: HostPlan, stop: Callable[[], object], start: Callable[[], object]) -> float | None:
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
    m = Measured()
    try:
        plan, _ = build.fresh(topo, LAB, progress=lambda _: None)
        ctl = next(c for c in plan.controllers if c.name == topo.vpc("red").controller)
        client = controllers.client(plan, ctl, plan.api_token, timeout=300)
        t0 = time.monotonic()
        for lo in range(0, size, MAX_BATCH):
            body = {"endpoints": [endpoint(i) for i in range(lo, min(size, lo + MAX_BATCH))]}
            client.post("/v1/vpcs/red/endpoints:batchCreate", body)
        t1 = time.monotonic()
        nxt = size
        for _ in range(5):  # until one is programmed, so is everything before it (bounded)
            nxt += 1
            if programmed(client, "post", endpoint(nxt - 1)):
                break
        m.bulk = {"create": t1 - t0, "programmed": time.monotonic() - t1}
        hv1 = plan.host("hv1")
        if size:
            m.batch_on_switch(hv1, endpoint(size - 1)["ip"])
        for verb, times in (("post", m.add_s), ("delete", m.delete_s)):
            for i in range(nxt, nxt + count):
                m.timed(times, timed(client, verb, i), hv1, endpoint(i)["ip"], verb == "post")
        m.tcp_gbps = tcp(plan)
        m.flows_on_host, m.rss = flows(hv1), common.rss_mib(common.ohc_pid(hv1))
        m.cold = cold_s(
            hv1, lambda: common.stop_ohc(plan, hv1), lambda: common.start_ohc(plan, hv1)
        )
        return row(m)
    finally:
        teardown.down(LAB)


def programmed(client: Client, verb: str, e: dict[str, Any]) -> bool:
    """One create or delete of a red endpoint with ``?wait=programmed`` (the API's longest wait)."""
    q = "wait=programmed&timeout=60"
    if verb == "post":
        return bool(client.post(f"/v1/vpcs/red/endpoints?{q}", e)["programmed"])
    return bool(client.delete(f"/v1/vpcs/red/endpoints/{e['name']}?{q}")["programmed"])


def timed(client: Client, verb: str, i: int) -> float:
    """Seconds for one create or delete of the i-th endpoint until programmed."""
    t0 = time.monotonic()
    if not programmed(client, verb, endpoint(i)):
        raise LabError(f"{verb} p{i}: not programmed within 60 s")
    return time.monotonic() - t0


# --- OVN ---------------------------------------------------------------------------------------


def ovn_port(i: int) -> tuple[str, str]:
    """The i-th peer endpoint as an OVN switch port: (name, addresses)."""
    e = endpoint(i)
    return e["name"], f"{derived_mac('red', ipaddress.ip_address(e['ip']))} {e['ip']}"


def run_ovn(topo: Topology, size: int, count: int) -> dict[str, Any]:
    m = Measured()
    try:
        plan = ovn.up(topo, LAB, progress=lambda _: None)
        zone = ovnplan.vpc_zones(topo)["red"]
        c = ovnplan.central(plan, zone)
        # whose own report counts: hv1 (b1's host) when it is in red's zone; else red's host
        watch = "hv1" if ovnplan.host_zones(topo, plan)["hv1"] == zone else "hv2"
        ovn.sbctl(c, "chassis-add", FAKE_CHASSIS, "geneve", underlay_spare(plan))
        with ovnidl.nb(c.nb_sock) as nb, ovnidl.sb(c.sb_sock) as sb:
            m.bulk, m.extra = ovn_batch(nb, sb, size, watch)
            host = plan.host(watch)
            if size:
                m.batch_on_switch(host, ovn_port(size - 1)[1].split()[1])
            m.add_s, host_ms = ovn_timed(nb, sb, size, count, host, m, delete=False)
            m.extra["add_host_ms"] = ms([x / 1000 for x in host_ms])
            m.delete_s, host_ms = ovn_timed(nb, sb, size, count, host, m, delete=True)
            m.extra["delete_host_ms"] = ms([x / 1000 for x in host_ms])
            m.extra["host_watched"] = watch
            m.extra["controller_log"] = log_events(f"{host.rundir}/ovn-controller.log")
        m.tcp_gbps = tcp(plan)
        hv1 = plan.host("hv1")
        m.flows_on_host = flows(hv1)
        m.rss = common.rss_mib(read_pidfile(f"{hv1.rundir}/ovn-controller.pid"))
        m.cold = cold_s(
            hv1,
            lambda: supervisor.release(plan, "ovn-controller", hv1.name),
            lambda: supervisor.supervise(plan, ovn.controller_spec(plan, hv1)),
        )
        return row(m)
    finally:
        ovn.down(LAB)


def ovn_batch(
    nb: ovnidl.Db, sb: ovnidl.Db, size: int, watch: str
) -> tuple[dict[str, float], dict[str, Any]]:
    """``size`` ports in one NB transaction (until ovn-northd has made their bindings), bound in
    one SB transaction, then synced until every chassis has applied them."""
    t0 = t1 = time.monotonic()
    if size:
        ports = [ovn_port(i) for i in range(size)]
        ovnidl.commit(nb, ovnidl.add_ports("ls-red", ports, nb), "sb", BATCH_BUDGET)
        t1 = time.monotonic()
        ovnidl.bind(sb, {name for name, _ in ports}, FAKE_CHASSIS, timeout=BATCH_BUDGET)
    t2, wall2 = time.monotonic(), time.time()
    syncs, last = ovnidl.sync_hv(nb, BATCH_BUDGET)
    host_ms = host_applied(sb, last, watch)
    bulk = {"create": t1 - t0, "bind": t2 - t1, "programmed": time.monotonic() - t2}
    # the watched host's own report of the last sync, from the end of the bind
    extra = {"syncs": syncs, "programmed_host_s": round(host_ms / 1000 + last.wall - wall2, 2)}
    return bulk, extra


def host_applied(sb: ovnidl.Db, a: ovnidl.Applied, host: str) -> int:
    """ms from ``a``'s start until ``host`` applied it, by its ``Chassis_Private``."""
    assert a.nb_cfg is not None
    return ovnidl.applied_at(sb, a.nb_cfg, a.wall)[host]


def ovn_timed(
    nb: ovnidl.Db,
    sb: ovnidl.Db,
    size: int,
    count: int,
    watch: HostPlan,
    m: Measured,
    delete: bool,
) -> tuple[list[float], list[int]]:
    """``count`` ports added (or deleted) one at a time, each waited for as ``--wait=hv``, then
    until ``watch``'s switch agrees (``Measured.timed``): seconds per change, and ms until
    ``watch``'s own report (``Chassis_Private.nb_cfg_timestamp``)."""
    total: list[float] = []
    host: list[int] = []
    for i in range(size + 1, size + 1 + count):
        name, addresses = ovn_port(i)
        change = (
            ovnidl.delete_ports("ls-red", {name}, nb)
            if delete
            else ovnidl.add_ports("ls-red", [(name, addresses)], nb)
        )
        a = ovnidl.commit(nb, change, "hv", timeout=60)
        assert a.wait_s is not None
        late = m.timed(total, a.wait_s, watch, addresses.split()[1], not delete)
        host.append(host_applied(sb, a, watch.name))
        if late is not None:  # did the host say it had applied it before its switch had it?
            late.update(host_report_ms=host[-1], nb_cfg=a.nb_cfg, started=wall_iso(a.wall))
    return total, host


def wall_iso(t: float) -> str:
    """``time.time()`` as the UTC ISO time ovn-controller's log lines start with."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


LOG_EVENTS = {  # ovn-controller's own log lines (-vfile:info) that would explain a late flow
    "openflow_errors": "OpenFlow error",  # ofctrl: an error from the switch, then a reconnect
    "openflow_connects": "br-int.mgmt: connecting",  # its connections (several at start)
    "long_polls": "Unreasonably long",
}


def log_events(path: str) -> dict[str, Any]:
    """How many lines of ``path`` hold each of ``LOG_EVENTS``, and the OpenFlow errors' lines
    (the first 3, cut at 300 characters)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    out: dict[str, Any] = {k: sum(v in ln for ln in lines) for k, v in LOG_EVENTS.items()}
    errors = [ln[:300] for ln in lines if LOG_EVENTS["openflow_errors"] in ln]
    return {**out, "openflow_error_lines": errors[:3]}


def underlay_spare(plan: LabPlan) -> str:
    """An underlay address no host holds (the registered chassis' tunnel endpoint)."""
    net = plan.underlay_subnet.rsplit(".", 1)[0]
    return f"{net}.200"


# --- the run -----------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def ratios(m: dict[str, Any], o: dict[str, Any]) -> dict[str, Any]:
    return {
        **{
            k: {q: ratio(m[k][q], o[k][q]) for q in ("p50", "p99")} for k in ("add_ms", "delete_ms")
        },
        **{
            k: ratio(m[k], o[k])
            for k in ("flows_on_host", "rss_mib", "cold_s", "batch_s", "tcp_gbps")
        },
    }


def show(name: str, r: dict[str, Any]) -> None:
    def q(k: str) -> str:
        return f"{r[k]['p50']} ({r[k]['p99']})" if r.get(k) else "-"

    print(f"  {name:<9} add ms p50 (p99) {q('add_ms')}, delete {q('delete_ms')}, "
          f"flows on hv1 {r['flows_on_host']}, RSS MiB {r['rss_mib']}, cold s {r['cold_s']}, "
          f"batch s {r['batch_s']}, TCP Gbit/s {r['tcp_gbps']}"
          + (f", load {r['load']}" if "load" in r else "")
          + (f", switch agrees {r['switch_agrees']}" if "switch_agrees" in r else ""))  # fmt: skip
    if "bulk_s" in r:
        keys = ("syncs", "programmed_host_s", "add_host_ms", "delete_host_ms", "controller_log")
        extra = {k: r[k] for k in keys if k in r}
        print(f"  {'':<9} bulk s {r['bulk_s']}" + (f", {extra}" if extra else ""))
    for late in r.get("switch_late", []):
        print(f"  {'':<9} switch late: {late}")


def both(topo: Topology, size: int, count: int, what: str) -> dict[str, Any]:
    """One row: meshpeer, then OVN, at ``size``."""
    print(f"size {size}{what}: meshpeer ...", flush=True)
    mp = run_meshpeer(topo, size, count)
    print(f"size {size}{what}: OVN ...", flush=True)
    ov = run_ovn(topo, size, count)
    rt = ratios(mp, ov)
    for name, r in (("meshpeer", mp), ("ovn", ov), ("ratio", rt)):
        show(name, r)
    return {"size": size, "meshpeer": mp, "ovn": ov, "ratio": rt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0,1000,5000,10000", help="peer endpoints, comma-separated")
    ap.add_argument("--meshpeer-only", default="", help="sizes for meshpeer alone, e.g. 50000")
    ap.add_argument("--cross", default="", help="sizes across two shards / zones, e.g. 0,1000")
    ap.add_argument("--count", type=int, default=20, help="timed adds per size (>= 20)")
    ap.add_argument("--out", help="result file (default benchmarks/results/vs_ovn.json)")
    args = ap.parse_args()
    why = ovn.missing()
    if why:
        raise SystemExit(why)
    topo, cross = topology.parse(TOPOLOGY), topology.parse(CROSS)
    sizes, alone, across = (
        [int(s) for s in x.split(",") if s] for x in (args.sizes, args.meshpeer_only, args.cross)
    )
    m = common.machine(LAB)
    common.print_machine(m)
    rows: list[dict[str, Any]] = []
    cross_rows: list[dict[str, Any]] = []
    t_run = time.monotonic()
    with common.LoadSampler() as load:
        for size in sizes:
            rows.append(both(topo, size, args.count, ""))
        for size in across:
            cross_rows.append(both(cross, size, args.count, " across shards / zones"))
        for size in alone:
            print(f"size {size}: meshpeer alone ...", flush=True)
            mp = run_meshpeer(topo, size, args.count)
            rows.append({"size": size, "meshpeer": mp, "ovn": None, "ratio": None})
            show("meshpeer", mp)
    result = {
        "benchmark": "vs_ovn",
        "when": common.now_utc(),
        "machine": m,
        "load": load.result(),
        "seconds": round(time.monotonic() - t_run, 1),
        "ovn": run(["ovn-controller", "--version"]).stdout.splitlines()[0],
        "ovn_client": "ovs Python IDL (meshpeer/lab/ovnidl.py)",
        "count": args.count,
        "rows": rows,
        "cross_rows": cross_rows,
    }
    common.write_json(result, args.out, "vs_ovn.json")


if __name__ == "__main__":
    main()
