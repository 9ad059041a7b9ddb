"""scripts/demo until the controllers and OHCs exist: bring up the sample lab and prove it.

Each stage prints what it expected and what it saw; the exit code is 0 only if all matched.
"""

from __future__ import annotations

import argparse
import sys
import time

from meshpeer.lab import build, cli, ovs, teardown
from meshpeer.lab.handflows import tunnel_flows
from meshpeer.lab.matrix import matrix, ping, render
from meshpeer.lab.plan import LabPlan, VmPlan, family


class Demo:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, what: str, ok: bool) -> None:
        print(f"    [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)


def stage(n: int, title: str) -> None:
    print(f"\n[demo {n}] {title}")


def pick_pair(plan: LabPlan) -> tuple[VmPlan, VmPlan] | None:
    for a in plan.vms:
        for b in plan.vms:
            if a.vpc == b.vpc and a.host != b.host and family(a.ip) == family(b.ip):
                return a, b
    return None


def run_demo(plan: LabPlan, demo: Demo) -> None:
    stage(2, "status: every host runs its own ovsdb-server and ovs-vswitchd")
    cli.cmd_status(argparse.Namespace(lab=plan.lab, json=False))
    demo.check("every host's OVS is running", all(len(ovs.pids(h)) == 2 for h in plan.hosts))

    stage(3, "matrix before any flows: br-int is fail_mode=secure, so nothing passes")
    pairs = matrix(plan)
    print(render(plan, pairs))
    demo.check("no pair reachable without flows", not any(p.reachable for p in pairs))

    stage(4, "plumbing: hand-written flows between two VMs of one VPC on different hosts")
    pick = pick_pair(plan)
    if pick is None:
        print("    (topology has no same-VPC pair across hosts: skipped)")
        return
    a, b = pick
    for h in plan.hosts:
        flows = tunnel_flows(plan, h.name, [(a.name, b.name), (b.name, a.name)])
        ovs.ofctl(h, "add-flows", "-", stdin="\n".join(flows) + "\n")
    ok = ping(a, b.ip, count=3)
    demo.check(f"{a.name} ({a.host}) -> {b.name} ({b.host}) ping over Geneve", ok)
    others = [v for v in plan.vms if v.vpc != a.vpc and family(v.ip) == family(a.ip)]
    if others:
        demo.check(
            f"{a.name} -> {others[0].name} still dropped (no flow)", not ping(a, others[0].ip)
        )
    for h in plan.hosts:
        ovs.ofctl(h, "del-flows")
    print("    test flows removed; the on-host controller (issue 4) will program real ones")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo", description="bring up the sample lab and show it")
    p.add_argument("--topology", default="topologies/sample.yaml")
    p.add_argument("--lab", default=cli.DEFAULT_LAB)
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    args = p.parse_args(argv)
    demo = Demo()
    stage(1, f"lab up {args.topology}")
    topo = cli.load_topology(args.topology)
    plan, elapsed = build.fresh(topo, args.lab)
    try:
        demo.check(f"lab up in {elapsed:.2f}s", True)
        run_demo(plan, demo)
    finally:
        if args.keep:
            print(f"\nlab {args.lab!r} left running. Try: scripts/lab status | matrix | "
                  f"exec b1 -- ping 10.1.0.12 | exec hv1 -- ovs-ofctl dump-flows br-int | down")  # fmt: skip
        else:
            t0 = time.monotonic()
            teardown.down(args.lab)
            print(f"\n[demo] lab down in {time.monotonic() - t0:.2f}s (use --keep to leave it up)")
    if demo.failures:
        print(f"\ndemo: {len(demo.failures)} observation(s) did not match:", file=sys.stderr)
        for f in demo.failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("\ndemo: every observation matched its expectation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
