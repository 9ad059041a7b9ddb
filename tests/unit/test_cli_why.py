"""meshpeer.cli.why: the first blocking step, from the shards' answers and from real
``ofproto/trace`` output (recorded on the lab's mesh topology, OVS 3.x)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshpeer.cli import why

URL1, URL2 = "https://169.254.1.10:8080", "https://169.254.1.11:8080"
B1 = {"name": "b1", "vpc": "blue", "ip": "10.1.0.11", "mac": "02:ba:b4:12:dd:5e", "host": "hv1"}
B2 = {"name": "b2", "vpc": "blue", "ip": "10.1.0.12", "mac": "02:2e:f2:cc:df:2b", "host": "hv2"}
R1 = {"name": "r1", "vpc": "red", "ip": "10.2.0.11", "mac": "02:95:c6:2a:f3:57", "host": "hv2"}
BLUE = {"name": "blue", "vni": 10000, "subnets": [{"cidr": "10.1.0.0/24"}]}
RED = {"name": "red", "vni": 20000, "subnets": [{"cidr": "10.2.0.0/24"}]}
EVERYTHING = {"ranges": [], "private_only": False, "ipv6_only": False, "custom_routes": False}
POLICY = "p-2171d5f8bcb97b19"


def side(vpc: str, peer: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"{vpc}-{peer}", "vpc": vpc, "peer_vpc": peer, "export": EVERYTHING,
        "export_policy_id": POLICY, "inbound": "all", "state": "ACTIVE",
        "state_details": f"both sides configured: '{vpc}' <-> '{peer}'", **extra,
    }  # fmt: skip


def host(name: str, ip: str, stream: str, state: str = "delivered", applied: bool = True) -> Any:
    version = 4294967298
    return {
        "name": name, "underlay_ip": ip,
        "status": {"streams": [{"stream": stream, "shard": URL2, "state": state,
                                "version": None if state == "waiting" else version}]},
        "applied": {stream: version} if applied else {},
    }  # fmt: skip


ROUTES = [
    {"prefix": "10.1.0.0/24", "kind": "subnet", "origin": "local", "installed": True},
    {"prefix": "10.2.0.0/24", "kind": "subnet", "origin": "peer:red", "installed": True},
]
GOOD = why.Facts(
    B1, R1, BLUE, RED,
    [side("blue", "red")], [side("red", "blue")], ROUTES,
    host("hv1", "169.254.101.11", f"destination/red/{POLICY}/"),
    host("hv2", "169.254.101.12", f"destination/blue/{POLICY}/"),
)  # fmt: skip


def blocked(f: why.Facts) -> tuple[str, str]:
    steps = why.intent_steps(f)
    step = next(s for s in steps if s.ok is False)
    assert why.verdict(steps) == (False, f"BLOCKED at {step.name}: {step.detail}")
    assert all(s.ok for s in steps[: steps.index(step)])  # the first one that failed
    return step.name, step.detail


def test_a_peered_endpoint_passes_every_intent_step() -> None:
    steps = why.intent_steps(GOOD)
    assert [s.name for s in steps] == [
        "endpoints", "same VPC", "peered", "peered", "exported", "return exported", "route",
        "inbound", "granted", "programmed", "return granted", "return programmed",
    ]  # fmt: skip
    assert all(s.ok for s in steps)
    assert why.verdict(steps) == (True, "REACHABLE")
    assert "at version 4294967298" in steps[9].detail


def test_each_missing_piece_is_the_first_blocking_step() -> None:
    assert blocked(replace(GOOD, src_peerings=[])) == ("peered", "blue has no peering to red")
    assert (
        blocked(replace(GOOD, dst_peerings=[]))[1] == "red has no peering to blue (one side only)"
    )
    inactive = side("blue", "red", state="INACTIVE", state_details="peer side deleted")
    assert blocked(replace(GOOD, src_peerings=[inactive])) == (
        "peered", "blue/blue-red: INACTIVE, peer side deleted"
    )  # fmt: skip
    narrow = side("red", "blue", export={**EVERYTHING, "ranges": ["10.2.0.128/25"]})
    name, detail = blocked(replace(GOOD, dst_peerings=[narrow]))
    assert name == "exported" and detail.startswith("10.2.0.11 is NOT exported to blue")
    assert "allows 10.2.0.128/25" in detail
    replies = side("red", "blue", inbound="replies")
    assert blocked(replace(GOOD, dst_peerings=[replies]))[0] == "inbound"
    refused = host("hv1", "169.254.101.11", f"destination/red/{POLICY}/", state="refused")
    assert blocked(replace(GOOD, src_host_at_dst=refused))[0] == "granted"
    unsynced = host("hv1", "169.254.101.11", f"destination/red/{POLICY}/", applied=False)
    assert blocked(replace(GOOD, src_host_at_dst=unsynced)) == (
        "programmed", f"hv1's switch holds no version of destination/red/{POLICY}/"
    )  # fmt: skip
    assert blocked(replace(GOOD, src_host_at_dst=None))[0] == "granted"


def test_a_route_won_by_another_peer_blocks_and_names_the_winner() -> None:
    routes = [
        {"prefix": "10.2.0.0/24", "kind": "subnet", "origin": "peer:pink", "installed": True},
        {"prefix": "10.2.0.0/24", "kind": "subnet", "origin": "peer:red", "installed": False,
         "reason": "peering-preference: 200 > 100"},
    ]  # fmt: skip
    assert blocked(replace(GOOD, routes=routes)) == (
        "route",
        "blue routes 10.2.0.11 by 10.2.0.0/24 (subnet) from peer:pink, not by peer:red",
    )
    name, detail = blocked(replace(GOOD, routes=routes[1:]))
    assert name == "route" and "lost: peering-preference: 200 > 100" in detail


def test_same_vpc_needs_no_peering() -> None:
    f = why.Facts(B1, B2, BLUE, BLUE, routes=ROUTES,
                  src_host_at_dst=host("hv1", "169.254.101.11", "destination/blue//"))  # fmt: skip
    steps = why.intent_steps(f)
    assert [s.name for s in steps] == ["endpoints", "same VPC", "route", "granted", "programmed"]
    assert why.verdict(steps)[0]


def test_the_first_packet_goes_to_the_gateway_or_the_neighbour() -> None:
    assert why.trace_flow(B1, R1, BLUE, "v-b1", "tcp", 80) == (
        "in_port=v-b1,tcp,dl_src=02:ba:b4:12:dd:5e,dl_dst=02:6d:70:00:27:10,"
        "nw_src=10.1.0.11,nw_dst=10.2.0.11,nw_ttl=64,tp_dst=80"
    )
    same = why.trace_flow(B1, B2, BLUE, "v-b1", "icmp", None)
    assert "dl_dst=02:2e:f2:cc:df:2b" in same and same.endswith("icmp_type=8")


# hv1's pipeline for b1's first packet, up to the L3 lookup (both traces below share it)
ROUTED = """\
bridge("br-int")
----------------
 0. ip,in_port=10,dl_src=02:ba:b4:12:dd:5e,nw_src=10.1.0.11, priority 1000, cookie 0x35d7d1c2656ff81
    write_metadata:0x2710
    goto_table:20
