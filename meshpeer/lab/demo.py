"""scripts/demo: the peering demo on a whole lab, every observation checked.

Two controller shards, three hosts, three VPCs (topologies/demo.yaml). It shows the peering
states and effective routes, the reachability matrix against what peering and policy allow,
Geneve on the wire going straight from host to host with the peer's VNI, how long a new VM
takes to become reachable from a peered VPC, and how fast traffic stops between every pair of
the two VPCs (b2 and r1 share hv2) when one side deletes its peering. The exit code is 0 only if every observation matched its expectation.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from meshpeer.client import Client
from meshpeer.lab import build, cli, controllers, state, teardown
from meshpeer.lab.expect import expect
from meshpeer.lab.matrix import matrix
from meshpeer.lab.plan import LabPlan, VmPlan
from meshpeer.lab.probe import answering, answers, capture_geneve, until, vpc_pairs
from meshpeer.lab.topology import Endpoint, Topology


class Demo:
    def __init__(self, plan: LabPlan, topo: Topology) -> None:
        self.plan, self.topo = plan, topo
        self.failures: list[str] = []
        self.owner = {v.name: v.controller for v in topo.vpcs}

    def check(self, what: str, ok: bool) -> bool:
        print(f"    [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)
        return ok

    def client(self, vpc: str) -> Client:
        return controllers.client_for(self.plan, self.owner[vpc])

    def vm(self, name: str) -> VmPlan:
        return next(v for v in self.plan.vms if v.name == name)

    def ep(self, name: str) -> Endpoint:
        return next(e for e in self.topo.endpoints if e.name == name)


def https_only(plan: LabPlan) -> bool:
    """Every shard answers over HTTPS verified against the lab's CA, and not over plain HTTP."""
    for c in plan.controllers:
        if controllers.client(plan, c, None).request("GET", "/healthz")[0] != 200:
            return False
        try:
            Client(f"http://{c.mgmt_ip}:{c.rest_port}", None, timeout=5.0).request(
                "GET", "/healthz"
            )
            return False
        except OSError:
            pass  # the shard closed the connection: a plain request is not a TLS handshake
    return True


def stage(n: int, title: str) -> None:
    print(f"\n[demo {n}] {title}")


def peerings_and_routes(d: Demo) -> None:
    stage(1, "peering states (each side is its own resource, on its own shard)")
    for p in d.topo.peerings:
        got = d.client(p.vpc).get(f"/v1/vpcs/{p.vpc}/peerings/{p.vpc}-{p.peer}")
        print(
            f"    {p.vpc:>6} -> {p.peer:<6} on {d.owner[p.vpc]}: {got['state']:<8} {got['state_details']}"
        )
        d.check(f"{p.vpc} -> {p.peer} is ACTIVE", got["state"] == "ACTIVE")
    vpc = "red"
    print(f"\n    effective routes of VPC {vpc}:")
    routes = d.client(vpc).get(f"/v1/vpcs/{vpc}/routes/effective")["routes"]
    for r in routes:
        note = "" if r.get("imported", True) else f"  not imported: {r.get('reason')}"
        print(f"      {r['prefix']:<16} {r['kind']:<7} origin {r['origin']:<11}{note}")
    origins = {(r["prefix"], r["origin"]) for r in routes if r["installed"]}
    d.check("red imports blue's subnet", ("10.1.0.0/24", "peer:blue") in origins)
    d.check(
        "red imports only green's exported 10.3.0.0/25", ("10.3.0.0/25", "peer:green") in origins
    )


def reachability(d: Demo) -> None:
    stage(2, "connectivity matrix: expected vs observed (one ping per ordered pair)")
    pairs = {(p.src, p.dst): p.reachable for p in matrix(d.plan, skip_deferred=True)}
    names = [v.name for v in d.plan.vms if not v.defer]
    print("    " + " " * 4 + "".join(f"{n:>6}" for n in names))
    wrong = []
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("     -")
                continue
            exp = expect(d.topo, d.ep(a), d.ep(b))
            got = pairs[(a, b)]
            mark = ("ok" if got else "..") + ("" if got == exp.reachable else "!")
            cells.append(f"{mark:>6}")
            if got != exp.reachable:
                wrong.append(
                    f"{a}->{b}: expected {'reachable' if exp.reachable else 'blocked'} ({exp.why})"
                )
        print(f"    {a:>4}" + "".join(cells))
    print("    why: ", end="")
    a = names[0]
    print("; ".join(f"{a}->{b} {expect(d.topo, d.ep(a), d.ep(b)).why}" for b in names[1:]))
    print(
        "         r1->g1 "
        + expect(d.topo, d.ep("r1"), d.ep("g1")).why
        + ", r1->g2 "
        + expect(d.topo, d.ep("r1"), d.ep("g2")).why
    )
    for w in wrong:
        print(f"    mismatch {w}")
    d.check(
        f"all {len(pairs)} cells match own VPC / peered / hidden by policy / not peered", not wrong
    )


