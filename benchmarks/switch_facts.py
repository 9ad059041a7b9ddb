"""What the switch itself costs: 10k flows into a lab br-int, with and without a bundle.

The OHC's design leans on these facts (docs/lab.md "The switch's own speed"; docs/flowsync.md):
a bundle is the fast way in, OpenFlow 1.3's ONF bundle is about as fast as OpenFlow 1.4's, and
reading 10k flows back is cheap for the switch. Measured with `ovs-ofctl` (C, no Python), so the
numbers are the switch's, not the OHC's; each case starts from an empty table.

Cases, each --runs times interleaved, median and max reported:
  of13_onf_bundle   ovs-ofctl -O OpenFlow13 --bundle add-flows   (the OHC's message kind)
  of14_bundle       ovs-ofctl -O OpenFlow14 --bundle add-flows
  of13_no_bundle    ovs-ofctl -O OpenFlow13 add-flows            (one FlowMod each, no commit)
  of13_dump         ovs-ofctl -O OpenFlow13 dump-flows           (10k installed)
  of14_dump         ovs-ofctl -O OpenFlow14 dump-flows

    .venv/bin/python benchmarks/switch_facts.py [--flows 10000] [--runs 5] [--json PATH]

Prints a table and writes benchmarks/results/switch_facts.json. Needs root and OVS; run it
under the lab lock (flock /tmp/meshpeer-lab.lock ...).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import common

from meshpeer.lab import ovs
from meshpeer.lab.plan import HostPlan
from meshpeer.lab.sh import run

ADD_CASES = {
    "of13_onf_bundle": ["-O", "OpenFlow13", "--bundle", "add-flows"],
    "of14_bundle": ["-O", "OpenFlow14", "--bundle", "add-flows"],
    "of13_no_bundle": ["-O", "OpenFlow13", "add-flows"],
}
DUMP_CASES = {
    "of13_dump": ["-O", "OpenFlow13", "dump-flows"],
    "of14_dump": ["-O", "OpenFlow14", "dump-flows"],
}


def flows_text(n: int) -> str:
    """``n`` flows shaped like the OHC's peer destinations (table 30: VNI + destination IP,
    set the tunnel key and remote, out of the tunnel port)."""
    lines = []
    for i in range(n):
        ip = f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"
        lines.append(
            f"table=30,priority=900,ip,metadata=0x7,nw_dst={ip},"
            f"actions=set_field:0x8->tun_id,set_field:192.0.2.{1 + i % 250}->tun_dst,output:1"
        )
    return "\n".join(lines) + "\n"


def timed(h: HostPlan, args: list[str], *rest: str) -> float:
    t0 = time.monotonic()
    run(["ovs-ofctl", *args, ovs.bridge_mgmt(h), *rest], env=ovs.env(h), timeout=120)
    return time.monotonic() - t0


def installed(h: HostPlan) -> int:
    return sum(
        1 for line in ovs.ofctl(h, "dump-flows", "--no-stats").splitlines() if "table=30" in line
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--flows", type=int, default=10000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--lab", default="swfact")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    times: dict[str, list[float]] = {k: [] for k in (*ADD_CASES, *DUMP_CASES)}
    with (
        common.LoadSampler() as load,
        common.lab(common.topology("baseline.yaml"), args.lab, quiet=True) as lab,
        tempfile.NamedTemporaryFile("w", suffix=".flows") as f,
    ):
        m = common.machine(args.lab)
        h = lab.host("hv1")
        f.write(flows_text(args.flows))
        f.flush()
        for _ in range(args.runs):
            for case, ofargs in ADD_CASES.items():
                ovs.ofctl(h, "del-flows")
                times[case].append(timed(h, ofargs, f.name))
                if installed(h) != args.flows:
                    raise SystemExit(f"{case}: {installed(h)} flows installed, not {args.flows}")
                if case == "of13_onf_bundle":  # 10k installed: time the read-backs
                    for dump, dargs in DUMP_CASES.items():
                        times[dump].append(timed(h, dargs))
        ovs.ofctl(h, "del-flows")
    result: dict[str, Any] = {
        "flows": args.flows,
        "runs": args.runs,
        "cases_s": {
            k: {"median": round(statistics.median(v), 4), "max": round(max(v), 4)}
            for k, v in times.items()
        },
        "machine": m,
        "load_1min": load.result(),
        "when": common.now_utc(),
    }
    common.print_machine(m, load.result())
    print(f"{args.flows} flows into a lab br-int (userspace datapath), {args.runs} runs")
    for k, v in result["cases_s"].items():
        print(f"  {k:16} median {v['median']:7.3f} s   max {v['max']:7.3f} s")
    common.write_json(result, args.json, os.path.basename(__file__).replace(".py", ".json"))


if __name__ == "__main__":
    main()
