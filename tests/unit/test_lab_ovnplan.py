"""The OVN lab's northbound configuration (meshpeer/lab/ovnplan.py)."""

from __future__ import annotations

from meshpeer.lab import ovnplan, topology
from meshpeer.lab.plan import make_plan

RAW = {
    "hosts": [{"name": "hv1"}, {"name": "hv2"}],
    "vpcs": [
        {"name": "blue", "subnets": ["10.1.0.0/24"]},
        {"name": "red", "subnets": ["10.2.0.0/24", "fd00:2::/64"]},
        {"name": "green", "subnets": ["10.3.0.0/24"]},
    ],
    "endpoints": [
        {"name": "b1", "vpc": "blue", "host": "hv1", "ip": "10.1.0.11"},
        {"name": "r1", "vpc": "red", "host": "hv2", "ip": "10.2.0.11"},
    ],
    # blue-red on both sides; green asks red, red never answers: not a peering
    "peerings": [
        {"vpc": "blue", "peer": "red"},
        {"vpc": "red", "peer": "blue"},
        {"vpc": "green", "peer": "red"},
    ],
}


def commands() -> list[ovnplan.Command]:
    topo = topology.parse(RAW)
    return ovnplan.nb_commands(topo, make_plan(topo, "t", 1))


def test_a_vpc_is_a_switch_behind_a_router_holding_every_gateway() -> None:
    cmds = commands()
    lrp = next(c for c in cmds if c[:3] == ("lrp-add", "lr-red", "lrp-red"))
    assert lrp[4:] == ("10.2.0.1/24", "fd00:2::1/64")
    assert ("lsp-set-options", "lsp-red-lr", "router-port=lrp-red") in cmds


def test_endpoints_are_ports_named_as_the_vms_iface_id_with_their_mac_and_ip() -> None:
    topo = topology.parse(RAW)
    plan = make_plan(topo, "t", 1)
    cmds = ovnplan.nb_commands(topo, plan)
    b1 = next(v for v in plan.vms if v.name == "b1")
    assert ("lsp-add", "ls-blue", "b1") in cmds
    assert ("lsp-set-addresses", "b1", f"{b1.mac} 10.1.0.11") in cmds


def test_only_a_two_sided_peering_joins_routers_with_routes_each_way() -> None:
    cmds = commands()
    peers = [c for c in cmds if c[0] == "lrp-add" and c[-1].startswith("peer=")]
    assert [(c[1], c[2], c[-1]) for c in peers] == [
        ("lr-blue", "lrp-blue-to-red", "peer=lrp-red-to-blue"),
        ("lr-red", "lrp-red-to-blue", "peer=lrp-blue-to-red"),
    ]
    routes = [c[1:] for c in cmds if c[0] == "lr-route-add"]
    # the next hop is the other router's transit address; IPv6 subnets are not routed
    assert routes == [
        ("lr-blue", "10.2.0.0/24", "100.64.0.2"),
        ("lr-red", "10.1.0.0/24", "100.64.0.1"),
    ]
    assert all("green" not in " ".join(c) for c in peers)


def test_router_port_macs_are_unique_unicast_and_local() -> None:
    macs = [c[3] for c in commands() if c[0] == "lrp-add"]
    assert len(set(macs)) == len(macs)
    assert all(int(m.split(":")[0], 16) & 0b11 == 0b10 for m in macs)
