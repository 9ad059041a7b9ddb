"""VM ports at whatever ofport OVS gives them, the tunnel found by what it is (issue 21 part 4).

OVS numbers ports from 1 in the order they are added, so a VM attached with a plain
``ovs-vsctl add-port br-int tapX`` may get ofport 1..9, and the tunnel port need not be at 1.
The OHC reads both from OVSDB (``ohc/ports.py``); packets are traced through the compiled
flows of two hosts numbered that way.
"""

from __future__ import annotations

import logging
from typing import Any

from ohc.compiler import compile_host, gateway_mac
from ohc.model import HostView, Skipped
from ohc.ports import COLUMNS, InterfaceRow, classify, new_skips, parse_rows
from tests.unit.test_ohc_compiler import IPV4, full_intent, host_view, load, only, publish

NO_MAP: list[Any] = ["map", []]
NONE: list[Any] = ["set", []]


def row(name: str, ofport: int | None, iface: str | None = None, vpc: str | None = None,
        kind: str = "", options: dict[str, str] | None = None,
        error: str | None = None) -> InterfaceRow:  # fmt: skip
    ids = {k: v for k, v in (("iface-id", iface), ("vpc", vpc)) if v is not None}
    return InterfaceRow(name, kind, ofport, ids, options or {}, error)


def geneve(name: str, ofport: int | None) -> InterfaceRow:
    return row(name, ofport, kind="geneve", options={"remote_ip": "flow", "key": "flow"})


# --- reading OVSDB ------------------------------------------------------------------------------


def test_parse_rows_reads_ovs_vsctl_json() -> None:
    doc = {
        "headings": list(COLUMNS),
        "data": [
            ["geneve0", "geneve", 3, NO_MAP, ["map", [["key", "flow"], ["remote_ip", "flow"]]], NONE],
            ["tap1", "", 1, ["map", [["iface-id", "b1"], ["vpc", "blue"]]], NO_MAP, NONE],
            ["tap9", "", -1, ["map", [["iface-id", "b9"], ["vpc", "blue"]]], NO_MAP,
             "could not open network device tap9 (No such device)"],
            ["new0", "", NONE, NO_MAP, NO_MAP, NONE],
        ],
    }  # fmt: skip
    rows = parse_rows(doc)
    assert rows[0] == geneve("geneve0", 3)
    assert rows[1] == row("tap1", 1, "b1", "blue")
    assert rows[2] == row(
        "tap9", -1, "b9", "blue", error="could not open network device tap9 (No such device)"
    )
    assert rows[3] == row("new0", None)


def test_vm_ports_at_any_ofport_and_the_tunnel_by_its_type() -> None:
    got = classify(
        [
            row("tap1", 1, "b1", "blue"),  # attached first: OVS gave it 1
            row("tap2", 2, "b2", "blue"),
            geneve("geneve0", 3),  # attached after the VMs, no ofport_request
            row("br-int", 65534, kind="internal"),
            row("v-r1", 12, "r1", "red"),
        ]
    )
    assert got.vms == {("blue", "b1"): 1, ("blue", "b2"): 2, ("red", "r1"): 12}
    assert got.tunnel == 3
    assert got.skipped == ()


def test_what_is_skipped_says_why() -> None:
    got = classify(
        [
            geneve("geneve0", 1),
            geneve("geneve1", 7),
            row("novpc", 2, "b1"),
            row("tun", 3, "x1", "blue", kind="vxlan"),
            row("gone", -1, "b9", "blue", error="could not open network device gone"),
            row("early", None, "b8", "blue"),
            row("tapA", 4, "b2", "blue"),
            row("tapB", 5, "b2", "blue"),
        ]
    )
    assert got.tunnel == 1 and got.vms == {("blue", "b2"): 4}
    reasons = {s.key: s.reason for s in got.skipped}
    assert all(s.service == "port" for s in got.skipped)
    assert reasons == {
        "geneve1": "a second flow-based Geneve port (using geneve0)",
        "novpc": "external_ids:iface-id=b1 without external_ids:vpc",
        "tun": "a vxlan interface cannot be a VM port (iface-id=x1)",
        "gone": "OVS could not attach it (ofport -1): could not open network device gone",
        "early": "no OpenFlow port yet",
        "tapB": "blue/b2 is already attached as tapA",
    }
    assert classify([geneve("geneve0", None)]).tunnel is None


# --- the host view and the compiled flows ---------------------------------------------------------


def view(host: str, ofports: dict[tuple[str, str], int], tunnel: int | None) -> tuple[HostView, tuple[Skipped, ...]]:  # fmt: skip
    """``host``'s view of full_intent(), its ports numbered as given."""
    i = full_intent()
    return host_view(i, publish(i), host, ofports, tunnel)


