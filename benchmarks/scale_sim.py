"""Control-plane scale simulation (issue 5): simulated hosts on the real protocol, no OVS.

Starts ``--shards`` real controller processes on 127.0.0.1, creates the scenario of
benchmarks/sim/scenario.py (VPCs, peerings with a few export policies, hosts, endpoints), then
runs simulated hosts in eventlet subprocesses (benchmarks/sim/simulator.py: a real
``ohc.agent.Agent`` per host on ``ohc.clients.Channels``, one channel per host and shard, no
OVS) and reports:

- the per-write cost (in process, with cProfile's hot functions, and REST create latency);
- convergence time of every host, controller CPU and RSS per phase;
- bytes and objects each host received vs the full state (the "limited information" claim);
- service sets published vs peerings (``GET /v1/multiplexer``: the multiplexer claim);
- add-endpoint fan-out latency: REST call start until every host that must receive the new
  endpoint has it in a destination replica (p50/p99 over ``--creates``);
- connections the hosts hold (``connections.total``) and the shards' idle CPU with every host
  connected at ``--heartbeat`` (``keepalive_cpu_core_fraction``).

    .venv/bin/python benchmarks/scale_sim.py --hosts 50 --vpcs 10 --endpoints 1000
    .venv/bin/python benchmarks/scale_sim.py --preset medium --json

Everything runs over TLS as in the lab (a CA made for the run, a certificate per shard, each
shard on its own loopback address, which its clients verify; ``--plain-http``: plain HTTP),
and each simulated host presents its own host credential, as an OHC does.

Results are merged into benchmarks/results/scale_sim.json under a label (hosts/vpcs/endpoints).
Numbers only: nothing here asserts a time. See docs/benchmarks_scale.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from meshpeer import tls

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import refresh_cost
from sim.cluster import ROOT, Cluster, Ctl
from sim.scenario import Ep, Scenario, Sizes, build

PRESETS = {
    "small": (50, 10, 1000),
    "medium": (200, 50, 5000),
    "large": (1000, 100, 20000),
}
FD_BUDGET = 15000  # streams per simulator process (the hard fd limit here is 20000)
RESULTS = ROOT / "benchmarks" / "results" / "scale_sim.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "min": min(values),
        "p50": pct(values, 0.5),
        "p99": pct(values, 0.99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def source_fingerprint() -> str:
    """Hash of the controller and streaming sources actually imported (others edit them)."""
    import meshpeer

    base = Path(meshpeer.__file__).parent
    h = hashlib.sha256()
    for sub in ("controller", "streaming", "protocol", "rest"):
        for f in sorted((base / sub).glob("*.py")):
            h.update(f.read_bytes())
    return f"{base}:{h.hexdigest()[:12]}"


# --- REST loading -----------------------------------------------------------------------------


def _call(cluster: Cluster, shard: str, method: str, path: str, body: Any) -> tuple[float, float]:
    """(latency, completion time) of one call."""
    t0 = time.perf_counter()
    status, reply = cluster.ctls[shard].client().request(method, path, body)
    if not 200 <= status < 300 and status != 409:  # 409: already there (a retried run)
        raise RuntimeError(f"{method} {path} on {shard} -> {status}: {reply}")
    t1 = time.perf_counter()
    return t1 - t0, t1


def rest_phase(
    cluster: Cluster, calls: list[tuple[str, str, str, Any]], workers: int
) -> dict[str, Any]:
    """Run calls (shard, method, path, body) on a thread pool.

    Latency includes queueing behind the other workers' calls (a shard serves one write at a
    time); ``ms_per_write_by_decile`` is the service time: wall time per completed call, for
    each tenth of the calls in completion order, i.e. the cost of a write as the shard grows.
    """
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda c: _call(cluster, *c), calls))
    wall = time.perf_counter() - t0
    lat = [d[0] for d in done]
    out: dict[str, Any] = {"calls": len(calls), "wall_s": wall, "per_s": len(calls) / wall}
    out["latency_ms"] = {k: v * 1e3 for k, v in summary(lat).items() if k != "n"}
    ends = sorted([t0] + [d[1] for d in done])
    if len(calls) >= 10:
        tenth = len(calls) // 10
        out["ms_per_write_by_decile"] = [
            round((ends[(i + 1) * tenth] - ends[i * tenth]) / tenth * 1e3, 2) for i in range(10)
        ]
    return out


def load_rest(cluster: Cluster, workers: int) -> dict[str, Any]:
    sc = cluster.scenario
    phases: dict[str, Any] = {}
    vpcs = [
        (sc.shard_of[v], "POST", "/v1/vpcs", {"name": v, "subnets": [{"cidr": sc.subnet(v)}]})
        for v in sc.vpcs
    ]
    phases["vpcs"] = rest_phase(cluster, vpcs, workers)
    hosts = [
        (s, "PUT", f"/v1/hosts/{h}", {"underlay_ip": sc.underlay(i)})
        for i, h in enumerate(sc.hosts)
        for s in sc.shards
    ]
    phases["hosts"] = rest_phase(cluster, hosts, workers)
    peerings = [
        (
            sc.shard_of[v],
            "POST",
            f"/v1/vpcs/{v}/peerings",
            {"name": f"to-{p}", "peer_vpc": p, "export": sc.export_of(v, p)},
        )
        for v in sc.vpcs
        for p in sc.peers[v]
    ]
    phases["peerings"] = rest_phase(cluster, peerings, workers)
    eps = [(sc.shard_of[e.vpc], "POST", *endpoint_call(e)) for e in sc.endpoints]
    phases["endpoints"] = rest_phase(cluster, eps, workers)
    return phases


def endpoint_call(e: Ep) -> tuple[str, dict[str, Any]]:
    return f"/v1/vpcs/{e.vpc}/endpoints", {"name": e.name, "ip": e.ip, "host": e.host}


def wait_active(cluster: Cluster, timeout: float) -> dict[str, Any]:
    sc = cluster.scenario
    total = sum(len(sc.peers[v]) for v in sc.vpcs)
    t0 = time.monotonic()
    while True:
        mux = {n: c.client().get("/v1/multiplexer") for n, c in cluster.ctls.items()}
        active = sum(m["active_peerings"] for m in mux.values())
        if active >= total or time.monotonic() - t0 > timeout:
            return {"active": active, "peerings": total, "wait_s": time.monotonic() - t0}
        time.sleep(0.2)


def multiplexer(cluster: Cluster) -> dict[str, Any]:
    per = {}
    for n, c in cluster.ctls.items():
        m = c.client().get("/v1/multiplexer")
        per[n] = {
            k: m.get(k)
            for k in ("service_sets", "services_published", "active_peerings", "peerings")
        }
        per[n]["streams"] = m.get("streams")
        per[n]["subscribers"] = sum((m.get("subscribers") or {}).values())
    tot = {k: sum(p[k] or 0 for p in per.values()) for k in next(iter(per.values()))}
    tot["services_if_per_peering"] = 3 * (tot["active_peerings"] or 0)
    return {"per_shard": per, "total": tot}


# --- full state -----------------------------------------------------------------------------


def snapshot(ctl: Ctl, token: str, service: str, key: str) -> tuple[int, dict[str, Any]]:
    """A stream's first message: its length in bytes, and its objects."""
    conn: http.client.HTTPConnection
    if ctl.tls:
        context = tls.client_context(ctl.ca_file)
        conn = http.client.HTTPSConnection(ctl.address, ctl.port, timeout=60, context=context)
    else:
        conn = http.client.HTTPConnection(ctl.address, ctl.port, timeout=60)
    try:
        q = urllib.parse.urlencode({"service": service, "key": key})
        conn.request("GET", f"/v1/subscribe?{q}", headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        line = resp.readline()
        msg = json.loads(line)
        return len(line), dict(msg.get("objects", {}))
    finally:
        conn.close()


def in_line(key: str, obj: Any) -> int:
    """Bytes ``"key":{...},`` takes in a snapshot line (the codec's compact, sorted JSON)."""
    return len(json.dumps({key: obj}, separators=(",", ":"), sort_keys=True)) - 1


VPC_SERVICES = ("destination", "forwarding", "loadbalancer")


def full_state(cluster: Cluster) -> tuple[dict[str, Any], dict[str, int]]:
    """Every object of every VPC service (destination, forwarding, loadbalancer), unfiltered;
    and the bytes each host needs of them (``needed_bytes``)."""
    sc = cluster.scenario
    nbytes = objects = 0
    dest: dict[tuple[str, str], int] = {}  # (VPC, IP) -> bytes of its destination object
    rest: dict[str, int] = {}  # VPC -> bytes of its routes and load balancers
    for v in sc.vpcs:
        ctl = cluster.ctls[sc.shard_of[v]]
        for service in VPC_SERVICES:
            b, objs = snapshot(ctl, cluster.token, service, v)
            nbytes += b
            objects += len(objs)
            for k, o in objs.items():
                if service == "destination":
                    dest[(v, o["ip"])] = in_line(k, o)
                else:
                    rest[v] = rest.get(v, 0) + in_line(k, o)
    needed = {h: needed_bytes(sc, h, dest, rest) for h in sc.hosts}
    return {"bytes": nbytes, "objects": objects}, needed


def needed_bytes(
    sc: Scenario, host: str, dest: dict[tuple[str, str], int], rest: dict[str, int]
) -> int:
    """The bytes of the objects ``host`` needs (``Scenario.needed``, from the topology), each
    counted once. A peer's routes and load balancers are counted whole (what its export
    policy leaves out of them is not modelled: a few objects per VPC)."""
    dests, vpcs = sc.needed(host)
    return sum(dest.get(d, 0) for d in dests) + sum(rest.get(v, 0) for v in vpcs)


# --- simulators -----------------------------------------------------------------------------


class Sims:
    """Simulator subprocesses; hosts are split so each stays under the fd budget."""

    def __init__(
        self, cluster: Cluster, procs: int, heartbeat_timeout: float, max_connecting: int
    ) -> None:
        sc = cluster.scenario
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []
        groups: list[list[str]] = [[] for _ in range(procs)]
        for i, h in enumerate(sc.hosts):
            groups[i % procs].append(h)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH"), str(ROOT), str(ROOT / "benchmarks")) if p
        )
        for i, hosts in enumerate(groups):
            conf = cluster.workdir / f"sim{i}.json"
            conf.write_text(
                json.dumps(
                    {
                        "hosts": hosts,
                        "directory_file": str(cluster.directory_file),
                        "credentials": {h: cluster.host_token(h) for h in hosts},
                        "ca_file": cluster.ca_file,
                        "heartbeat_timeout": heartbeat_timeout,
                        "max_connecting": max_connecting,
                    }
                )
            )
            err = (cluster.workdir / f"sim{i}.err").open("ab")
            p = subprocess.Popen(
                [sys.executable, "-m", "sim.simulator", str(conf)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
            self.procs.append(p)
            self.pids.append(p.pid)

    def ask(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        line = (json.dumps(cmd) + "\n").encode()
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(line)
            p.stdin.flush()
        out = []
        for p in self.procs:
            assert p.stdout is not None
            reply = p.stdout.readline()
            if not reply:
                raise RuntimeError(f"simulator {p.pid} exited ({p.poll()})")
            out.append(json.loads(reply))
        return out

    def merged(self, cmd: dict[str, Any], key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.ask(cmd):
            for k, v in r[key].items():
                if isinstance(v, dict) and k in out:
                    out[k].update(v)
                else:
                    out[k] = v
        return out

    def stop(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.ask({"cmd": "stop"})
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def proc_stats(pids: list[int]) -> dict[str, float]:
    from sim.cluster import proc_stat

    tot = {"cpu_s": 0.0, "rss_mib": 0.0, "hwm_mib": 0.0}
    for pid in pids:
        try:
            st = proc_stat(pid)
        except OSError:
            continue
        for k in tot:
            tot[k] += st[k]
    return tot


def converge(sims: Sims, sc: Scenario, timeout: float) -> dict[str, Any]:
    expected = {h: sc.streams_of(h) for h in sc.hosts}
    t0 = time.monotonic()
    last_log = 0.0
    while True:
        st = sims.merged({"cmd": "status"}, "hosts")
        done = sum(1 for h, (n, ready) in st.items() if n == expected[h] and ready == n)
        streams = sum(n for n, _ in st.values())
        ready = sum(r for _, r in st.values())
        el = time.monotonic() - t0
        if done == len(expected) or el > timeout:
            errors = sims.merged({"cmd": "status"}, "errors")
            return {
                "hosts_converged": done,
                "hosts": len(expected),
                "streams_expected": sum(expected.values()),
                "streams_followed": streams,
                "streams_ready": ready,
                "converge_s": el,
                "timed_out": done != len(expected),
                "stream_errors": errors,
            }
        if el - last_log > 10:
            last_log = el
            log(f"  converging: {done}/{len(expected)} hosts, {ready}/{streams} streams ready")
        time.sleep(0.5)


def received(sims: Sims, full: dict[str, Any], needed: dict[str, int]) -> dict[str, Any]:
    per = sims.merged({"cmd": "received"}, "received")
    # what each host received of the VPC services over what it needs of them (the oracle)
    over = [
        sum(b for svc, (b, _o) in r["by_service"].items() if svc in VPC_SERVICES)
        / max(needed[host], 1)
        for host, r in per.items()
    ]
    nbytes = [float(r["bytes"]) for r in per.values()]
    objs = [float(r["objects"]) for r in per.values()]
    by_service: dict[str, list[float]] = {}
    for r in per.values():
        for svc, (b, _o) in r["by_service"].items():
            by_service.setdefault(svc, []).append(b)
    return {
        "bytes_per_host": _mmm(nbytes),
        "objects_per_host": _mmm(objs),
        "full_state": full,
        "bytes_ratio_median": statistics.median(nbytes) / max(full["bytes"], 1),
        "bytes_ratio_max": max(nbytes) / max(full["bytes"], 1),
        "objects_ratio_median": statistics.median(objs) / max(full["objects"], 1),
        "objects_ratio_max": max(objs) / max(full["objects"], 1),
        "median_bytes_by_service": {k: statistics.median(v) for k, v in sorted(by_service.items())},
        "reconnects": sum(r["reconnects"] for r in per.values()),
        "bytes_over_needed_median": statistics.median(over),
        "bytes_over_needed_max": max(over),
    }


def connections(sims: Sims, sc: Scenario) -> dict[str, Any]:
    """The simulated hosts' connections now: sockets their processes hold (each one a
    connection to a shard) and what their channels count."""
    per = sims.ask({"cmd": "connections"})
    total = {k: sum(p[k] for p in per) for k in per[0]}
    reached = len(sc.hosts) * len(sc.shards)  # every host follows every shard's endpoint stream
    return {
        "total": total["sockets"],
        "per": "channel (one per host and shard) + its control connection",
        "hosts_x_shards": reached,
        "limit": 2 * reached,
        "channels": total["channels"],
        "channel_sockets": total["channel_sockets"],
        "channel_connects": total["channel_connects"],
    }


def _mmm(v: list[float]) -> dict[str, float]:
    return {"min": min(v), "median": statistics.median(v), "max": max(v)}


def fanout(cluster: Cluster, sims: Sims, creates: int, timeout: float) -> dict[str, Any]:
    """Create endpoints one at a time; time until every expected host has each one."""
    sc = cluster.scenario
    plan = []
    for i in range(creates):
        v = sc.vpcs[i % len(sc.vpcs)]
        plan.append(sc.new_endpoint(v, f"fan{i:05d}", i))
    sims.ask({"cmd": "watch", "ids": [f"{e.vpc}/{e.name}" for e in plan]})
    all_hosts: list[float] = []
    per_host: list[float] = []
    rest: list[float] = []
    missing = 0
    recipients = []
    for e in plan:
        ident = f"{e.vpc}/{e.name}"
        expected = sc.recipients(e.vpc, e.ip)
        recipients.append(len(expected))
        path, body = endpoint_call(e)
        t0 = time.time()
        status, reply = cluster.ctls[sc.shard_of[e.vpc]].client().request("POST", path, body)
        rest.append(time.time() - t0)
        if status != 201:
            raise RuntimeError(f"POST {path} -> {status}: {reply}")
        deadline = time.monotonic() + timeout
        while True:
            got = sims.merged({"cmd": "arrivals", "ids": [ident]}, "arrivals").get(ident, {})
            if expected <= set(got) or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        times = [got[h] - t0 for h in expected if h in got]
        missing += len(expected) - len(times)
        per_host += times
        if len(times) == len(expected):
            all_hosts.append(max(times))
    ms = 1e3
    return {
        "creates": creates,
        "recipients_per_create": _mmm([float(r) for r in recipients]),
        "all_hosts_ms": {k: v * ms for k, v in summary(all_hosts).items() if k != "n"},
        "per_host_ms": {k: v * ms for k, v in summary(per_host).items() if k != "n"},
        "rest_create_ms": {k: v * ms for k, v in summary(rest).items() if k != "n"},
        "complete": len(all_hosts),
        "deliveries_missing": missing,
    }


# --- one run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    sc = build(sizes)
    label = f"{sizes.hosts}h/{sizes.vpcs}v/{sizes.endpoints}e"
    t_run = time.monotonic()
    result: dict[str, Any] = {"label": label, "sizes": sizes.__dict__}
    streams = sum(sc.streams_of(h) for h in sc.hosts)
    result["expected_streams"] = streams
    procs = args.sim_procs or max(1, math.ceil(streams / FD_BUDGET))
    load = args.load
    if load == "auto":
        load = "rest" if sizes.endpoints <= args.rest_max else "store"
    result["load"] = load
    result["wsgi_max_size"] = args.wsgi_max or "the shard's defaults"
    log(f"{label}: {streams} streams expected over {procs} simulator process(es), load={load}")
    workdir = Path(tempfile.mkdtemp(prefix="scale_sim-"))
    result["workdir"] = str(workdir)
    cluster = Cluster(workdir, sc, args.wsgi_max, heartbeat=args.heartbeat, tls=not args.plain_http)
    result["tls"] = cluster.tls
    result["host_credentials"] = "each host its own"
    cluster.write()
    if args.inproc_only or not args.no_inproc:
        log("in-process per-write cost (ShardState.commit with cProfile)")
        cost = refresh_cost.measure(cluster, writes=args.inproc_writes)
        (workdir / "pstats.txt").write_text(cost.pop("pstats_tottime"))
        result["per_write_inproc"] = cost
        log(
            f"  commit {cost['commit_ms']:.1f} ms/write, first refresh {cost['first_refresh_s']:.2f} s"
        )
    if args.inproc_only:
        result["run_s"] = time.monotonic() - t_run
        return result
    sims: Sims | None = None
    try:
        if load == "store":
            t0 = time.monotonic()
            cluster.preload()
            result["preload_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        cluster.start()
        result["startup_s"] = time.monotonic() - t0
        base = cluster.stats()
        if load == "rest":
            log("creating the scenario through the REST API")
            result["rest_load"] = load_rest(cluster, args.workers)
            ep = result["rest_load"]["endpoints"]
            log(
                f"  endpoints: {ep['per_s']:.1f}/s, ms/write by decile {ep.get('ms_per_write_by_decile')}"
            )
        result["active"] = wait_active(cluster, 120)
        after_load = cluster.stats()
        result["full_state"], needed = full_state(cluster)
        log(f"full state: {result['full_state']}; starting simulated hosts")
        sims = Sims(
            cluster, procs, args.sim_heartbeat_timeout or args.heartbeat * 3, args.sim_connecting
        )
        result["sim_procs"] = procs
        result["sim_max_connecting"] = args.sim_connecting
        result["sim_heartbeat_timeout"] = args.sim_heartbeat_timeout or args.heartbeat * 3
        result["convergence"] = converge(sims, sc, args.converge_timeout)
        c = result["convergence"]
        log(f"  converged {c['hosts_converged']}/{c['hosts']} hosts in {c['converge_s']:.1f} s")
        # issue 11's figures: the simulated hosts' connections to the shards (every socket
        # their processes hold, counted by the kernel's fd table: one channel per host and
        # shard plus its control requests' kept-alive connection), against the target of
        # 2 x hosts x shards reached; and the heartbeat they run at
        result["connections"] = connections(sims, sc)
        result["heartbeat_s"] = args.heartbeat
        after_conv = cluster.stats()
        sim_conv = proc_stats(sims.pids)
        time.sleep(args.idle)
        after_idle = cluster.stats()
        result["received"] = received(sims, result["full_state"], needed)
        result["multiplexer"] = multiplexer(cluster)
        if c["timed_out"] or args.creates == 0:
            log("  not converged (or --creates 0): no fan-out phase")
        else:
            log(f"fan-out: {args.creates} creates")
            spies = profile(args.py_spy, cluster, sims, workdir, "fanout")
            result["fanout"] = fanout(cluster, sims, args.creates, args.fanout_timeout)
            if spies:
                result["fanout_profile"] = hot_frames(spies)
            f = result["fanout"]["all_hosts_ms"]
            log(f"  all hosts p50 {f.get('p50', 0):.1f} ms p99 {f.get('p99', 0):.1f} ms")
        after_fan = cluster.stats()
        sim_end = proc_stats(sims.pids)
        result["controllers"] = phase_table(
            base, after_load, after_conv, after_idle, after_fan, args.idle, result
        )
        # Shard CPU while every host is connected and nothing is written: keepalives and the
        # shard's own timers, so an upper bound on what the keepalives cost (the busiest shard)
        result["keepalive_cpu_core_fraction"] = max(
            c["cpu_pct_idle"] / 100 for c in result["controllers"].values()
        )
        result["simulator"] = {
            "cpu_s_converge": sim_conv["cpu_s"],
            "cpu_s_total": sim_end["cpu_s"],
            "rss_mib": sim_end["rss_mib"],
        }
    finally:
        if sims is not None:
            sims.stop()
        cluster.stop()
    if not args.keep:  # kept (with logs) when the run failed, since this is not reached then
        shutil.rmtree(workdir, ignore_errors=True)
    result["run_s"] = time.monotonic() - t_run
    return result


def profile(
    py_spy: str | None, cluster: Cluster, sims: Sims, workdir: Path, phase: str
) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    """Start ``py-spy record`` (raw collapsed stacks, not pausing the process) on every shard
    and simulator process; :func:`hot_frames` stops them and reads what they saw."""
    if not py_spy:
        return {}
    pids = {n: c.pid for n, c in cluster.ctls.items()}
    pids.update({f"sim{i}": pid for i, pid in enumerate(sims.pids)})
    out = {}
    for name, pid in pids.items():
        path = workdir / f"{phase}-{name}.txt"
        cmd = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--nonblocking",
               "--rate", "200", "-o", str(path)]  # fmt: skip
        out[name] = (
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            path,
        )
    time.sleep(1.0)  # py-spy attaches
    return out


def hot_frames(
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]], top: int = 12
) -> dict[str, Any]:
    """Stop the recorders; per process, the share of samples each function is on the stack
    of (its own line or below), the top ``top``, and the share spent idle in the hub."""
    for proc, _ in spies.values():
        proc.send_signal(signal.SIGINT)
    out: dict[str, Any] = {}
    for name, (proc, path) in spies.items():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not path.exists():
            continue
        total = 0
        inclusive: dict[str, int] = {}
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            total += n
            for fn in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]}:
                inclusive[fn] = inclusive.get(fn, 0) + n
        best = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
        out[name] = {"samples": total, "top": [[fn, round(n / max(total, 1), 3)] for fn, n in best]}
    return out


def phase_table(
    base: dict[str, dict[str, float]],
    load: dict[str, dict[str, float]],
    conv: dict[str, dict[str, float]],
    idle: dict[str, dict[str, float]],
    fan: dict[str, dict[str, float]],
    idle_s: float,
    result: dict[str, Any],
) -> dict[str, Any]:
    out = {}
    for n in base:
        out[n] = {
            "cpu_s_load": load[n]["cpu_s"] - base[n]["cpu_s"],
            "cpu_s_converge": conv[n]["cpu_s"] - load[n]["cpu_s"],
            "cpu_pct_idle": 100 * (idle[n]["cpu_s"] - conv[n]["cpu_s"]) / idle_s,
            "cpu_s_fanout": fan[n]["cpu_s"] - idle[n]["cpu_s"],
            "rss_mib_after_load": load[n]["rss_mib"],
            "rss_mib_end": fan[n]["rss_mib"],
            "hwm_mib": fan[n]["hwm_mib"],
        }
    return out


def print_result(r: dict[str, Any]) -> None:
    print(f"\n== {r['label']} (load={r['load']}, {r.get('sim_procs')} simulator procs)")
    if "per_write_inproc" in r:
        w = r["per_write_inproc"]
        print(
            f"per write (in process, shard {w['shard']}: {w['endpoints_on_shard']} endpoints,"
            f" {w['streams']} streams): commit {w['commit_ms']:.1f} ms,"
            f" validate {w['validate_ms']:.2f} ms; first full refresh {w['first_refresh_s']:.2f} s"
        )
        for row in w["hot_cumulative"][:8]:
            print(f"    {row['cum_ms_per_write']:9.1f} ms cum  {row['function']}")
    if "rest_load" in r:
        for k, ph in r["rest_load"].items():
            print(
                f"REST {k:9} {ph['calls']:6} calls {ph['per_s']:8.1f}/s"
                f"  p50 {ph['latency_ms'].get('p50', 0):7.1f} ms"
                f"  ms/write by decile {ph.get('ms_per_write_by_decile', '')}"
            )
    if "convergence" in r:
        c = r["convergence"]
        print(
            f"converged {c['hosts_converged']}/{c['hosts']} hosts, {c['streams_ready']}/"
            f"{c['streams_expected']} streams, in {c['converge_s']:.1f} s"
        )
    if "received" in r:
        rc = r["received"]
        b, o, full = rc["bytes_per_host"], rc["objects_per_host"], rc["full_state"]
        print(
            f"per host: bytes min/med/max {b['min']:.0f}/{b['median']:.0f}/{b['max']:.0f}"
            f" objects {o['min']:.0f}/{o['median']:.0f}/{o['max']:.0f};"
            f" full state {full['bytes']} B, {full['objects']} objects;"
            f" ratio median {rc['bytes_ratio_median']:.3f} (bytes) {rc['objects_ratio_median']:.3f} (objects)"
        )
        print(
            f"received / needed (destinations, routes, load balancers; oracle from the topology):"
            f" median {rc['bytes_over_needed_median']:.2f}, max {rc['bytes_over_needed_max']:.2f}"
        )
    if "multiplexer" in r:
        t = r["multiplexer"]["total"]
        print(
            f"multiplexer: {t['service_sets']} service sets, {t['services_published']} peer"
            f" services for {t['active_peerings']} ACTIVE peerings"
            f" (per peering would be {t['services_if_per_peering']})"
        )
    if "connections" in r:
        cn = r["connections"]
        print(
            f"connections: {cn['total']} (limit 2 x hosts x shards = {cn.get('limit')}),"
            f" {cn.get('channels')} channels; heartbeat {r.get('heartbeat_s')} s, shard CPU"
            f" idle (keepalives) {r.get('keepalive_cpu_core_fraction', 0):.3f} of a core"
        )
    if "fanout" in r:
        f = r["fanout"]
        a, p, rest = f["all_hosts_ms"], f["per_host_ms"], f["rest_create_ms"]
        print(
            f"fan-out ({f['complete']}/{f['creates']} complete, recipients med"
            f" {f['recipients_per_create']['median']:.0f}): all hosts p50 {a.get('p50', 0):.1f}"
            f" p99 {a.get('p99', 0):.1f} ms; per host p50 {p.get('p50', 0):.1f} ms;"
            f" REST create p50 {rest.get('p50', 0):.1f} ms"
        )
    for n, c in r.get("controllers", {}).items():
        print(
            f"{n}: CPU load {c['cpu_s_load']:.1f} s, converge {c['cpu_s_converge']:.1f} s,"
            f" idle {c['cpu_pct_idle']:.1f} %, fan-out {c['cpu_s_fanout']:.1f} s;"
            f" RSS {c['rss_mib_end']:.0f} MiB (peak {c['hwm_mib']:.0f})"
        )
    print(f"run took {r['run_s']:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=[*PRESETS, "all"], help="hosts/vpcs/endpoints presets")
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--vpcs", type=int, default=10)
    p.add_argument("--endpoints", type=int, default=1000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--peers-per-vpc", type=int, default=4)
    p.add_argument("--policies", type=int, default=2)
    p.add_argument("--vpcs-per-host", type=int, default=2)
    p.add_argument("--creates", type=int, default=100, help="fan-out endpoint creates")
    p.add_argument("--load", choices=("auto", "rest", "store"), default="auto",
                   help="create the scenario via REST, or preload the shards' stores")  # fmt: skip
    p.add_argument(
        "--rest-max", type=int, default=5000, help="auto: REST up to this many endpoints"
    )
    p.add_argument("--workers", type=int, default=8, help="REST client threads")
    p.add_argument("--wsgi-max", type=int, default=65536,
                   help="connections per controller, in total and from one address (0: the defaults)")  # fmt: skip
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--sim-heartbeat-timeout", type=float, default=0.0,
                   help="simulated OHCs' liveness timeout (0: 3 x heartbeat, as an OHC)")  # fmt: skip
    p.add_argument("--sim-connecting", type=int, default=64,
                   help="connection attempts in flight per simulator process (0: unbounded)")  # fmt: skip
    p.add_argument("--sim-procs", type=int, default=0, help="simulator processes (0: by fd budget)")
    p.add_argument("--converge-timeout", type=float, default=300.0)
    p.add_argument("--fanout-timeout", type=float, default=30.0)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU sampling")
    p.add_argument("--inproc-writes", type=int, default=10)
    p.add_argument("--no-inproc", action="store_true", help="skip the in-process cost profile")
    p.add_argument("--inproc-only", action="store_true", help="only the in-process cost profile")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    p.add_argument("--plain-http", action="store_true", help="plain HTTP instead of TLS")
    p.add_argument("--py-spy", default="", help="py-spy binary: profile shards and simulators"
                   " during the fan-out (result: fanout_profile, raw stacks in the work dir)")  # fmt: skip
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args()
    # SIGTERM (e.g. from timeout(1)) unwinds through the finally blocks that stop the processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.preset == "all":
        steps = list(PRESETS.values())
    elif args.preset:
        steps = [PRESETS[args.preset]]
    else:
        steps = [(args.hosts, args.vpcs, args.endpoints)]
    results = []
    for h, v, e in steps:
        sizes = Sizes(h, v, e, args.shards, args.peers_per_vpc, args.policies, args.vpcs_per_host)
        r = run(args, sizes)
        r["source"] = source_fingerprint()
        r["machine"] = {"cpus": os.cpu_count(), "kernel": platform.release()}
        r["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print_result(r)
        results.append(r)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(out.read_text()) if out.exists() else {"runs": {}}
        doc["runs"][r["label"]] = r
        out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