20. ip,metadata=0x2710/0xffffff,dl_dst=02:6d:70:00:27:10, priority 100, cookie 0x298c18827b9dc21
    dec_ttl
    set_field:02:6d:70:00:27:10->eth_src
    write_metadata:0x1000000/0x1000000
    goto_table:30
"""
TUNNELED = (
    "Flow: tcp,in_port=10,vlan_tci=0x0000,dl_src=02:ba:b4:12:dd:5e,dl_dst=02:6d:70:00:27:10\n\n"
    + ROUTED
    + """\
30. ip,metadata=0x1002710/0x1ffffff,nw_dst=10.2.0.11, priority 900, cookie 0x7542f3c386604fa
    set_field:02:95:c6:2a:f3:57->eth_dst
    set_field:0x4e20->tun_id
    set_field:169.254.101.12->tun_dst
    output:1
     -> output to native tunnel
     -> tunneling to 169.254.101.12 via br-phy

bridge("br-phy")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Final flow: tcp,tun_src=0.0.0.0,tun_dst=169.254.101.12,gtpu_flags=0,gtpu_msgtype=0,tun_flags=0,metadata=0x1002710,in_port=10,vlan_tci=0x0000,dl_src=02:6d:70:00:27:10,dl_dst=02:95:c6:2a:f3:57,nw_src=10.1.0.11,nw_dst=10.2.0.11,nw_tos=0,nw_ecn=0,nw_ttl=63,nw_frag=no,tp_src=0,tp_dst=80,tcp_flags=0
Megaflow: recirc_id=0,eth,tcp,in_port=10,dl_src=02:ba:b4:12:dd:5e,nw_src=10.1.0.11,nw_dst=10.2.0.11
Datapath actions: set(eth(src=02:6d:70:00:27:10,dst=02:95:c6:2a:f3:57)),tnl_push(tnl_port(1)),5
"""
)
DROPPED = (
    ROUTED
    + """\
