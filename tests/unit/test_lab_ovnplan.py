"""The OVN lab's northbound configuration (meshpeer/lab/ovnplan.py)."""

from __future__ import annotations

import pytest

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


ZONED_ENDPOINTS = [
    {"name": "b1", "vpc": "blue", "host": "hv1", "ip": "10.1.0.11"},
    {"name": "r1", "vpc": "red", "host": "hv2", "ip": "10.2.0.11"},
    {"name": "g1", "vpc": "green", "host": "hv3", "ip": "10.3.0.11"},
]
ZONED = {
    "controllers": [{"name": "ctl1"}, {"name": "ctl2"}],
    "hosts": [{"name": "hv1"}, {"name": "hv2"}, {"name": "hv3"}],
    "vpcs": [
        {"name": "blue", "controller": "ctl1", "subnets": ["10.1.0.0/24"]},
        {"name": "red", "controller": "ctl2", "subnets": ["10.2.0.0/24"]},
        {"name": "green", "controller": "ctl2", "subnets": ["10.3.0.0/24"]},
    ],
    "endpoints": ZONED_ENDPOINTS,
    "peerings": [
        {"vpc": "blue", "peer": "red"},
        {"vpc": "red", "peer": "blue"},
        {"vpc": "red", "peer": "green"},
        {"vpc": "green", "peer": "red"},
    ],
}


def zoned() -> tuple[topology.Topology, list[list[ovnplan.Command]]]:
    topo = topology.parse(ZONED)
    plan = make_plan(topo, "t", 1)
    return topo, [ovnplan.nb_commands(topo, plan, z) for z in range(ovnplan.zone_count(topo))]


def test_each_shard_is_a_zone_holding_its_vpcs_and_the_hosts_of_their_vms() -> None:
    topo, (az1, az2) = zoned()
    plan = make_plan(topo, "t", 1)
    assert ovnplan.vpc_zones(topo) == {"blue": 0, "red": 1, "green": 1}
    assert ovnplan.host_zones(topo, plan) == {"hv1": 0, "hv2": 1, "hv3": 1}
    assert ovnplan.gateways(topo, plan) == {0: "hv1", 1: "hv2"}
    assert ("ls-add", "ls-blue") in az1 and ("ls-add", "ls-blue") not in az2
    assert ("lsp-add", "ls-green", "g1") in az2 and ("lsp-add", "ls-green", "g1") not in az1
    # red-green, inside zone 2: peer router ports, as without zones
    assert any(c[:3] == ("lrp-add", "lr-red", "lrp-red-to-green") for c in az2)
    assert ovnplan.cross_pairs(topo) == [("blue", "red")]


def test_a_peering_across_zones_is_a_gateway_port_on_the_transit_switch_each_side() -> None:
    _, (az1, az2) = zoned()
    for cmds, me, other, ip, via, gw in (
        (az1, "blue", "red", "100.64.0.1/30", "100.64.0.2", "hv1"),
        (az2, "red", "blue", "100.64.0.2/30", "100.64.0.1", "hv2"),
    ):
        lrp = f"lrp-{me}-to-{other}"
        add = next(c for c in cmds if c[:3] == ("lrp-add", f"lr-{me}", lrp))
        assert add[4:] == (ip,), "no peer=: the other router is in the other zone"
        assert ("lrp-set-gateway-chassis", lrp, gw, "1") in cmds
        assert ("lsp-add", "ts-blue-red", f"lsp-{me}-to-{other}") in cmds
        assert ("lsp-set-options", f"lsp-{me}-to-{other}", f"router-port={lrp}") in cmds
        routes = [c[1:] for c in cmds if c[0] == "lr-route-add" and c[1] == f"lr-{me}"]
        assert (f"lr-{me}", "10.2.0.0/24" if me == "blue" else "10.1.0.0/24", via) in routes


def test_a_host_with_vms_of_two_zones_is_refused() -> None:
    b2 = {"name": "b2", "vpc": "blue", "host": "hv2", "ip": "10.1.0.12"}
    raw = {**ZONED, "endpoints": [*ZONED_ENDPOINTS, b2]}
    topo = topology.parse(raw)
    with pytest.raises(ValueError, match="hv2"):
        ovnplan.host_zones(topo, make_plan(topo, "t", 1))


def test_each_zone_has_its_own_central_namespace_address_and_run_directory() -> None:
    topo = topology.parse(ZONED)
    plan = make_plan(topo, "t", 1)
    c0, c1 = ovnplan.central(plan, 0), ovnplan.central(plan, 1)
    mgmt = plan.mgmt_subnet.split("/")[0].rsplit(".", 1)[0]
    assert (c0.netns, c0.ip, c0.rundir) == ("t-ovnc", f"{mgmt}.5", f"{plan.state_dir}/ovnc")
    assert (c1.netns, c1.ip, c1.rundir) == ("t-ovnc1", f"{mgmt}.6", f"{plan.state_dir}/ovnc1")
    # what ovn-controller dials, what the SB listens on, where the IDL connects
    assert c1.sb_remote == f"tcp:{mgmt}.6:6642" and c1.sb_listen == f"ptcp:6642:{mgmt}.6"
    assert c1.nb_sock == f"{plan.state_dir}/ovnc1/ovnnb_db.sock"
    ic = ovnplan.interconnect(plan)
    assert (ic.nb_remote, ic.sb_remote) == (f"tcp:{mgmt}.5:6645", f"tcp:{mgmt}.5:6646")
    with pytest.raises(ValueError, match="at most 5"):
        ovnplan.central(plan, ovnplan.MAX_ZONES)


def test_transit_subnets_are_disjoint_slash_30s_until_the_pool_runs_out() -> None:
    assert [str(ip) for k in (0, 1) for ip in ovnplan.transit_ips(k)] == [
        "100.64.0.1", "100.64.0.2", "100.64.0.5", "100.64.0.6",
    ]  # fmt: skip
    last = ovnplan.TRANSIT.num_addresses // 4 - 1
    assert str(ovnplan.transit_ips(last)[1]) == "100.64.255.254"
    with pytest.raises(ValueError, match="more than 16384 peerings"):
        ovnplan.transit_ips(last + 1)


def test_commands_join_into_one_nbctl_transaction() -> None:
    cmds = ovnplan.port_commands("red", "p1", "02:00:00:00:00:01", "10.2.1.10")
    assert ovnplan.nbctl_args(cmds) == [
        "--", "lsp-add", "ls-red", "p1",
        "--", "lsp-set-addresses", "p1", "02:00:00:00:00:01 10.2.1.10",
    ]  # fmt: skip
