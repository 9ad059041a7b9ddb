"""Programming latency: an endpoint created through the REST API until every subscribed host
has it in its switch.

Lab: 2 shards, 3 hosts, blue (ctl1) peered with red (ctl2), blue VMs on hv1
(benchmarks/topologies/peered.yaml). Creates --count endpoints in red one by one on hv2/hv3
with `?wait=programmed&timeout=10`: the call returns once every host following a stream the
write changed (hv1 through the peering, hv2 and hv3 for red itself) reported applying it.
The time is from the request's start until it returns. Every --verify-every-th endpoint is
looked for in `ovs-ofctl dump-flows` on hv1 right after its call returned.

    .venv/bin/python benchmarks/programming_latency.py [--count 200] [--json PATH]

Prints a table and writes benchmarks/results/programming_latency.json. Needs root and OVS.
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

import common

from meshpeer.client import ApiFailure


def endpoint(i: int) -> dict[str, Any]:
    """The i-th benchmark endpoint: alternately on hv2 and hv3, in 10.2.1.0 and up."""
    ip = f"10.2.{1 + i // 200}.{10 + i % 200}"
    return {"name": f"p{i}", "kind": "vm", "ip": ip, "host": "hv3" if i % 2 else "hv2"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=200, help="endpoints to create one by one")
    p.add_argument("--verify-every", type=int, default=50, help="check hv1's flows every N")
    p.add_argument("--timeout", type=int, default=10, help="?timeout= of each call (seconds)")
    p.add_argument("--lab", default="bplat")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args()

    t_start = time.monotonic()
    m = common.machine(args.lab)
    lat: list[float] = []
    programmed: list[bool] = []
    pending: dict[str, int] = {}
    verified: list[dict[str, Any]] = []
    with common.LoadSampler() as load, common.lab(common.topology("peered.yaml"), args.lab) as lab:
        red = lab.client("red", timeout=args.timeout + 20)
        hv1 = lab.host("hv1")
        path = f"/v1/vpcs/red/endpoints?wait=programmed&timeout={args.timeout}"
        print(f"creating {args.count} red endpoints one by one with ?wait=programmed ...")
        for i in range(args.count):
            body = endpoint(i)
            t0 = time.monotonic()
            try:
                got = red.post(path, body)
            except ApiFailure as exc:
                raise SystemExit(f"create {body['name']} failed: {exc}") from exc
            lat.append(time.monotonic() - t0)
            programmed.append(got.get("programmed") is True)
            for h in got.get("pending_hosts", []):
                pending[h] = pending.get(h, 0) + 1
            if (i + 1) % args.verify_every == 0 or i == args.count - 1:
                flows = common.dump_flows(hv1)
                found = re.search(rf"nw_dst={re.escape(body['ip'])}[,\s]", flows) is not None
                verified.append({"endpoint": body["name"], "ip": body["ip"], "on_hv1": found})
                print(
                    f"  {i + 1:5d} created, last {lat[-1] * 1000:6.1f} ms, "
                    f"{body['ip']} in hv1's flows: {'yes' if found else 'NO'}",
                    flush=True,
                )
        hv1_status = common.ohc_status(hv1)

    ms = [x * 1000 for x in lat]
    s = common.summary(ms)
    first = ms[: min(50, len(ms))]
    last = ms[-min(50, len(ms)) :]
    result = {
        "benchmark": "programming_latency",
        "topology": "benchmarks/topologies/peered.yaml",
        "count": args.count,
        "timeout_s": args.timeout,
        "latency_ms": {k: round(v, 2) if k != "n" else v for k, v in s.items()},
        "first50_p50_ms": round(common.percentile(first, 50), 2),
        "last50_p50_ms": round(common.percentile(last, 50), 2),
        "programmed_true": sum(programmed),
        "programmed_share": sum(programmed) / len(programmed),
        "pending_hosts_when_not_programmed": pending,
        "verified_on_hv1": verified,
        "hv1_flows_at_end": (hv1_status.get("last_sync") or {}).get("flows"),
        "machine": m,
        "load_1min_during_run": load.result(),
        "wall_s": round(time.monotonic() - t_start, 1),
        "when": common.now_utc(),
    }
    print()
    print(f"programming latency, {args.count} creates, REST call start -> return (ms)")
    print(f"{'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'min':>8} {'programmed':>12}")
    print(
        f"{s['p50']:8.1f} {s['p95']:8.1f} {s['p99']:8.1f} {s['max']:8.1f} {s['min']:8.1f}"
        f" {sum(programmed):5d}/{len(programmed):<6d}"
    )
    print(f"p50 of the first 50: {result['first50_p50_ms']} ms, of the last 50: "
          f"{result['last50_p50_ms']} ms")  # fmt: skip
    ok = sum(v["on_hv1"] for v in verified)
    print(f"verified in hv1's flows: {ok}/{len(verified)} sampled endpoints")
    if pending:
        print(f"hosts still pending when a call returned: {pending}")
    common.print_machine(m, result["load_1min_during_run"])
    print(f"benchmark wall time {result['wall_s']} s")
    common.write_json(result, args.json, "programming_latency.json")


if __name__ == "__main__":
    main()
