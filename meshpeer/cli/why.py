"""``meshpeer why SRC DST``: can endpoint SRC reach DST, and if not, the first step that blocks.

Pure: :func:`intent_steps` reads what the shards answered (:class:`Facts`), :func:`trace_flow`
builds the ``ofproto/trace`` flow of SRC's first packet, :func:`decode_trace` reads a trace back
with the pipeline registry's table names (``ohc.pipeline``), and :func:`verdict` names the first
failed step. ``meshpeer.cli.main`` fetches the facts and runs the traces (docs/cli.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ohc.compiler import gateway_mac
from ohc.pipeline import PIPELINE
from policies.export import PolicyError, parse_export_policy

Json = Mapping[str, Any]
PROTOS = ("icmp", "tcp", "udp")


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool | None  # None: not checked (an earlier step blocked, or no way to check)
    detail: str


@dataclass(frozen=True)
class Facts:
    """What the shards say. ``*_vpc``: ``GET /v1/vpcs/{vpc}``; ``*_peerings``: that VPC's
    peering list; ``routes``: SRC's VPC's effective routes; ``src_host_at_dst``: SRC's host as
    DST's shard sees it (``GET /v1/hosts/{host}``: status report and applied versions), and
    ``dst_host_at_src`` the reverse (None: not registered there, or no host)."""

    src: Json
    dst: Json
    src_vpc: Json
    dst_vpc: Json
    src_peerings: Sequence[Json] = ()
    dst_peerings: Sequence[Json] = ()
    routes: Sequence[Json] = ()
    src_host_at_dst: Json | None = None
    dst_host_at_src: Json | None = None


def label(e: Json) -> str:
    return f"{e['vpc']}/{e['name']} ({e['ip']} on {e.get('host') or 'no host'})"


def _side(peerings: Sequence[Json], peer_vpc: str) -> Json | None:
    return next((p for p in peerings if p["peer_vpc"] == peer_vpc), None)


def _exports(side: Json, ip: str) -> tuple[bool, str]:
    try:
        policy = parse_export_policy(side["export"], "export")
    except PolicyError as exc:  # the shard accepted it: cannot happen, but say so
        return False, f"export policy unreadable: {exc}"
    ok = policy.exports_ip(ipaddress.ip_address(ip))
    allowed = ", ".join(str(n) for n in policy.allowed)
    return ok, f"{side['vpc']}/{side['name']} policy {side['export_policy_id']} allows {allowed}"


def _route_to(routes: Sequence[Json], ip: str) -> tuple[Json | None, Json | None]:
    """(the installed route with the longest prefix holding ``ip``, the longest one lost)."""
    addr = ipaddress.ip_address(ip)
    holding = [r for r in routes if addr in ipaddress.ip_network(r["prefix"], strict=False)]
    holding.sort(key=lambda r: ipaddress.ip_network(r["prefix"]).prefixlen, reverse=True)
    won = next((r for r in holding if r["installed"]), None)
    lost = next((r for r in holding if not r["installed"]), None)
    return won, lost


def stream_at(host: Json | None, stream: str) -> tuple[str | None, int | None, int | None]:
    """(state, received version, version on the switch) of ``stream`` in a host's detail."""
    if host is None:
        return None, None, None
    status = host.get("status") or {}
    found = next((s for s in status.get("streams", []) if s["stream"] == stream), None)
    applied = (host.get("applied") or {}).get(stream)
    if found is None:
        return None, None, applied
    return found["state"], found["version"], applied


def _held(who: str, host: Json | None, stream: str, shard_vpc: str) -> list[Step]:
    """Granted (the host follows the stream, its shard did not refuse) and programmed (the
    host's switch holds a version of it)."""
    name = (host or {}).get("name", who)
    state, received, applied = stream_at(host, stream)
    if host is None:
        return [Step("granted", False, f"{who} is not registered with {shard_vpc}'s shard")]
    if state is None:
        return [Step("granted", False, f"{name} does not follow {stream} (no status report of it)")]
    if state == "refused":
        return [Step("granted", False, f"{name}: {stream} refused by {shard_vpc}'s shard")]
    if state == "waiting":
        return [Step("granted", False, f"{name}: {stream} not delivered yet (fail static)")]
    granted = Step("granted", True, f"{name} follows {stream}: delivered at version {received}")
    if applied is None:
        return [granted, Step("programmed", False, f"{name}'s switch holds no version of {stream}")]
    behind = "" if applied == received else f" (received {received}: a sync is pending)"
    return [
        granted,
        Step("programmed", True, f"{name}'s switch holds {stream} at version {applied}{behind}"),
    ]


