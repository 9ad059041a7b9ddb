"""scripts/lab: up, status, exec, matrix, down."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import yaml

from meshpeer import __version__
from meshpeer.cli import config as cli_config
from meshpeer.lab import (
    attach,
    build,
    controllers,
    etcd,
    hosts,
    onprem,
    ovs,
    state,
    supervisor,
    teardown,
)
from meshpeer.lab.matrix import matrix, render
from meshpeer.lab.plan import (
    BACKENDS,
    LAB_NAME_RULE,
    NETNS,
    ControllerPlan,
    LabPlan,
    valid_lab_name,
)
from meshpeer.lab.sh import LabError, netns_cmd
from meshpeer.lab.topology import Topology, TopologyError, parse
from ohc import status as ohc_status

DEFAULT_LAB = "mp"


def lab_name(value: str) -> str:
    """argparse type for ``--lab``: a bad name is one line naming the rule, not a traceback."""
    if not valid_lab_name(value):
        raise argparse.ArgumentTypeError(f"bad lab name {value!r}: {LAB_NAME_RULE}")
    return value


def add_common_options(p: argparse.ArgumentParser) -> None:
    """``--lab NAME`` and ``--version``, shared by scripts/lab and scripts/demo."""
    p.add_argument("--version", action="version", version=f"meshpeer {__version__}")
    p.add_argument(
        "--lab",
        type=lab_name,
        default=os.environ.get("MESHPEER_LAB", DEFAULT_LAB),
        help=f"lab name, prefix of every namespace; {LAB_NAME_RULE} (default: $MESHPEER_LAB or mp)",
    )


def add_backend_option(p: argparse.ArgumentParser) -> None:
    """``--backend``, shared by 'lab up' and scripts/demo (docs/lab.md)."""
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("MESHPEER_LAB_BACKEND", NETNS),
        help="where the hosts live: network namespaces or Docker containers "
        "(default: $MESHPEER_LAB_BACKEND or netns)",
    )


def load_topology(path: str) -> Topology:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise TopologyError([f"{path}: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise TopologyError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse(raw)


def cmd_up(args: argparse.Namespace) -> int:
    topo = load_topology(args.topology)  # validate before touching anything
    plan, elapsed = build.fresh(
        topo, args.lab, keep_failed=args.keep_failed, tls=not args.plain_http, backend=args.backend
    )
    print(f"[lab {args.lab}] up in {elapsed:.2f}s: {len(plan.hosts)} hosts ({plan.backend}), "
          f"{len(plan.vms)} VMs, {len(plan.controllers)} controllers")  # fmt: skip
    if plan.controllers:  # the operator CLI finds the shards by name (docs/cli.md)
        path = cli_config.config_path(os.environ)
        entry = {"token": plan.api_token, "ca_file": plan.ca_file}
        shards = {c.name: {"url": controllers.url(plan, c), **entry} for c in plan.controllers}
        cli_config.save_lab(path, plan.lab, shards)
        print(f"[lab {args.lab}] meshpeer CLI config: {path}")
    return 0


def require_plan(lab: str) -> LabPlan:
    plan = state.load(lab)
    if plan is None:
        raise LabError(f"lab {lab!r} is not up (no {state.state_path(lab)})")
    return plan


def status(plan: LabPlan) -> dict[str, Any]:
    raw = state.load_raw(plan.lab) or {}
    return {
        "lab": plan.lab,
        "phase": raw.get("phase", "unknown"),
        "backend": plan.backend,
        "state_dir": plan.state_dir,
        "mgmt": {"subnet": plan.mgmt_subnet, "root_ip": plan.root_mgmt_ip},
        "underlay": {"subnet": plan.underlay_subnet, "fabric_netns": plan.fabric_netns},
        "vnis": plan.vnis,
        # TLS: the shards' REST URLs are https:// and verify with this CA (None: plain HTTP).
        "tls": plan.tls,
        "ca_file": plan.ca_file,
        "controllers": [controller_status(plan, c) for c in plan.controllers],
        # The etcd members (topology key ``etcd``): pid None while one is stopped.
        "etcd": [
            {
                "name": m.name,
                "netns": m.netns,
                "mgmt_ip": m.mgmt_ip,
                "url": etcd.member(m).client_url,
                "pid": etcd.pid(plan, m),
                "healthy": etcd.healthy(m),
            }
            for m in plan.etcd
        ],
        "hosts": [
            {
                "name": h.name,
                "role": h.role,  # hypervisor or gateway (docs/gateways.md)
                "netns": h.netns,
                # docker labs: the host's container (its network namespace is ``netns``)
                "container": hosts.container_name(plan, h),
                "mgmt_ip": h.mgmt_ip,
                "underlay_ip": h.underlay_ip,
                "underlay_mac": h.underlay_mac,
                "br_int_dpid": h.br_int_dpid,
                "of_target": h.of_target,
                "rundir": h.rundir,
                "ovs_running": len(ovs.pids(h)) == len(ovs.DAEMONS),
                "vms": [v.name for v in plan.vms_on(h.name)],
                "status_report": host_report(plan, h.name),
            }
            for h in plan.hosts
        ],
        "supervisor": {"pid": supervisor.daemon_pid(plan.state_dir)},
        # Every process the lab started, as its supervisor runs it: name (host or controller),
        # kind (shard, ohc, ovsdb-server, ovs-vswitchd), pid, restarts after a crash.
        "processes": supervisor.processes(plan.state_dir),
        "vms": [
            {
                "name": v.name,
                "vpc": v.vpc,
                "kind": v.kind,
                "host": v.host,
                "netns": v.netns,
                "ip": v.ip,
                "prefixlen": v.prefixlen,
                "gateway": v.gateway,
                "mac": v.mac,
                "vni": v.vni,
                "ofport": v.ofport,
                "host_port": v.host_port,
            }
            for v in plan.vms
        ],
        # On-prem routers (BIRD) and the hosts behind them (docs/lab.md, "On-prem routers").
        "onprem": [
            {
                "name": r.name,
                "netns": r.netns,
                "asn": r.asn,
                "attach": r.attach,
                "vpc": r.vpc,
                "controller": r.controller,
                "router_ip": r.router_ip,
                "shard_ip": r.shard_ip,
                "prefixes": list(r.prefixes),
                "bird_socket": r.socket,
                "hosts": [
                    {"name": h.name, "netns": h.netns, "ip": h.ip, "gateway": h.gateway}
                    for h in plan.onprem_hosts
                    if h.router == r.name
                ],
            }
            for r in plan.onprem
        ],
    }


def controller_status(plan: LabPlan, c: ControllerPlan) -> dict[str, Any]:
    """One controller: ``url`` (and ``rest_url``) is where it serves now, its leading
    replica's (None: no replica leads at the moment); ``replicas`` each process."""
    replicas = controllers.replica_status(plan, c)
    leader = next((r["url"] for r in replicas if r["role"] == "leader"), None)
    return {
        "name": c.name,
        "netns": c.netns,
        "mgmt_ip": c.mgmt_ip,
        "rest_url": leader or controllers.url(plan, c),
        "url": leader,
        "api_token": plan.api_token,
        "readonly_token": plan.readonly_token,
        "running": any(r["pid"] is not None for r in replicas),
        "replicas": replicas,
    }


