"""What benchmarks/gateway_failover.py, gateway_offload.py and gateway_spillover.py share:
their arguments and a lab of tests/e2e/topologies/gateway.yaml (or another topology there)
with ``--runs`` runs in it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import common

from tests.integration.labkit import E2E_TOPOLOGIES

TOPOLOGY = "tests/e2e/topologies/gateway.yaml"


def run(
    doc: str,
    what: str,
    lab_name: str,
    one_run: Callable[[common.Lab], dict[str, Any]],
    setup: Callable[[common.Lab], None] = lambda lab: None,
    topology: str = "gateway.yaml",
) -> tuple[argparse.Namespace, list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """Parse ``--runs/--lab/--json``; on a fresh lab, ``setup`` then ``one_run`` ``--runs``
    times. Returns the arguments, the runs, the machine and the load during them. The lab's logs
    are copied to ``MESHPEER_BENCH_LOGS`` (default /tmp/meshpeer-bench-logs/<lab>)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help=f"{what}, one after another")
    p.add_argument("--lab", default=lab_name, help="the lab's name")
    p.add_argument("--json", help="where to write the results (default: benchmarks/results)")
    args = p.parse_args()
    # the lab's controller, OHC and OVS logs outlive it (a slow run can be explained after)
    logs = os.environ.setdefault("MESHPEER_BENCH_LOGS", f"/tmp/meshpeer-bench-logs/{args.lab}")
    print(f"  [lab {args.lab}] its logs are copied to {logs} before it goes down")
    m = common.machine(args.lab)
    topo = os.path.join(E2E_TOPOLOGIES, topology)
    with common.LoadSampler() as load, common.lab(topo, args.lab) as lab:
        setup(lab)
        runs = [one_run(lab) for _ in range(args.runs)]
    return args, runs, m, load.result()


def write(
    args: argparse.Namespace,
    name: str,
    result: dict[str, Any],
    machine: dict[str, Any],
    load: dict[str, float],
    topology: str = TOPOLOGY,
) -> None:
    """Print the machine, and write benchmarks/results/<name>.json (or ``--json``)."""
    common.print_machine(machine, load)
    doc = {"benchmark": name, "topology": topology, **result, "machine": machine, "load": load}
    common.write_json(doc, args.json, f"{name}.json")


def table(title: str, columns: list[tuple[str, str, str]], runs: list[dict[str, Any]]) -> None:
    """Print ``runs`` under ``title``: one column per (heading, key, format spec)."""
    print(f"\n{title}")
    print(" ".join(f"{h:>12}" for h, _, _ in columns))
    for r in runs:
        print(" ".join(f"{format(r[k], spec):>12}" for _, k, spec in columns))