def intent_steps(f: Facts) -> list[Step]:
    """The intent's answer, step by step; the first failed step blocks (later ones: None)."""
    src, dst = f.src, f.dst
    steps = [Step("endpoints", True, f"{label(src)} -> {label(dst)}")]
    if not src.get("host"):
        steps.append(Step("source host", False, f"{src['name']} has no host: nothing runs it"))
        return steps
    svpc, dvpc = src["vpc"], dst["vpc"]
    if svpc == dvpc:
        steps.append(Step("same VPC", True, f"both in {svpc}: no peering needed"))
        own = f"destination/{svpc}//"
        return steps + _route_step(f) + _held(src["host"], f.src_host_at_dst, own, svpc)
    steps.append(Step("same VPC", True, f"no: {svpc} -> {dvpc}, a peering is needed"))
    mine = _side(f.src_peerings, dvpc)
    if mine is None:
        steps.append(Step("peered", False, f"{svpc} has no peering to {dvpc}"))
        return steps
    theirs = _side(f.dst_peerings, svpc)
    if theirs is None:
        steps.append(Step("peered", False, f"{dvpc} has no peering to {svpc} (one side only)"))
        return steps
    for side in (mine, theirs):
        ok = side["state"] == "ACTIVE"
        steps.append(
            Step(
                "peered",
                ok,
                f"{side['vpc']}/{side['name']}: {side['state']}, {side['state_details']}",
            )
        )
        if not ok:
            return steps
    ok, detail = _exports(theirs, dst["ip"])
    steps.append(
        Step("exported", ok, f"{dst['ip']} {'is' if ok else 'is NOT'} exported to {svpc}: {detail}")
    )
    if not ok:
        return steps
    back, detail = _exports(mine, src["ip"])
    steps.append(
        Step(
            "return exported",
            back,
            f"{src['ip']} {'is' if back else 'is NOT'} exported to {dvpc} (replies): {detail}",
        )
    )
    if not back:
        return steps
    route = _route_step(f, f"peer:{dvpc}")
    steps += route
    if not route[-1].ok:
        return steps
    inbound = theirs.get("inbound", "all")
    steps.append(
        Step(
            "inbound",
            inbound == "all",
            f"{dvpc} takes {'everything' if inbound == 'all' else 'only replies to its own connections'}"
            f" from {svpc} (inbound={inbound})",
        )
    )
    if inbound != "all":
        return steps
    stream = f"destination/{dvpc}/{theirs['export_policy_id']}/"
    steps += _held(src["host"], f.src_host_at_dst, stream, dvpc)
    if dst.get("host") and steps[-1].ok:
        back_stream = f"destination/{svpc}/{mine['export_policy_id']}/"
        for s in _held(dst["host"], f.dst_host_at_src, back_stream, svpc):
            steps.append(Step(f"return {s.name}", s.ok, s.detail))
    return steps


def _route_step(f: Facts, origin: str | None = None) -> list[Step]:
    """The route SRC's VPC uses toward DST: installed, and (for a peer) from that peer."""
    ip = f.dst["ip"]
    won, lost = _route_to(f.routes, ip)
    svpc = f.src["vpc"]
    if won is None:
        why = f": {lost['prefix']} from {lost['origin']} lost: {lost.get('reason')}" if lost else ""
        return [Step("route", False, f"{svpc} has no installed route to {ip}{why}")]
    where = f"{won['prefix']} ({won['kind']}) from {won['origin']}"
    if origin is None:
        ok = won["origin"] == "local" and won["kind"] == "subnet"
        return [Step("route", ok, f"{svpc} routes {ip} by {where}")]
    if won["origin"] != origin:
        return [Step("route", False, f"{svpc} routes {ip} by {where}, not by {origin}")]
    beat = "; ".join(f"beat {x['origin']} ({x['rule']})" for x in won.get("losers") or [])
    return [Step("route", True, f"{svpc} routes {ip} by {where}{'; ' + beat if beat else ''}")]