def host_report(plan: LabPlan, host: str) -> dict[str, Any] | None:
    """The host's last status report (GET /v1/hosts/{name} at the first running shard)."""
    for c in plan.controllers:
        try:
            client = controllers.client(plan, c, plan.api_token, timeout=2.0)
            report: dict[str, Any] | None = client.get(f"/v1/hosts/{host}")["status"]
            return report
        except Exception:
            continue  # that shard is down, or the host has not registered yet
    return None


def cmd_status(args: argparse.Namespace) -> int:
    st = status(require_plan(args.lab))
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"lab {st['lab']} ({st['phase']}, {st['backend']}), management {st['mgmt']['subnet']}, "
          f"underlay {st['underlay']['subnet']}")  # fmt: skip
    for c in st["controllers"]:
        ok = "running" if c["running"] else "DOWN"
        print(f"  controller {c['name']:<8} netns {c['netns']:<12} REST {c['rest_url']:<26} {ok}")
        if len(c["replicas"]) > 1:
            for r in c["replicas"]:
                print(f"    replica {r['name']:<4} {r['role']:<8} pid {r['pid']} {r['url']}")
    for m in st["etcd"]:
        ok = "healthy" if m["healthy"] else ("DOWN" if m["pid"] is None else "unhealthy")
        print(f"  etcd {m['name']:<8} netns {m['netns']:<12} {m['url']:<26} {ok}")
    for h in st["hosts"]:
        ok = "running" if h["ovs_running"] else "DOWN"
        print(f"  host {h['name']:<8} netns {h['netns']:<12} mgmt {h['mgmt_ip']:<16} "
              f"underlay {h['underlay_ip']:<16} ovs {ok}")  # fmt: skip
        if h["container"]:
            print(f"       container {h['container']}")
        if st["controllers"]:
            print(f"       health   {ohc_status.one_line(h['status_report'], time.time())}")
    sup = st["supervisor"]["pid"]
    print(f"  supervisor pid {sup}" if sup else "  supervisor DOWN: nothing restarts a process")
    for p in st["processes"]:
        ok = f"pid {p['pid']}" if p["running"] else ("stopped" if not p["wanted"] else "DOWN")
        print(f"    {p['kind']:<13} {p['name']:<8} {ok:<10} restarts {p['restarts']}")
    for v in st["vms"]:
        print(f"  {v['kind']} {v['name']:<8} on {v['host']:<6} vpc {v['vpc']:<8} "
              f"{v['ip']}/{v['prefixlen']} gw {v['gateway']} mac {v['mac']} vni {v['vni']}")  # fmt: skip
    for r in st["onprem"]:
        hosts = ", ".join(f"{h['name']} {h['ip']}" for h in r["hosts"])
        print(f"  onprem {r['name']:<8} AS {r['asn']} behind {r['attach']} ({r['vpc']}), "
              f"BGP {r['router_ip']} <-> {r['controller']} {r['shard_ip']}, "
              f"prefixes {' '.join(r['prefixes'])}; hosts {hosts or 'none'}")  # fmt: skip
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    plan = require_plan(args.lab)
    ns = plan.netns_of(args.name)
    if ns is None and f"{args.lab}-{args.name}" in teardown.lab_netns(args.lab):
        ns = f"{args.lab}-{args.name}"  # a VM plugged in by 'attach'
    if ns is None:
        raise LabError(f"no host, VM or controller named {args.name!r} in lab {args.lab!r}")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("exec needs a command after --")
    env = dict(os.environ)
    router = plan.router(args.name) or next((r for r in plan.onprem if r.attach == args.name), None)
    if router is not None:  # plain birdc talks to this router's BIRD
        cmd = onprem.birdc_targeted(router, cmd)
    if any(m.name == args.name for m in plan.etcd):  # plain etcdctl talks to this member
        env.update(etcd.ETCDCTL_ENV)
    if any(h.name == args.name for h in plan.hosts):
        host = plan.host(args.name)
        env.update(ovs.env(host))  # so plain ovs-vsctl/ovs-ofctl work there
        full = hosts.host_cmd(
            plan, host, ovs.appctl_targeted(host, cmd)
        )  # docker: in its container
    else:
        full = netns_cmd(ns, cmd)
    os.execvpe(full[0], full, env)
    return 127  # not reached


