"""``meshpeer``: the operator CLI of a controller shard's REST API (docs/cli.md).

    meshpeer --controller ctl1 vpcs list
    meshpeer --controller ctl1 peerings list blue
    meshpeer --controller ctl1 routes list blue --effective
    meshpeer --url https://10.0.0.1:8080 --token T --ca-file ca.pem endpoints create blue b9 \\
        --ip 10.1.0.9 --host hv1 --wait

Exit status: 0 done; 1 the API refused (its field and detail on stderr); 2 bad usage, no
shard to talk to or no answer; 3 ``--wait`` ran out with hosts still pending; 4 ``why`` found
a blocking step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshpeer import __version__
from meshpeer.cli import config, dataplane, policydiff, why
from meshpeer.cli import format as fmt
from meshpeer.client import ApiFailure, Client
from policies.export import PolicyError

EXIT_API, EXIT_USAGE, EXIT_PENDING, EXIT_BLOCKED = 1, 2, 3, 4
DEFAULT_WAIT = 30  # seconds ?wait=programmed may hold an answer (the API allows 0..60)


class Cli:
    """One invocation: the shard's client, the output mode, and what to print."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: Client,
        out: Callable[[str], None],
        shell: dataplane.HostShell | None = None,
    ):
        self.args = args
        self.client = client
        self.out = out
        self.shell = shell  # the hosts' OVS, for ``why`` (None: no access)
        self.status = 0

    def at(self, vpc: str) -> Client:
        """A client of the shard that owns ``vpc`` (found by placement; same token and CA)."""
        url = self.client.get(self.q("placement", vpc))["url"]
        return Client(url, self.client.token, self.client.timeout, self.client.ca_file)

    def host_at(self, client: Client, host: str | None) -> Any:
        """A host's detail at a shard; None when it is not registered there."""
        if not host:
            return None
        try:
            return client.get(self.q("hosts", host))
        except ApiFailure as exc:
            if exc.status == 404:
                return None
            raise

    def q(self, *parts: str) -> str:
        return "/v1/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def waited(self, path: str) -> str:
        if not getattr(self.args, "wait", False):
            return path
        return f"{path}?wait=programmed&timeout={self.args.wait_timeout}"

    def show(self, doc: Any, text: Callable[[Any], str]) -> None:
        self.out(json.dumps(doc, indent=2) if self.args.json else text(doc))

    def wrote(self, verb: str, what: str, doc: Mapping[str, Any]) -> None:
        self.show(doc, lambda d: fmt.written(verb, what, d))
        if getattr(self.args, "wait", False) and doc.get("pending_hosts"):
            self.status = EXIT_PENDING

    def peer_sides(
        self, peerings: Sequence[Mapping[str, Any]]
    ) -> dict[str, tuple[Mapping[str, Any] | None, str | None]]:
        """Each peering's other side, read from the peer VPC's own shard (found by placement),
        with this shard's token and CA; an error in place of a side that could not be read."""
        lists: dict[str, tuple[list[Mapping[str, Any]], str | None]] = {}
        sides: dict[str, tuple[Mapping[str, Any] | None, str | None]] = {}
        for p in peerings:
            peer = p["peer_vpc"]
            if peer not in lists:
                lists[peer] = self._peerings_of(peer)
            found, error = lists[peer]
            sides[p["name"]] = (fmt.find_peer_side(p, found), error)
        return sides

    def _peerings_of(self, vpc: str) -> tuple[list[Mapping[str, Any]], str | None]:
        try:
            url = self.client.get(self.q("placement", vpc))["url"]
            peer = Client(url, self.client.token, self.client.timeout, self.client.ca_file)
            found: list[Mapping[str, Any]] = peer.get(self.q("vpcs", vpc, "peerings"))["peerings"]
            return found, None
        except ApiFailure as exc:
            if exc.status == 404:
                return [], None  # the peer VPC does not exist (yet)
            return [], fmt.api_error(exc.method, exc.path, exc.status, exc.body)
        except OSError as exc:
            return [], f"peer shard unreachable: {exc}"


# --- commands -------------------------------------------------------------------------------


def vpcs_list(c: Cli) -> None:
    c.show(c.client.get(c.q("vpcs")), fmt.vpcs)