# As OVS numbers ports added with a plain `ovs-vsctl add-port` (no ofport_request): hv1's VMs
# first (1-4), then its tunnel (5); on hv2 the tunnel came first (1), then its VMs (2, 3).
HV1 = {("blue", "b1"): 1, ("blue", "b2"): 2, ("red", "r4"): 3, ("green", "g1"): 4}
HV2 = {("blue", "b3"): 2, ("red", "r1"): 3}
TUNNEL = {"hv1": 5, "hv2": 1}


def test_vm_ports_below_10_are_attached() -> None:
    v, skipped = view("hv1", HV1, TUNNEL["hv1"])
    assert {(p.vpc, p.name): p.ofport for p in v.local_ports} == HV1
    assert not [s for s in skipped if s.service == "endpoint"], skipped


def test_a_vm_port_cannot_be_the_tunnel_port() -> None:
    v, skipped = view("hv1", HV1, 2)  # a view claiming b2's ofport for the tunnel
    assert ("blue", "b2") not in {(p.vpc, p.name) for p in v.local_ports}
    assert any("ofport 2 is the tunnel port's" in s.reason for s in skipped), skipped


def test_packets_cross_hosts_through_the_tunnel_ports_ovs_gave() -> None:
    i = full_intent()
    tables = {h: load(compile_host(view(h, ports, TUNNEL[h])[0])) for h, ports in (("hv1", HV1), ("hv2", HV2))}  # fmt: skip
    b1, b2, b3 = (i.endpoints[("blue", n)] for n in ("b1", "b2", "b3"))
    blue = i.vpcs["blue"].vni
    pkt = {"eth_src": b1.mac, "eth_type": IPV4, "ipv4_src": str(b1.ip), "ip_proto": 6, "ip_ttl": 64}

    same_host = tables["hv1"].trace(pkt | {"eth_dst": b2.mac, "ipv4_dst": str(b2.ip)}, in_port=1)
    assert same_host.ports() == {2} and same_host.is_output(2, eth_dst=b2.mac), str(same_host)

    sent = tables["hv1"].trace(
        pkt | {"eth_dst": gateway_mac(blue), "ipv4_dst": str(b3.ip)}, in_port=1
    )
    out = only(sent)
    hv1_ip, hv2_ip = str(i.hosts["hv1"].underlay_ip), str(i.hosts["hv2"].underlay_ip)
    assert out.port == TUNNEL["hv1"] and out.has(tunnel_id=blue, tun_ipv4_dst=hv2_ip), str(sent)

    arriving = {
        k: v for k, v in out.packet.items() if k not in ("in_port", "metadata", "tun_ipv4_dst")
    }
    got = tables["hv2"].trace(arriving | {"tun_ipv4_src": hv1_ip}, in_port=TUNNEL["hv2"])
    assert got.ports() == {HV2[("blue", "b3")]}, str(got)
    # A VM port is not the tunnel: the same packet sent by hv2's b3 port is not delivered.
    assert (
        not tables["hv2"]
        .trace(arriving | {"tun_ipv4_src": hv1_ip}, in_port=HV2[("blue", "b3")])
        .ports()
    )


def test_without_a_tunnel_port_local_traffic_still_works() -> None:
    i = full_intent()
    v, _ = view("hv1", HV1, None)
    table = load(compile_host(v))
    b1, b2, b3 = (i.endpoints[("blue", n)] for n in ("b1", "b2", "b3"))
    pkt = {"eth_src": b1.mac, "eth_type": IPV4, "ipv4_src": str(b1.ip), "ip_proto": 6, "ip_ttl": 64}
    assert table.trace(pkt | {"eth_dst": b2.mac, "ipv4_dst": str(b2.ip)}, in_port=1).ports() == {2}
    gw = gateway_mac(i.vpcs["blue"].vni)
    assert not table.trace(pkt | {"eth_dst": gw, "ipv4_dst": str(b3.ip)}, in_port=1).ports()


def test_skips_are_logged_once_ports_at_warning() -> None:
    port = Skipped("port", "tapx", "external_ids:iface-id=x without external_ids:vpc")
    endpoint = Skipped("endpoint", "blue.b9", "no OpenFlow port yet (interface not attached)")
    dest = Skipped("destination", "red/r7", "not placed on a host (host_ip is null)")
    first, logged = new_skips((port, dest, endpoint), frozenset())
    assert first == [(logging.INFO, dest), (logging.WARNING, endpoint), (logging.WARNING, port)]
    again, logged = new_skips((port, dest, endpoint), logged)
    assert again == []  # the next sync: nothing new to say
    fixed, logged = new_skips((dest,), logged)
    assert fixed == []
    back, _ = new_skips((dest, port), logged)
    assert back == [(logging.WARNING, port)]  # came back after it was fixed: said again


def test_an_interface_waiting_for_its_number_asks_for_another_read() -> None:
    waiting = classify([row("tap1", None, "b1", "blue")])
    assert waiting.numbering  # OVS has not written its ofport yet: the OHC reads again soon
    assert not classify([row("tap1", 3, "b1", "blue")]).numbering
    assert not classify([row("tap1", -1, "b1", "blue", error="no such device")]).numbering