# --- the data plane -------------------------------------------------------------------------


def same_subnet(vpc: Json, a: str, b: str) -> bool:
    for s in vpc["subnets"]:
        net = ipaddress.ip_network(s["cidr"])
        if ipaddress.ip_address(a) in net:
            return ipaddress.ip_address(b) in net
    return False


def trace_flow(
    src: Json, dst: Json, src_vpc: Json, in_port: str, proto: str, port: int | None
) -> str:
    """The ``ofproto/trace`` flow of SRC's first packet to DST, as SRC's VM sends it: to DST's
    MAC on its own subnet, else to its gateway MAC (the pipeline's ARP answers say so)."""
    v6 = ipaddress.ip_address(src["ip"]).version == 6
    l2 = dst.get("mac") if same_subnet(src_vpc, src["ip"], dst["ip"]) else None
    eth_dst = l2 or gateway_mac(int(src_vpc["vni"]))
    kind = {
        "icmp": "icmp6" if v6 else "icmp",
        "tcp": "tcp6" if v6 else "tcp",
        "udp": "udp6" if v6 else "udp",
    }[proto]
    parts = [f"in_port={in_port}", kind, f"dl_src={src['mac']}", f"dl_dst={eth_dst}"]
    parts += (
        [f"ipv6_src={src['ip']}", f"ipv6_dst={dst['ip']}", "nw_ttl=64"]
        if v6
        else [f"nw_src={src['ip']}", f"nw_dst={dst['ip']}", "nw_ttl=64"]
    )
    if proto == "icmp":
        parts.append("icmpv6_type=128" if v6 else "icmp_type=8")
    elif port is not None:
        parts.append(f"tp_dst={port}")
    return ",".join(parts)


# Final-flow fields that do not cross the tunnel, or that ofproto/trace does not take back.
_NOT_CARRIED = ("in_port=", "tun_", "gtpu_", "metadata=", "vlan_tci=", "recirc_id=")
_ENTRY = re.compile(r"^\s*(\d+)\. (.*)$")
_RESUME = re.compile(r"Resuming from table (\d+)")


@dataclass(frozen=True)
class Trace:
    """What one host's pipeline does with the packet: the tables it went through, then
    ``outcome``: ``tunnel`` (to ``tun_dst`` with ``tun_id``), ``output`` (``port``) or ``drop``
    (in the last table of ``path``)."""

    path: tuple[int, ...]
    outcome: str
    port: str | None = None
    tun_dst: str | None = None
    tun_id: int | None = None
    final_flow: str = ""
    lines: tuple[str, ...] = field(default=(), repr=False)

    def arrival(self, in_port: str, tun_src: str) -> str | None:
        """The flow the far host sees: this host's final flow arriving on its tunnel port
        (None: this trace does not tunnel)."""
        if self.outcome != "tunnel" or self.tun_dst is None or self.tun_id is None:
            return None
        keep = [p for p in self.final_flow.split(",") if not p.startswith(_NOT_CARRIED)]
        tunnel = [f"in_port={in_port}", f"tun_id={self.tun_id}", f"tun_src={tun_src}"]
        return ",".join([*tunnel, f"tun_dst={self.tun_dst}", *keep])

    def where(self) -> str:
        return table_name(self.path[-1]) if self.path else "no table"

    def text(self) -> str:
        through = " -> ".join(table_name(t) for t in self.path) or "nothing"
        if self.outcome == "tunnel":
            end = f"Geneve to {self.tun_dst}, VNI {self.tun_id}"
        elif self.outcome == "output":
            end = f"output to port {self.port}"
        else:
            end = f"dropped in {self.where()}"
        return f"{through}: {end}"


