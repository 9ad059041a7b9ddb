"""Programming latency: an endpoint created through the REST API until every subscribed host
has it in its switch; a peering deleted until no host forwards between the two VPCs.

Lab: 2 shards, 3 hosts, blue (ctl1) peered with red (ctl2), blue VMs on hv1
(benchmarks/topologies/peered.yaml). Creates --count endpoints in red one by one on hv2/hv3
with `?wait=programmed&timeout=10`: the call returns once every host following a stream the
write changed (hv1 through the peering, hv2 and hv3 for red itself) reported applying it.
The time is from the request's start until it returns. Every --verify-every-th endpoint is
looked for in `ovs-ofctl dump-flows` on hv1 right after its call returned.

Then --cycles times: blue deletes blue-red, timed from the request's start until no host's
br-int holds a flow of a peer kind (cookie kinds PEER_DEST, PEER_ROUTE, PEER_LB: blue-red is
the lab's only peering, so these are exactly the flows that let the two VPCs reach each
other), read with `ovs-ofctl dump-flows` on the three hosts at once; every blue <-> red pair
(b3 and r1 share hv2, the others cross hosts) is then probed and must not answer. Blue then
re-creates it with `?wait=programmed`, and the first packet of every pair must be answered.

    .venv/bin/python benchmarks/programming_latency.py [--count 200] [--cycles 50] [--json PATH] [--plain-http]

Prints a table and writes benchmarks/results/programming_latency.json. Needs root and OVS.
"""

from __future__ import annotations

import argparse
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common

from meshpeer.client import ApiFailure
from meshpeer.lab.plan import HostPlan
from meshpeer.lab.probe import answering, vpc_pairs
from ohc.cookies import KIND_SHIFT, Kind

PEER_KINDS = {Kind.PEER_DEST, Kind.PEER_ROUTE, Kind.PEER_LB}
COOKIE = re.compile(r"cookie=0x([0-9a-f]+)")
PEERING = {"name": "blue-red", "peer_vpc": "red"}


def endpoint(i: int) -> dict[str, Any]:
    """The i-th benchmark endpoint: alternately on hv2 and hv3, in 10.2.1.0 and up."""
    ip = f"10.2.{1 + i // 200}.{10 + i % 200}"
    return {"name": f"p{i}", "kind": "vm", "ip": ip, "host": "hv3" if i % 2 else "hv2"}


def peer_flows(h: HostPlan) -> int:
    """Flows of a peer kind on a host's br-int (by the cookie's kind byte)."""
    kinds = (int(m[1], 16) >> KIND_SHIFT for m in COOKIE.finditer(common.dump_flows(h)))
    return sum(1 for k in kinds if k in PEER_KINDS)


def revocation_cycles(lab: common.Lab, cycles: int, timeout: int) -> dict[str, Any]:
    """Delete and re-create blue-red ``cycles`` times (see the module docstring)."""
    blue = lab.client("blue", timeout=timeout + 20)
    hosts = lab.plan.hosts
    pairs = vpc_pairs(lab.plan, "blue", "red")
    gone_ms: list[float] = []
    delete_ms: list[float] = []
    create_ms: list[float] = []
    still: list[dict[str, Any]] = []
    first_lost: list[dict[str, Any]] = []
    programmed = 0
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:

        def flows_left() -> int:
            return sum(pool.map(peer_flows, hosts))

        assert flows_left() > 0, "blue-red is not programmed to begin with"
        for i in range(cycles):
            t0 = time.monotonic()
            blue.delete("/v1/vpcs/blue/peerings/blue-red")
            delete_ms.append((time.monotonic() - t0) * 1000)
            while flows_left():
                if time.monotonic() - t0 > 30:
                    raise SystemExit(f"cycle {i}: peer flows still installed 30 s after DELETE")
            gone_ms.append((time.monotonic() - t0) * 1000)
            answered = answering(pairs)
            if answered:
                still.append({"cycle": i, "pairs": answered})
            t1 = time.monotonic()
            got = blue.post(f"/v1/vpcs/blue/peerings?wait=programmed&timeout={timeout}", PEERING)
            create_ms.append((time.monotonic() - t1) * 1000)
            programmed += got.get("programmed") is True
            missing = sorted({f"{a.name}->{b.name}" for a, b in pairs} - set(answering(pairs, 1.0)))
            if missing:
                first_lost.append(
                    {"cycle": i, "pairs": missing, "programmed": got.get("programmed")}
                )
            print(f"  cycle {i + 1:3d}: DELETE -> no peer flow {gone_ms[-1]:6.1f} ms, "
                  f"re-create programmed {create_ms[-1]:6.1f} ms", flush=True)  # fmt: skip
    rounded = {k: round(v, 2) if k != "n" else v for k, v in common.summary(gone_ms).items()}
    return {
        "cycles": cycles,
        "pairs": [f"{a.name}->{b.name}" for a, b in pairs],
        "delete_to_no_peer_flow_ms": rounded,
        "delete_request_ms": round(common.percentile(delete_ms, 50), 2),
        "pairs_answering_after_flows_gone": still,
        "recreate_programmed_ms": {
            k: round(v, 2) if k != "n" else v for k, v in common.summary(create_ms).items()
        },
        "recreate_programmed_true": programmed,
        "first_packet_lost_after_recreate": first_lost,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=200, help="endpoints to create one by one")
    p.add_argument("--verify-every", type=int, default=50, help="check hv1's flows every N")
    p.add_argument("--timeout", type=int, default=10, help="?timeout= of each call (seconds)")
    p.add_argument("--cycles", type=int, default=50, help="peering delete/re-create cycles")
    p.add_argument("--lab", default="bplat")
    p.add_argument("--plain-http", action="store_true", help="shards on plain HTTP, not TLS")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args()

    t_start = time.monotonic()
    m = common.machine(args.lab)
    lat: list[float] = []
    programmed: list[bool] = []
    pending: dict[str, int] = {}
    verified: list[dict[str, Any]] = []
    topology = common.topology("peered.yaml")
    with (
        common.LoadSampler() as load,
        common.lab(topology, args.lab, tls=not args.plain_http) as lab,
    ):
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
        print(f"deleting and re-creating blue-red {args.cycles} times ...")
        revocation = revocation_cycles(lab, args.cycles, args.timeout)

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
        "revocation": revocation,
        "machine": m,
        "transport": "http" if args.plain_http else "https",
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
    r, g = revocation, revocation["delete_to_no_peer_flow_ms"]
    print(
        f"\npeering DELETE -> no host holds a peer flow, {r['cycles']} cycles (ms): "
        f"p50 {g['p50']:.1f}, p99 {g['p99']:.1f}, max {g['max']:.1f}; "
        f"pairs answering after that: {len(r['pairs_answering_after_flows_gone'])} cycles"
    )
    c = r["recreate_programmed_ms"]
    print(f"re-create with ?wait=programmed (ms): p50 {c['p50']:.1f}, p99 {c['p99']:.1f}; "
          f"programmed true {r['recreate_programmed_true']}/{r['cycles']}; first packet lost "
          f"in {len(r['first_packet_lost_after_recreate'])} cycles")  # fmt: skip
    common.print_machine(m, result["load_1min_during_run"])
    print(f"benchmark wall time {result['wall_s']} s")
    common.write_json(result, args.json, "programming_latency.json")


if __name__ == "__main__":
    main()