def cmd_attach(args: argparse.Namespace) -> int:
    vm = attach.attach(require_plan(args.lab), args.name, args.host, args.vpc, args.ip, args.mac)
    print(f"[lab {args.lab}] {vm.name}: {vm.ip}/{vm.prefixlen} mac {vm.mac} in {vm.netns}, "
          f"port {vm.host_port} on {vm.host}'s br-int (iface-id={vm.name}, vpc={vm.vpc})")  # fmt: skip
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    plan = require_plan(args.lab)
    pairs = matrix(plan)
    if args.json:
        print(json.dumps({"pairs": [
            {"src": p.src, "dst": p.dst, "reachable": p.reachable, **({"note": p.note} if p.note else {})}
            for p in pairs
        ]}, indent=1))  # fmt: skip
    else:
        print(render(plan, pairs))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    done = teardown.down(args.lab)
    cli_config.forget_lab(cli_config.config_path(os.environ), args.lab)
    print(f"[lab {args.lab}] down in {time.monotonic() - t0:.2f}s: "
          f"{done['namespaces']} namespaces, {done['containers']} containers removed")  # fmt: skip
    if done["logs"]:
        print(f"[lab {args.lab}] {done['logs']} logs kept in {state.logs_dir(args.lab)}/")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lab", description="meshpeer lab: OVS hosts in namespaces or containers"
    )
    add_common_options(p)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="validate a topology and build the lab (runs 'down' first)")
    up.add_argument("topology")
    up.add_argument("--keep-failed", action="store_true", help="leave a failed lab for debugging")
    add_backend_option(up)
    up.add_argument(
        "--plain-http",
        action="store_true",
        help="shards serve plain HTTP, no TLS (default: HTTPS with a CA made for the lab)",
    )
    up.set_defaults(fn=cmd_up)
    st = sub.add_parser("status", help="hosts, VMs, controllers and addresses")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    ex = sub.add_parser(
        "exec", help="run a command in a VM's, host's, controller's or etcd member's namespace"
    )
    ex.add_argument("name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(fn=cmd_exec)
    mx = sub.add_parser("matrix", help="ping every ordered VM pair once")
    mx.add_argument("--json", action="store_true")
    mx.set_defaults(fn=cmd_matrix)
    at = sub.add_parser(
        "attach", help="plug a VM into a host's br-int for an endpoint made over the REST API"
    )
    at.add_argument("name", help="the endpoint's name (external_ids:iface-id)")
    at.add_argument("--host", required=True)
    at.add_argument("--vpc", required=True)
    at.add_argument("--ip", required=True, help="ADDRESS/PREFIXLEN, e.g. 10.5.0.11/24")
    at.add_argument("--mac", help="default: derived from (VPC, IP), as the controller does")
    at.set_defaults(fn=cmd_attach)
    dn = sub.add_parser("down", help="remove everything the lab created")
    dn.set_defaults(fn=cmd_down)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        rc: int = args.fn(args)
        return rc
    except TopologyError as exc:
        print(f"{args.topology}: invalid topology:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return 2
    except (LabError, ValueError, RuntimeError) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
