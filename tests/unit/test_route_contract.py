"""One route decision: what ``GET /v1/vpcs/{vpc}/routes/effective`` says is what hosts forward.

The API side is ``meshpeer.controller.routing.effective_routes`` over the shard's intent and
federation views; the switch side is the shards' publication, parsed into each host's view and
compiled (the helpers of ``test_ohc_compiler``: the path the OHC takes), loaded into a
FakeOFTable per host, and traced. Both call ``policies.routes.decide_routes``.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Endpoint, Intent
from meshpeer.controller.mux import GrantSettings, Publication
from meshpeer.controller.peering import statuses
from meshpeer.controller.routing import effective_routes
from meshpeer.protocol import ServiceName
from meshpeer.protocol.messages import StreamId
from ohc.compiler import compile_host, gateway_mac
from ohc.pipeline import TUNNEL_PORT
from policies.routes import DEFAULT_PREFERENCE
from tests.support import FakeOFTable, TraceResult
from tests.unit.controller_fixtures import add_vm, add_vpc, directory, peer, views
from tests.unit.test_ohc_compiler import host_view, load, publish

SHARDS = {"c1": ["teak", "vine"], "c2": ["plum", "sage"]}
D = directory(**SHARDS)
G = GrantSettings(D, ttl=600)
OWNER = {vpc: shard for shard, vpcs in SHARDS.items() for vpc in vpcs}
IPV4 = 0x0800


@dataclass
class World:
    """An intent, what the API says about it, and every host's switch built from it."""

    intent: Intent
    ofports: dict[tuple[str, str], int]
    tables: dict[str, FakeOFTable]

    @staticmethod
    def build(i: Intent) -> World:
        placed = sorted((e for e in i.endpoints.values() if e.host), key=_ep_key)
        ofports = {(e.vpc, e.name): 10 + n for n, e in enumerate(placed)}
        pub = publish(i, G, OWNER)
        tables = {h: load(compile_host(host_view(i, pub, h, ofports)[0])) for h in sorted(i.hosts)}
        return World(i, ofports, tables)

    def effective(self, vpc: str) -> list[dict[str, Any]]:
        vs = views(self.intent, OWNER)
        return effective_routes(self.intent, vpc, statuses(self.intent, vs, OWNER), vs)

    def host_ip(self, host: str) -> str:
        return str(self.intent.hosts[host].underlay_ip)

    def send(self, src: Endpoint, dst: str) -> TraceResult:
        """``src`` sends an IPv4 packet to ``dst`` via its gateway."""
        assert src.host is not None
        pkt = {
            "eth_src": src.mac,
            "eth_dst": gateway_mac(self.intent.vpcs[src.vpc].vni),
            "eth_type": IPV4,
            "ipv4_src": str(src.ip),
            "ipv4_dst": dst,
            "ip_proto": 6,
            "ip_ttl": 64,
        }
        return self.tables[src.host].trace(pkt, in_port=self.ofports[(src.vpc, src.name)])

    def reaches(self, src: Endpoint, dst: str) -> Endpoint | None:
        """The endpoint the first hop hands ``src``'s packet to (a local port, or Geneve to its
        host with its VPC's VNI and its MAC); None when the packet is dropped."""
        got = self.send(src, dst)
        if got.dropped:
            return None
        assert len(got.outputs) == 1, str(got)
        out = got.outputs[0]
        for e in self.intent.endpoints.values():
            if out.port == TUNNEL_PORT:
                assert e.host is not None or e.kind == "ilb"
                if (
                    e.host
                    and out.packet.get("tun_ipv4_dst") == self.host_ip(e.host)
                    and out.packet.get("tunnel_id") == self.intent.vpcs[e.vpc].vni
                    and out.packet.get("eth_dst") == e.mac
                ):
                    return e
            elif e.host == src.host and self.ofports.get((e.vpc, e.name)) == out.port:
                assert out.packet.get("eth_dst") == e.mac, str(got)
                return e
        raise AssertionError(f"{got} reaches no endpoint")

    def accepts(self, dst: Endpoint, src: str, from_host: str) -> bool:
        """Does ``dst``'s host deliver a Geneve packet from ``src`` sent by ``from_host``?"""
        assert dst.host is not None
        pkt = {
            "eth_type": IPV4,
            "eth_dst": dst.mac,
            "ipv4_src": src,
            "ipv4_dst": str(dst.ip),
            "tunnel_id": self.intent.vpcs[dst.vpc].vni,
            "tun_ipv4_src": self.host_ip(from_host),
            "ip_ttl": 63,
        }
        got = self.tables[dst.host].trace(pkt, in_port=TUNNEL_PORT)
        return self.ofports[(dst.vpc, dst.name)] in got.ports()