def vpcs_create(c: Cli) -> None:
    a = c.args
    body = {"name": a.name, "subnets": [{"cidr": s} for s in a.subnet], **given(a, "vni", "asn")}
    doc = c.client.post(c.q("vpcs"), body)
    c.show(doc, lambda d: fmt.written("created vpc", a.name, d) + "\n" + fmt.vpcs({"vpcs": [d]}))


def vpcs_delete(c: Cli) -> None:
    c.wrote("deleted vpc", c.args.name, c.client.delete(c.q("vpcs", c.args.name)))


def endpoints_list(c: Cli) -> None:
    c.show(c.client.get(c.q("vpcs", c.args.vpc, "endpoints")), fmt.endpoints)


def endpoints_create(c: Cli) -> None:
    a = c.args
    body = {"name": a.name, "ip": a.ip, "kind": a.kind, **given(a, "host", "mac")}
    doc = c.client.post(c.waited(c.q("vpcs", a.vpc, "endpoints")), body)
    c.wrote("created endpoint", f"{a.vpc}/{a.name}", doc)


def peerings_list(c: Cli) -> None:
    doc = c.client.get(c.q("vpcs", c.args.vpc, "peerings"))
    sides = c.peer_sides(doc["peerings"])
    if c.args.json:
        for p in doc["peerings"]:
            side, error = sides[p["name"]]
            p["peer_side"] = side
            p["peer_side_error"] = error
    c.show(doc, lambda d: fmt.peerings(d, sides))


def peering_settings(a: argparse.Namespace) -> dict[str, Any]:
    """The settings flags given; any export flag sends a whole export policy (it replaces the
    side's policy on update: give every restriction it should keep)."""
    export = export_of(a)
    body = {} if not export and not a.export_all else {"export": export}
    return {**body, **given(a, "import_custom_routes", "inbound", "preference")}


def export_of(a: argparse.Namespace) -> dict[str, Any]:
    """The export policy the export flags describe ({}: no restriction)."""
    export: dict[str, Any] = {}
    if a.export_range:
        export["ranges"] = a.export_range
    for key in ("private_only", "ipv6_only", "custom_routes"):
        if getattr(a, f"export_{key}"):
            export[key] = True
    return export


def policy_diff(c: Cli) -> None:
    """What the export flags would expose or hide, were they applied to the side: nothing is
    written."""
    a = c.args
    side = c.client.get(c.q("vpcs", a.vpc, "peerings", a.name))
    peer_endpoints: list[Any] = []
    try:
        peer_endpoints = c.at(side["peer_vpc"]).get(c.q("vpcs", side["peer_vpc"], "endpoints"))[
            "endpoints"
        ]
    except ApiFailure as exc:
        if exc.status != 404:
            raise
    try:
        found = policydiff.diff(
            side,
            export_of(a),
            c.client.get(c.q("vpcs", a.vpc)),
            c.client.get(c.q("vpcs", a.vpc, "endpoints"))["endpoints"],
            c.client.get(c.q("vpcs", a.vpc, "routes"))["routes"],
            peer_endpoints,
        )
    except PolicyError as exc:  # the flags describe no valid policy: the API would say 400
        print(f"meshpeer: bad export flags: {exc.field}: {exc.detail}", file=sys.stderr)
        c.status = EXIT_USAGE
        return
    c.show(dataclasses.asdict(found) | {"changes": found.changes}, lambda d: found.text())


def peerings_create(c: Cli) -> None:
    a = c.args
    body = {"name": a.name, "peer_vpc": a.peer_vpc, **peering_settings(a)}
    doc = c.client.post(c.waited(c.q("vpcs", a.vpc, "peerings")), body)
    c.wrote("created peering", f"{a.vpc}/{a.name}", doc)


def peerings_update(c: Cli) -> None:
    a = c.args
    doc = c.client.put(c.waited(c.q("vpcs", a.vpc, "peerings", a.name)), peering_settings(a))
    c.wrote("updated peering", f"{a.vpc}/{a.name}", doc)


def routes_list(c: Cli) -> None:
    if c.args.effective:
        c.show(c.client.get(c.q("vpcs", c.args.vpc, "routes", "effective")), fmt.effective_routes)
    else:
        c.show(c.client.get(c.q("vpcs", c.args.vpc, "routes")), fmt.routes)


