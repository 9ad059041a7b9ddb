"""Overload shift: the share of new connections served by the peer's backend before, while and
after the local backend is loaded (issue 14, FIG. 8; docs/gateways.md "Overload shift").

On tests/e2e/topologies/spillover.yaml: ILB lb (10.2.0.100) in red, local backend r1 (hv2),
spillover backend b1 in blue (hv3), client rc (red, hv1). Per run: ``--connections`` TCP
connections from rc (each answered with the backend's name); then a UDP stream from rc at
600 pps (above ``[ohc] spillover_high_pps``, 200 per local backend), and, once hv1's OHC put
b1 in the ILB's select group, the same connections again; then the stream stops and, once b1
left the group (``spillover_hold_s``, 10 s, under ``spillover_low_pps``), once more. Prints a
table and writes benchmarks/results/gateway_spillover.json. Needs root and OVS.
    .venv/bin/python benchmarks/gateway_spillover.py [--runs 3]
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from typing import Any

import common
import gateway_bench

from meshpeer.lab import ovs
from tests.e2e.test_ilb_e2e import Server
from tests.e2e.test_spillover_e2e import (
    LOAD,
    LOAD_PPS,
    UDP_PORT,
    UDP_SERVER,
    VIP,
    batch,
    buckets,
    spawn,
    timed_wait,
)
from tests.integration import labkit

CONNECTIONS = 40
TOPOLOGY = "tests/e2e/topologies/spillover.yaml"


def peer_share(lab: labkit.Lab) -> float:
    """The share of ``CONNECTIONS`` new connections b1 (the peer's backend) answered."""
    got = batch(lab, CONNECTIONS)
    return round(got["b1"] / sum(got.values()), 3)


def group_share(lab: labkit.Lab) -> float:
    """The share hv1's OHC decided, read off its select group for the ILB: the second
    bucket's weight (b1's: the local buckets come first) over the sum."""
    groups = ovs.ofctl(lab.host("hv1"), "dump-groups")
    line = max(groups.splitlines(), key=lambda g: g.count("bucket="))
    weights = [int(w) for w in re.findall(r"weight:(\d+)", line)]
    return round(weights[1] / sum(weights), 3) if len(weights) == 2 else 0.0


def one_run(bench: common.Lab) -> dict[str, Any]:
    lab = labkit.Lab(bench.name, bench.plan)
    timed_wait("b1 out of hv1's group", lambda: buckets(lab) == 1, 90)
    before = peer_share(lab)
    load = spawn(lab, "rc", LOAD, VIP, str(UDP_PORT), str(LOAD_PPS))
    t0, started_at = time.monotonic(), time.time()  # wall clock: to find the run in the logs
    try:
        shift_s = timed_wait("b1 in hv1's group", lambda: buckets(lab) == 2, 60)
        time.sleep(2.5)  # two more readings of the stream alone (not a check: a sample point)
        decided = group_share(lab)
        during = peer_share(lab)
        decided_after = group_share(lab)  # with the 40 connections' packets in the demand
    finally:
        load.send_signal(signal.SIGINT)
        out, _ = load.communicate(timeout=10)
    loaded_s = time.monotonic() - t0
    stream = json.loads(out.strip().splitlines()[-1])
    back_s = timed_wait("b1 out of hv1's group", lambda: buckets(lab) == 1, 90)
    after = peer_share(lab)
    return {
        "peer_share_before": before,
        "peer_share_during": during,
        "peer_share_after": after,
        "decided_share": decided,
        "decided_share_after_batch": decided_after,
        "shift_s": round(shift_s, 1),
        "back_s": round(back_s, 1),
        "stream_pps": round(stream["sent"] / loaded_s),
        "stream_on_local_only": set(stream["names"]) == {"r1"},
        "load_started_at": round(started_at, 3),
    }


STARTED: list[subprocess.Popen[str]] = []  # the backends' servers, ended after the runs


def servers(bench: common.Lab) -> None:
    lab = labkit.Lab(bench.name, bench.plan)
    for vm in ("r1", "b1"):
        STARTED.append(Server(lab, vm).proc)
        STARTED.append(spawn(lab, vm, UDP_SERVER, vm, str(UDP_PORT)))


def main() -> None:
    try:
        args, runs, m, load = gateway_bench.run(
            __doc__ or "", "runs", "bgws", one_run, setup=servers, topology="spillover.yaml"
        )
    finally:
        for proc in STARTED:
            proc.kill()
            proc.wait()
    title = f"rc (hv1) -> ILB, {CONNECTIONS} connections per phase; load: UDP at {LOAD_PPS} pps"
    columns = [("before", "peer_share_before", ".2f"), ("during", "peer_share_during", ".2f")]
    columns += [("after", "peer_share_after", ".2f"), ("decided", "decided_share", ".2f")]
    columns += [("decided+batch", "decided_share_after_batch", ".2f")]
    columns += [("shift s", "shift_s", "")]
    columns += [("back s", "back_s", ""), ("stream pps", "stream_pps", "")]
    columns += [("stream local", "stream_on_local_only", "")]
    gateway_bench.table(title, columns, runs)
    result = {
        "connections_per_phase": CONNECTIONS,
        "load_pps": LOAD_PPS,
        "spillover": {"high_pps": 200.0, "low_pps": 100.0, "hold_s": 10.0, "max_share": 80},
        "runs": runs,
        "peer_share": {
            phase: common.summary([r[f"peer_share_{phase}"] for r in runs])
            for phase in ("before", "during", "after")
        },
        "shift_s": common.summary([r["shift_s"] for r in runs]),
        "back_s": common.summary([r["back_s"] for r in runs]),
    }
    gateway_bench.write(args, "gateway_spillover", result, m, load, TOPOLOGY)


if __name__ == "__main__":
    main()