def table_name(table: int) -> str:
    t = PIPELINE.get(table)
    return f"{t.name}({table})" if t else f"table {table}"


def decode_trace(text: str) -> Trace:
    """Read ``ovs-appctl ofproto/trace br-int FLOW`` output (br-int's part)."""
    path: list[int] = []
    lines: list[str] = []
    tun_dst: str | None = None
    tun_id: int | None = None
    port: str | None = None
    outcome = "drop"
    in_int = False
    final_flow = ""
    for raw in text.splitlines():
        if raw.startswith("bridge("):
            in_int = raw.startswith('bridge("br-int")')
            continue
        if raw.startswith("Final flow: "):
            final_flow = raw[len("Final flow: ") :]
            in_int = False
        resumed = _RESUME.search(raw)
        if resumed:
            in_int = True
        if not in_int:
            continue
        m = _ENTRY.match(raw)
        if m:
            path.append(int(m.group(1)))
            lines.append(f"{table_name(int(m.group(1)))}: {m.group(2)}")
            continue
        action = raw.strip()
        if set(action) <= {"-"}:
            continue  # blank, or the bridge's underline
        if action.startswith("set_field:") and action.endswith("->tun_dst"):
            tun_dst = action[len("set_field:") : -len("->tun_dst")]
        elif action.startswith("set_field:") and action.endswith("->tun_id"):
            tun_id = int(action[len("set_field:") : -len("->tun_id")], 0)
        elif action.startswith("output:"):
            port = action[len("output:") :]
            outcome = "tunnel" if tun_dst else "output"
        elif action in ("drop",) or action.startswith("No match"):
            outcome = "drop"
        lines.append(f"    {action}")
    if "Datapath actions: drop" in text and outcome != "drop":
        outcome = "drop"
    return Trace(tuple(path), outcome, port, tun_dst, tun_id, final_flow, tuple(lines))


def trace_steps(
    src_host: str,
    first: Trace | None,
    dst_host: str | None,
    dst_underlay: str | None,
    dst_port: str | None,
    second: Trace | None,
) -> list[Step]:
    """The data plane's answer from the two traces (None: not traced)."""
    if first is None:
        return [Step(f"trace {src_host}", None, "not traced (no access to the host)")]
    if first.outcome == "drop":
        return [Step(f"trace {src_host}", False, first.text())]
    if first.outcome == "output":
        ok = dst_port is not None and first.port == dst_port and dst_host == src_host
        return [
            Step(
                f"trace {src_host}", ok, first.text() + ("" if ok else f" (DST's port: {dst_port})")
            )
        ]
    ok = dst_underlay is not None and first.tun_dst == dst_underlay
    steps = [
        Step(
            f"trace {src_host}",
            ok,
            first.text() + ("" if ok else f" (DST's host is at {dst_underlay})"),
        )
    ]
    if not ok or dst_host is None:
        return steps
    if second is None:
        return [*steps, Step(f"trace {dst_host}", None, "not traced (no access to the host)")]
    ok = second.outcome == "output" and second.port == dst_port
    tail = "" if ok or second.outcome == "drop" else f" (DST's port: {dst_port})"
    return [*steps, Step(f"trace {dst_host}", ok, second.text() + tail)]


def verdict(steps: Sequence[Step]) -> tuple[bool, str]:
    """(reachable, one line): the first failed step blocks."""
    blocked = next((s for s in steps if s.ok is False), None)
    if blocked is not None:
        return False, f"BLOCKED at {blocked.name}: {blocked.detail}"
    unchecked = [s.name for s in steps if s.ok is None]
    note = f" (not checked: {', '.join(unchecked)})" if unchecked else ""
    return True, f"REACHABLE{note}"


def render(steps: Sequence[Step], header: str) -> str:
    mark = {True: "ok", False: "BLOCKED", None: "-"}
    width = max(len(s.name) for s in steps)
    lines = [header]
    lines += [f"  {mark[s.ok]:<8} {s.name:<{width}}  {s.detail}" for s in steps]
    lines.append(verdict(steps)[1])
    return "\n".join(lines)