def no_proxy(d: Demo) -> None:
    stage(3, "no proxy on the path: Geneve straight from host to host, with the peer's VNI")
    b1, r1 = d.vm("b1"), d.vm("r1")
    src, dst = d.plan.host(b1.host), d.plan.host(r1.host)
    pkts = capture_geneve(d.plan, b1.host, lambda: answers(b1, r1.ip)(), count=2)
    for p in pkts:
        print(f"    {p.src} > {p.dst}  vni {p.vni}")
    out = [p for p in pkts if p.src == src.underlay_ip]
    d.check(
        f"b1 ({b1.host}) -> r1 ({r1.host}) leaves {src.underlay_ip} for {dst.underlay_ip} directly with red's VNI {d.plan.vnis['red']}",
        bool(out) and all(p.dst == dst.underlay_ip and p.vni == d.plan.vnis["red"] for p in out),
    )
    back = [p for p in pkts if p.src == dst.underlay_ip]
    d.check(
        f"the reply comes back directly with blue's VNI {d.plan.vnis['blue']}",
        bool(back) and all(p.vni == d.plan.vnis["blue"] for p in back),
    )


def programming_latency(d: Demo) -> None:
    stage(4, "programming latency: create VM r3 through the REST API, ping it from peered b1")
    r3, b1 = d.vm("r3"), d.vm("b1")
    body = controllers.endpoint_body(d.plan, d.ep("r3"))
    t0 = time.monotonic()
    got = d.client("red").post("/v1/vpcs/red/endpoints?wait=programmed&timeout=10", body)
    programmed = time.monotonic() - t0
    d.check(
        f"created and programmed on every subscribed host in {programmed * 1000:.0f} ms "
        "(?wait=programmed: each OHC reports the stream versions it applied)",
        got["programmed"] is True,
    )
    t1 = time.monotonic()
    ok = answers(b1, r3.ip, wait=1.0)()
    d.check(
        f"b1 ({b1.host}, blue) reaches new r3 ({r3.host}, red) with the first packet "
        f"(first ping answered in {(time.monotonic() - t1) * 1000:.0f} ms)",
        ok,
    )


def peering_delete(d: Demo) -> None:
    stage(5, "one side deletes its peering: blue deletes blue-red")
    pairs = vpc_pairs(d.plan, "blue", "red")
    names = ", ".join(f"{a.name}->{b.name}" for a, b in pairs)
    before = answering(pairs)
    d.check(f"every blue <-> red pair reachable before ({names})", len(before) == len(pairs))
    t0 = time.monotonic()
    d.client("blue").delete("/v1/vpcs/blue/peerings/blue-red")
    # Every pair, same host (b2 and r1 on hv2) and across hosts: none may still forward.
    stopped = until(lambda: not answering(pairs), timeout=10, interval=0.01)
    if d.check(
        f"traffic stopped for all {len(pairs)} blue <-> red pairs, same host and across hosts",
        stopped is not None,
    ):
        print(f"    no pair answered a probe {(time.monotonic() - t0) * 1000:.0f} ms after the "
              "DELETE was sent (each round probes every pair at once, 200 ms wait)")  # fmt: skip
    else:
        print(f"    still answering after 10 s: {', '.join(answering(pairs))}")

    def red_side() -> dict[str, Any]:
        got: dict[str, Any] = d.client("red").get("/v1/vpcs/red/peerings/red-blue")
        return got

    # Red's shard learns of blue's DELETE through its federation stream from blue's shard.
    seen = until(lambda: red_side()["state"] == "INACTIVE", timeout=5, interval=0.01)
    red = red_side()
    print(f"    red's side: {red['state']}: {red['state_details']}")
    d.check(
        f"red's side went INACTIVE ({(seen or 0) * 1000:.0f} ms after the traffic check)",
        seen is not None,
    )
    d.check("blue's own traffic b1 -> b2 unaffected", answers(d.vm("b1"), d.vm("b2").ip)())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description="the meshpeer peering demo")
    p.add_argument("--topology", default="topologies/demo.yaml")
    cli.add_common_options(p)
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    p.add_argument("--plain-http", action="store_true", help="shards serve plain HTTP (no TLS)")
    cli.add_backend_option(p)
    args = p.parse_args(argv)
    topo = cli.load_topology(args.topology)
    print(f"[demo 0] lab up {args.topology} ({args.backend})")
    plan, elapsed = build.fresh(topo, args.lab, tls=not args.plain_http, backend=args.backend)
    demo = Demo(plan, topo)
    try:
        demo.check(
            f"lab up in {elapsed:.2f}s, data plane programmed by the on-host controllers", True
        )
        if plan.tls:
            demo.check(f"shards answer HTTPS only, verified by the lab CA {plan.ca_file}",
                       https_only(plan))  # fmt: skip
        steps: list[Any] = [
            peerings_and_routes,
            reachability,
            no_proxy,
            programming_latency,
            peering_delete,
        ]
        for step in steps:
            try:
                step(demo)
            except Exception as exc:  # one broken stage must not hide the others
                demo.check(f"{step.__name__} ran ({type(exc).__name__}: {exc})", False)
    finally:
        if args.keep:
            lab = f"scripts/lab --lab {args.lab}"
            print(f"\nlab {args.lab!r} left running. Try: {lab} status | {lab} matrix | "
                  f"{lab} exec b1 -- ping 10.2.0.11 | {lab} exec hv1 -- ovs-ofctl "
                  f"-O OpenFlow13 dump-flows br-int | {lab} down")  # fmt: skip
        else:
            t0 = time.monotonic()
            teardown.down(args.lab)
            print(f"\n[demo] lab down in {time.monotonic() - t0:.2f}s (use --keep to leave it up); "
                  f"logs kept in {state.logs_dir(args.lab)}/")  # fmt: skip
    if demo.failures:
        print(f"\ndemo: {len(demo.failures)} observation(s) did not match:", file=sys.stderr)
        for f in demo.failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("\ndemo: every observation matched its expectation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