def _ep_key(e: Endpoint) -> tuple[str, str]:
    return e.vpc, e.name


def origin_of(vpc: str, route: dict[str, Any]) -> str:
    return vpc if route["origin"] == "local" else str(route["origin"]).removeprefix("peer:")


def hop_of(w: World, vpc: str, route: dict[str, Any]) -> Endpoint | None:
    """The endpoint a route of ``vpc``'s effective table forwards to (None for a subnet)."""
    if route["next_hop"] is None:
        return None
    return w.intent.endpoint_with(origin_of(vpc, route), ipaddress.ip_address(route["next_hop"]))


def expected(
    w: World, vpc: str, table: list[dict[str, Any]], addr: ipaddress.IPv4Address
) -> tuple[Endpoint | None, set[str]]:
    """What the API's table says about ``addr``: the endpoint a packet to it goes to (the next
    hop of the longest installed prefix, or for a subnet route the endpoint of that subnet's
    VPC at ``addr``; None: dropped), and the hosts from which ``addr`` is accepted as a source
    (the next hops' hosts of every installed route that holds it, and that endpoint's host)."""
    hits = [r for r in table if r["installed"] and addr in ipaddress.ip_network(r["prefix"])]
    best = max(hits, key=lambda r: ipaddress.ip_network(r["prefix"]).prefixlen, default=None)
    hops = [h for r in hits if (h := hop_of(w, vpc, r)) is not None]
    if best is None:
        return None, {str(h.host) for h in hops}
    to = hop_of(w, vpc, best) or w.intent.endpoint_with(origin_of(vpc, best), addr)
    return to, {str(h.host) for h in [*hops, *([to] if to else [])]}


def probe(prefix: str) -> ipaddress.IPv4Address:
    """An address of ``prefix`` that is no endpoint of these worlds (endpoints use .10-.12)."""
    net = ipaddress.IPv4Network(prefix)
    return net.network_address + (net.num_addresses - 2)


def check_world(w: World) -> int:
    """For every VM, every address its VPC's effective table speaks of (an address of each
    route's prefix, and each endpoint of the VPCs the routes come from): a packet from the VM
    goes where the table says (``expected``), and the VM's host accepts the address as a
    source exactly from the hosts the table says. Returns the number of packets traced."""
    traced = 0
    for vm in sorted(w.intent.endpoints.values(), key=_ep_key):
        if vm.kind != "vm" or vm.host is None:
            continue
        table = w.effective(vm.vpc)
        origins = {origin_of(vm.vpc, r) for r in table}
        addrs = {probe(r["prefix"]) for r in table}
        addrs |= {e.ip for v in origins for e in w.intent.endpoints_of(v) if e.ip.version == 4}
        for addr in sorted(addrs - {vm.ip}):
            assert isinstance(addr, ipaddress.IPv4Address)
            to, sources = expected(w, vm.vpc, table, addr)
            if to != vm:  # a switch never sends a packet back out of its in_port
                got = w.reaches(vm, str(addr))
                assert got == to, (vm.vpc, str(addr), got, to, table)
            for host in sorted(set(w.intent.hosts) - {vm.host}):
                accepted = w.accepts(vm, str(addr), host)
                assert accepted == (host in sources), (vm.vpc, str(addr), host, sources, table)
            traced += len(w.intent.hosts)
    return traced


# --- the reported case: plum and sage share teak's service set, only sage imports ----------