def routes_create(c: Cli) -> None:
    a = c.args
    body = {"name": a.name, "prefix": a.prefix, "next_hop": a.next_hop, **given(a, "priority")}
    c.wrote("created route", f"{a.vpc}/{a.name}", c.client.post(c.q("vpcs", a.vpc, "routes"), body))


def item_delete(collection: str, noun: str) -> Callable[[Cli], None]:
    """``delete VPC NAME`` of endpoints, peerings or routes (``--wait`` where it is offered)."""

    def run(c: Cli) -> None:
        a = c.args
        doc = c.client.delete(c.waited(c.q("vpcs", a.vpc, collection, a.name)))
        c.wrote(f"deleted {noun}", f"{a.vpc}/{a.name}", doc)

    return run


def given(a: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """The optional flags among ``keys`` that were given, as body fields."""
    return {k: getattr(a, k) for k in keys if getattr(a, k) is not None}


def endpoint_ref(text: str) -> tuple[str, str]:
    """argparse type of ``VPC/NAME``."""
    vpc, sep, name = text.partition("/")
    if not sep or not vpc or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: give an endpoint as VPC/NAME")
    return vpc, name


def why_cmd(c: Cli) -> None:
    """Can SRC reach DST? The intent step by step, then both hosts' pipelines (ofproto/trace)."""
    a = c.args
    (svpc, sname), (dvpc, dname) = a.src, a.dst
    at_src, at_dst = c.at(svpc), c.at(dvpc)
    src = at_src.get(c.q("vpcs", svpc, "endpoints", sname))
    dst = at_dst.get(c.q("vpcs", dvpc, "endpoints", dname))
    facts = why.Facts(
        src,
        dst,
        at_src.get(c.q("vpcs", svpc)),
        at_dst.get(c.q("vpcs", dvpc)),
        at_src.get(c.q("vpcs", svpc, "peerings"))["peerings"],
        at_dst.get(c.q("vpcs", dvpc, "peerings"))["peerings"],
        at_src.get(c.q("vpcs", svpc, "routes", "effective"))["routes"],
        c.host_at(at_dst, src.get("host")),
        c.host_at(at_src, dst.get("host")),
    )
    proto = a.proto or ("tcp" if a.port is not None else "icmp")
    steps = why.intent_steps(facts)
    traces: dict[str, why.Trace] = {}
    if src.get("host"):
        steps += trace_both(c, facts, proto, a.port, traces)
    reachable, line = why.verdict(steps)
    where = f"{proto}{'' if a.port is None else f' port {a.port}'}"
    header = f"why {why.label(src)} -> {why.label(dst)}, {where}"
    if a.json:
        doc = {
            "reachable": reachable,
            "verdict": line,
            "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in steps],
            "traces": {h: list(t.lines) for h, t in traces.items()},
        }
        c.out(json.dumps(doc, indent=2))
    else:
        text = why.render(steps, header)
        if a.verbose:
            for host, t in traces.items():
                text += f"\n--- ofproto/trace on {host}\n" + "\n".join(t.lines)
        c.out(text)
    if not reachable:
        c.status = EXIT_BLOCKED


def trace_both(
    c: Cli, f: why.Facts, proto: str, port: int | None, traces: dict[str, why.Trace]
) -> list[why.Step]:
    """ofproto/trace SRC's first packet on its host and, where it tunnels to DST's host,
    there too (``traces`` gets each host's decoded trace)."""
    src, dst = f.src, f.dst
    shell, src_host, dst_host = c.shell, src["host"], dst.get("host")
    if shell is None or c.args.no_trace:
        return why.trace_steps(src_host, None, dst_host, None, None, None)
    try:
        sport = dataplane.endpoint_port(shell, src_host, src["vpc"], src["name"])
        if sport is None:
            detail = f"{src['name']} has no port on {src_host} (external_ids, docs/attach.md)"
            return [why.Step(f"trace {src_host}", False, detail)]
        flow = why.trace_flow(src, dst, f.src_vpc, sport[0], proto, port)
        first = traces[src_host] = why.decode_trace(dataplane.trace(shell, src_host, flow))
        dport = (
            dataplane.endpoint_port(shell, dst_host, dst["vpc"], dst["name"]) if dst_host else None
        )
        underlay = (f.dst_host_at_src or {}).get("underlay_ip")
        second = None
        if dst_host and first.outcome == "tunnel" and first.tun_dst == underlay:
            tunnel = dataplane.tunnel_port(shell, dst_host)
            here = (f.src_host_at_dst or {}).get("underlay_ip", "")
            arrive = first.arrival(tunnel[0], here) if tunnel else None
            if arrive is not None:
                second = why.decode_trace(dataplane.trace(shell, dst_host, arrive))
                traces[dst_host] = second
        return why.trace_steps(src_host, first, dst_host, underlay, dport and dport[1], second)
    except (OSError, LookupError) as exc:
        return [why.Step(f"trace {src_host}", None, f"not traced: {exc}")]


# --- arguments ------------------------------------------------------------------------------


def _wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="answer once every host that must act has applied it (?wait=programmed)",
    )
    p.add_argument(
        "--wait-timeout",
        type=int,
        default=DEFAULT_WAIT,
        metavar="S",
        help=f"seconds to wait, 0..60 (default {DEFAULT_WAIT})",
    )