30. priority 0, cookie 0x1a6ee1cd0d1b441
    drop

Final flow: tcp,metadata=0x1002710,in_port=10
Datapath actions: drop
"""
)
DELIVERED = """\
bridge("br-int")
----------------
 0. tun_id=0x4e20,in_port=1, priority 1000, cookie 0x2095ad3ab7e27b2
    write_metadata:0x4e20
    goto_table:40
40. ip,metadata=0x4e20/0xffffff,nw_dst=10.2.0.11, priority 1000, cookie 0x3c35e4d8cbe0f4b
    goto_table:41
41. ip,tun_src=169.254.101.11,metadata=0x4e20/0xffffff,nw_src=10.1.0.11, priority 900
    goto_table:42
42. metadata=0xb00004e20/0xffffffff00ffffff, priority 100, cookie 0x3c35e4d8cbe0f4b
    output:11

Final flow: tcp,metadata=0xb00004e20,in_port=1
Datapath actions: 1
"""


def test_traces_are_read_with_the_pipelines_table_names() -> None:
    t = why.decode_trace(TUNNELED)
    assert (t.path, t.outcome, t.tun_dst, t.tun_id) == (
        (0, 20, 30),
        "tunnel",
        "169.254.101.12",
        0x4E20,
    )
    assert t.text() == "classify(0) -> routed_hop(20) -> l3_lookup(30): Geneve to 169.254.101.12, VNI 20000"  # fmt: skip
    assert t.lines[0].startswith("classify(0): ip,in_port=10")
    assert t.arrival("geneve0", "169.254.101.11") == (
        "in_port=geneve0,tun_id=20000,tun_src=169.254.101.11,tun_dst=169.254.101.12,tcp,"
        "dl_src=02:6d:70:00:27:10,dl_dst=02:95:c6:2a:f3:57,nw_src=10.1.0.11,nw_dst=10.2.0.11,"
        "nw_tos=0,nw_ecn=0,nw_ttl=63,nw_frag=no,tp_src=0,tp_dst=80,tcp_flags=0"
    )
    d = why.decode_trace(DROPPED)
    assert (d.outcome, d.where(), d.arrival("geneve0", "x")) == ("drop", "l3_lookup(30)", None)
    out = why.decode_trace(DELIVERED)
    assert (out.outcome, out.port, out.path) == ("output", "11", (0, 40, 41, 42))


def test_trace_steps_follow_the_packet_to_the_destination_port() -> None:
    first, second = why.decode_trace(TUNNELED), why.decode_trace(DELIVERED)
    steps = why.trace_steps("hv1", first, "hv2", "169.254.101.12", "11", second)
    assert [(s.name, s.ok) for s in steps] == [("trace hv1", True), ("trace hv2", True)]
    wrong_host = why.trace_steps("hv1", first, "hv3", "169.254.101.13", "11", None)
    assert wrong_host[0].ok is False and "DST's host is at 169.254.101.13" in wrong_host[0].detail
    dropped = why.trace_steps("hv1", why.decode_trace(DROPPED), "hv2", "x", "11", None)
    assert why.verdict(dropped) == (
        False,
        "BLOCKED at trace hv1: classify(0) -> routed_hop(20) -> l3_lookup(30): dropped in l3_lookup(30)",
    )
    assert why.verdict(why.trace_steps("hv1", None, "hv2", None, None, None)) == (
        True, "REACHABLE (not checked: trace hv1)"
    )  # fmt: skip