def plum_sage_teak(plum_imports: bool = False) -> Intent:
    """teak (c1) exports custom routes to plum and sage (c2) under one policy; sage imports
    them, plum does not. teak routes 10.129.0.0/24 via its router endpoint."""
    i = Intent()
    add_vpc(i, D, "c1", "teak", "10.128.0.0/24")
    add_vpc(i, D, "c2", "plum", "10.130.0.0/24")
    add_vpc(i, D, "c2", "sage", "10.131.0.0/24")
    add_vm(i, "teak", "router", "10.128.0.10", "hv1", kind="router")
    add_vm(i, "plum", "p1", "10.130.0.11", "hv2")
    add_vm(i, "sage", "s1", "10.131.0.11", "hv3")
    net, hop = ipaddress.ip_network("10.129.0.0/24"), ipaddress.ip_address("10.128.0.10")
    i.put(ops.new_route(i, "teak", "onprem", net, hop, 1000))
    for other in ("plum", "sage"):
        peer(i, "teak", other, {"custom_routes": True}, name=f"teak-{other}")
    peer(i, "plum", "teak", None, plum_imports, name="plum-teak")
    peer(i, "sage", "teak", None, True, name="sage-teak")
    return i


def test_a_custom_route_the_api_calls_not_imported_is_not_forwarded() -> None:
    w = World.build(plum_sage_teak())
    p1, s1 = w.intent.endpoints[("plum", "p1")], w.intent.endpoints[("sage", "s1")]
    router = w.intent.endpoints[("teak", "router")]
    (onprem,) = [r for r in w.effective("plum") if r["prefix"] == "10.129.0.0/24"]
    assert (onprem["installed"], onprem["imported"]) == (False, False)
    assert "plum-teak" in onprem["reason"] and "import_custom_routes" in onprem["reason"]
    assert w.reaches(p1, "10.129.0.5") is None  # no table 30 route flow to teak's host
    assert not w.accepts(p1, "10.129.0.5", "hv1")  # no table 41 source check either
    # sage imports it: same service set, other flag
    (onprem,) = [r for r in w.effective("sage") if r["prefix"] == "10.129.0.0/24"]
    assert (onprem["installed"], onprem["imported"]) == (True, True)
    assert w.reaches(s1, "10.129.0.5") == router
    assert w.accepts(s1, "10.129.0.5", "hv1")
    check_world(w)


def test_importing_installs_the_route_on_the_host_too() -> None:
    w = World.build(plum_sage_teak(plum_imports=True))
    p1, router = w.intent.endpoints[("plum", "p1")], w.intent.endpoints[("teak", "router")]
    (onprem,) = [r for r in w.effective("plum") if r["prefix"] == "10.129.0.0/24"]
    assert (onprem["installed"], onprem["imported"]) == (True, True)
    assert w.reaches(p1, "10.129.0.5") == router
    assert w.accepts(p1, "10.129.0.5", "hv1")
    check_world(w)


def test_a_bad_peering_object_is_skipped_with_its_reason() -> None:
    i = plum_sage_teak()
    pub = publish(i, G, OWNER)
    sid = StreamId(ServiceName.PEERING, "plum", None, "hv2")
    bad = {k: o | {"import_custom_routes": "yes"} for k, o in pub.streams[sid].items()}
    streams = pub.streams | {sid: bad}
    view, skipped = host_view(i, Publication(streams), "hv2", World.build(i).ofports)
    assert not view.peers_of("plum")
    assert [(s.service, s.key) for s in skipped] == [("peering", "plum/teak")]
    assert "import_custom_routes" in skipped[0].reason


# --- two peers export the same prefix: the peering preference, then the lower peer id -----


def two_routers(teak: int, vine: int) -> Intent:
    """teak and vine (c1) each route 10.129.0.0/24 via their router and export it to
    sage (c2), which imports both at the given preferences."""
    i = Intent()
    add_vpc(i, D, "c1", "teak", "10.128.0.0/24")
    add_vpc(i, D, "c1", "vine", "10.132.0.0/24")
    add_vpc(i, D, "c2", "sage", "10.131.0.0/24")
    add_vm(i, "teak", "router", "10.128.0.10", "hv1", kind="router")
    add_vm(i, "vine", "router", "10.132.0.10", "hv2", kind="router")
    add_vm(i, "sage", "s1", "10.131.0.11", "hv3")
    net = ipaddress.ip_network("10.129.0.0/24")
    for vpc, hop, pref in (("teak", "10.128.0.10", teak), ("vine", "10.132.0.10", vine)):
        i.put(ops.new_route(i, vpc, "onprem", net, ipaddress.ip_address(hop), 1000))
        peer(i, vpc, "sage", {"custom_routes": True}, name=f"{vpc}-sage")
        peer(i, "sage", vpc, None, True, name=f"sage-{vpc}", preference=pref)
    return i