def _peering_flags(p: argparse.ArgumentParser) -> None:
    _export_flags(p)
    p.add_argument(
        "--import-custom-routes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="take the peer's custom routes",
    )
    p.add_argument(
        "--inbound", choices=("all", "replies"), help="what this side lets in from the peer"
    )
    p.add_argument(
        "--preference", type=int, help="0..65535, higher wins between peers (default 100)"
    )
    _wait_flags(p)


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--export-range", action="append", metavar="CIDR", help="export only these ranges (repeat)"
    )
    p.add_argument(
        "--export-private-only",
        action="store_true",
        help="export private (RFC 1918/ULA) ranges only",
    )
    p.add_argument("--export-ipv6-only", action="store_true", help="export IPv6 only")
    p.add_argument(
        "--export-custom-routes", action="store_true", help="export static and learned routes too"
    )
    p.add_argument(
        "--export-all", action="store_true", help="send an export policy with no restriction"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshpeer", description="Operate meshpeer shards through their REST API (docs/cli.md)."
    )
    p.add_argument("--version", action="version", version=f"meshpeer {__version__}")
    p.add_argument(
        "--controller",
        "-c",
        metavar="NAME",
        help="a shard named in the CLI config file (scripts/lab up writes it; $MESHPEER_CONTROLLER)",
    )
    p.add_argument("--url", help="the shard's REST base URL ($MESHPEER_URL)")
    p.add_argument("--token", help="operator token ($MESHPEER_TOKEN)")
    p.add_argument("--ca-file", help="CA that verifies an https:// shard ($MESHPEER_CA_FILE)")
    p.add_argument(
        "--config", help="CLI config file ($MESHPEER_CONFIG, else ~/.config/meshpeer/cli.json)"
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds per request (default 10; --wait adds its own)",
    )
    groups = p.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def verbs(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        g = groups.add_parser(name, help=help)
        return g.add_subparsers(dest="verb", required=True, metavar="VERB")

    def cmd(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        verb: str,
        help: str,
        fn: Callable[[Cli], None],
        *positional: str,
    ) -> argparse.ArgumentParser:
        x = group.add_parser(verb, help=help)
        for name in positional:
            x.add_argument(name)
        x.set_defaults(fn=fn)
        return x

    v = verbs("vpcs", "VPCs of this shard")
    cmd(v, "list", "list VPCs", vpcs_list)
    x = cmd(v, "create", "create a VPC", vpcs_create, "name")
    x.add_argument("--subnet", action="append", default=[], metavar="CIDR", help="(repeat)")
    x.add_argument("--vni", type=int)
    x.add_argument("--asn", type=int)
    cmd(v, "delete", "delete a VPC with nothing in it", vpcs_delete, "name")

    e = verbs("endpoints", "endpoints of a VPC")
    cmd(e, "list", "list a VPC's endpoints", endpoints_list, "vpc")
    x = cmd(e, "create", "create an endpoint", endpoints_create, "vpc", "name")
    x.add_argument("--ip", required=True)
    x.add_argument("--host")
    x.add_argument("--mac")
    x.add_argument("--kind", default="vm", choices=("vm", "ilb", "router", "vpn", "interconnect"))
    _wait_flags(x)
    delete = item_delete("endpoints", "endpoint")
    _wait_flags(cmd(e, "delete", "delete an endpoint", delete, "vpc", "name"))

    pe = verbs("peerings", "this VPC's sides of peerings")
    cmd(pe, "list", "peerings with both sides' state and why", peerings_list, "vpc")
    x = cmd(pe, "create", "configure this VPC's side", peerings_create, "vpc", "name")
    x.add_argument("--peer-vpc", required=True)
    _peering_flags(x)
    what = "change a side's export, route import, inbound or preference"
    _peering_flags(cmd(pe, "update", what, peerings_update, "vpc", "name"))
    delete = item_delete("peerings", "peering")
    _wait_flags(cmd(pe, "delete", "delete this VPC's side", delete, "vpc", "name"))

    r = verbs("routes", "static routes of a VPC, and its effective route table")
    what = "static routes (--effective: every route, winners and losers, and why)"
    cmd(r, "list", what, routes_list, "vpc").add_argument("--effective", action="store_true")
    x = cmd(r, "create", "a static route via an endpoint", routes_create, "vpc", "name")
    x.add_argument("--prefix", required=True)
    x.add_argument("--next-hop", required=True)
    x.add_argument("--priority", type=int)
    cmd(r, "delete", "delete a static route", item_delete("routes", "route"), "vpc", "name")

    po = verbs("policy", "export policies of peering sides")
    what = "what the export flags would expose or hide, and on which hosts; writes nothing"
    _export_flags(cmd(po, "diff", what, policy_diff, "vpc", "name"))

    x = groups.add_parser(
        "why", help="can SRC reach DST? intent and data plane, first blocking step"
    )
    x.add_argument("src", type=endpoint_ref, metavar="SRC", help="VPC/NAME")
    x.add_argument("dst", type=endpoint_ref, metavar="DST", help="VPC/NAME")
    x.add_argument("--port", type=int, help="destination port (default protocol then: tcp)")
    x.add_argument("--proto", choices=why.PROTOS, help="default: icmp, or tcp with --port")
    x.add_argument(
        "--host-exec",
        metavar="TEMPLATE",
        help="command prefix reaching a host's OVS, e.g. 'ssh {host} --' (default: the lab's own, for a shard a lab wrote)",
    )
    x.add_argument("--no-trace", action="store_true", help="intent only: no ofproto/trace")
    x.add_argument("--verbose", "-v", action="store_true", help="print each decoded trace")
    x.set_defaults(fn=why_cmd)
    return p


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = os.environ if env is None else env
    path = args.config or config.config_path(env)
    try:
        target = config.resolve(env, path, args.controller, args.url, args.token, args.ca_file)
    except config.ConfigError as exc:
        print(f"meshpeer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    timeout = args.timeout + (
        getattr(args, "wait_timeout", 0) if getattr(args, "wait", False) else 0
    )
    shell: dataplane.HostShell | None = None
    if getattr(args, "host_exec", None):
        shell = dataplane.ExecShell(args.host_exec)
    elif args.fn is why_cmd and target.lab:
        try:
            shell = dataplane.LabShell(target.lab)
        except LookupError:
            shell = None
    try:
        url = leading(target)
        client = Client(url, target.token, timeout, target.ca_file)
    except ValueError as exc:  # a URL that does not parse: a usage error, no traceback
        print(f"meshpeer: {target.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cli = Cli(args, client, print, shell)
    try:
        args.fn(cli)
    except ApiFailure as exc:
        print(
            f"meshpeer: {fmt.api_error(exc.method, exc.path, exc.status, exc.body)}",
            file=sys.stderr,
        )
        return EXIT_API
    except (OSError, ValueError) as exc:
        print(f"meshpeer: {url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return cli.status


def leading(target: config.Target) -> str:
    """The replica of the target's shard that leads now (``GET /healthz`` 200: a standby
    answers 503), else the target's URL (a shard of one process, or none leads)."""
    for u in target.replicas:
        try:
            status, _ = Client(u, None, 2.0, target.ca_file).request("GET", "/healthz")
        except (OSError, ValueError):  # down, or not a shard's answer
            continue
        if status == 200:
            return u
    return target.url


if __name__ == "__main__":
    sys.exit(main())