def test_two_peers_one_prefix_the_preferred_peer_gets_the_traffic() -> None:
    for teak, vine, rule, winner in (
        (100, 200, "peering-preference", "vine"),
        (100, 50, "peering-preference", "teak"),
        (100, 100, "lower-peer-id", "teak"),
    ):
        w = World.build(two_routers(teak, vine))
        s1 = w.intent.endpoints[("sage", "s1")]
        routes = [r for r in w.effective("sage") if r["prefix"] == "10.129.0.0/24"]
        (won,) = [r for r in routes if r["installed"]]
        (lost,) = [r for r in routes if not r["installed"]]
        assert won["origin"] == f"peer:{winner}", routes
        assert lost["rule"] == rule and lost["reason"].startswith(rule), lost
        assert lost["winner"]["origin"] == won["origin"]
        assert won["losers"] == [
            {k: lost[k] for k in ("prefix", "kind", "origin", "next_hop", "priority", "preference")}
            | {"rule": rule}
        ]
        assert w.reaches(s1, "10.129.0.5") == w.intent.endpoints[(winner, "router")]
        hosts = {"teak": "hv1", "vine": "hv2"}
        for vpc, host in hosts.items():  # replies are taken only from the winner's host
            assert w.accepts(s1, "10.129.0.5", host) == (vpc == winner)
        check_world(w)


# --- the invariant over random worlds ---------------------------------------------------------

VPCS = ("plum", "sage", "teak", "vine")
HOSTS = ("hv1", "hv2", "hv3")
# Few overlaps between VPCs (an overlap leaves a peering INACTIVE), some on purpose.
SUBNETS = (*(f"10.0.{k}.0/24" for k in range(8)), "10.0.6.0/23")
# Overlapping custom prefixes, some equal to other VPCs' subnets (local vs peer routes).
PREFIXES = (
    "10.9.0.0/16",
    "10.9.0.0/24",
    "10.9.0.0/25",
    "10.9.0.128/25",
    "10.9.1.0/24",
    "10.0.1.0/24",
    "10.0.2.0/23",
    "10.0.3.0/25",
    "10.0.6.0/23",
)


@st.composite
def worlds(draw: st.DrawFn) -> Intent:
    i = Intent()
    for vpc in VPCS:
        cidrs = draw(st.lists(st.sampled_from(SUBNETS), min_size=1, max_size=2, unique=True))
        try:
            add_vpc(i, D, OWNER[vpc], vpc, *cidrs)
        except ops.IntentError:  # overlapping subnets of one VPC
            add_vpc(i, D, OWNER[vpc], vpc, cidrs[0])
        base = ipaddress.ip_network(cidrs[0]).network_address
        add_vm(i, vpc, "vm", str(base + 11), draw(st.sampled_from(HOSTS)))
        add_vm(i, vpc, "router", str(base + 10), draw(st.sampled_from(HOSTS)), kind="router")
        for n in range(draw(st.integers(0, 3))):
            prefix = ipaddress.ip_network(draw(st.sampled_from(PREFIXES)))
            hop = base + draw(st.sampled_from([10, 11]))
            priority = draw(st.sampled_from([100, 1000]))
            with contextlib.suppress(ops.IntentError):  # inside a subnet of its own VPC
                i.put(ops.new_route(i, vpc, f"r{n}", prefix, hop, priority))
    for n, a in enumerate(VPCS):
        for b in VPCS[n + 1 :]:
            sides = draw(st.sampled_from([(), (a, b), (a, b), (a, b), (a,), (b,)]))
            for one in sides:
                other = b if one == a else a
                export = {"custom_routes": draw(st.booleans())}
                preference = draw(st.sampled_from([50, DEFAULT_PREFERENCE, 200]))
                peer(i, one, other, export, draw(st.booleans()), preference=preference)
    return i


@settings(max_examples=40, deadline=None)
@given(worlds())
def test_the_switch_forwards_what_the_effective_routes_say(i: Intent) -> None:
    check_world(World.build(i))
