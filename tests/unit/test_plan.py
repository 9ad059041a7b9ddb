"""Lab plan: names, addresses and numbers are unique, stable and survive the state file."""

from __future__ import annotations

import ipaddress
import json

import pytest
import yaml

from meshpeer.controller.model import derived_mac
from meshpeer.lab.plan import LabPlan, Secrets, make_plan
from meshpeer.lab.topology import parse
from tests.unit.test_topology import SAMPLE


def plan(lab: str = "mp", index: int = 3) -> LabPlan:
    return make_plan(parse(yaml.safe_load(SAMPLE)), lab, index)


def test_every_namespace_carries_the_lab_prefix_and_is_unique() -> None:
    p = plan("t7")
    names = p.all_netns()
    assert len(names) == len(set(names)) == 1 + 2 + 3 + 3
    assert all(n.startswith("t7-") for n in names)


def test_addresses_are_link_local_and_per_lab() -> None:
    p, q = plan(index=3), plan(index=4)
    for pl in (p, q):
        for ip in (
            [pl.root_mgmt_ip] + [h.mgmt_ip for h in pl.hosts] + [h.underlay_ip for h in pl.hosts]
        ):
            assert ipaddress.ip_address(ip) in ipaddress.ip_network("169.254.0.0/16")
        for h in pl.hosts:
            assert ipaddress.ip_address(h.mgmt_ip) in ipaddress.ip_network(pl.mgmt_subnet)
    assert p.mgmt_subnet != q.mgmt_subnet and p.underlay_subnet != q.underlay_subnet


def test_switch_identities_are_distinct() -> None:
    p = plan()
    dpids = [h.br_int_dpid for h in p.hosts] + [h.br_phy_dpid for h in p.hosts]
    assert len(set(dpids)) == len(dpids) and all(len(d) == 16 for d in dpids)
    macs = [h.underlay_mac for h in p.hosts]
    assert len(set(macs)) == len(macs)
    assert len({h.mgmt_ip for h in p.hosts} | {c.mgmt_ip for c in p.controllers}) == 5


def test_vm_ports_gateways_and_vnis() -> None:
    p = plan()
    b1 = next(v for v in p.vms if v.name == "b1")
    assert (b1.host_port, b1.ofport, b1.gateway, b1.prefixlen) == ("v-b1", 10, "10.1.0.1", 24)
    r6 = next(v for v in p.vms if v.name == "r6")
    assert (r6.gateway, r6.prefixlen) == ("fd00:2::1", 64)
    assert p.vnis == {"blue": 10000, "red": 20000}  # each from its controller's block
    assert b1.vni == 10000 and r6.vni == 20000
    assert all(len(v.host_port) <= 15 for v in p.vms)


def test_explicit_vni_is_kept_and_skipped_by_allocation() -> None:
    doc = yaml.safe_load(SAMPLE)
    doc["vpcs"][1]["vni"] = 10000
    for v in doc["vpcs"]:
        v.pop("controller")
    doc.pop("controllers")
    p = make_plan(parse(doc), "mp", 1)
    assert p.vnis == {"blue": 1001, "red": 10000}


def test_derived_mac_is_stable_unicast_and_local() -> None:
    ip = ipaddress.ip_address("10.1.0.11")
    mac = derived_mac("blue", ip)
    assert mac == derived_mac("blue", ip) != derived_mac("red", ip)
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2


def test_plan_round_trips_through_json() -> None:
    p = plan()
    assert LabPlan.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_netns_lookup() -> None:
    p = plan("ab")
    assert p.netns_of("hv2") == "ab-hv2"
    assert p.netns_of("b1") == "ab-b1"
    assert p.netns_of("ctl1") == "ab-ctl1"
    assert p.netns_of("fabric") == "ab-fabric"
    assert p.netns_of("nope") is None


@pytest.mark.parametrize(("lab", "index"), [("Bad", 1), ("toolongname", 1), ("mp", 0), ("mp", 100)])
def test_bad_lab_name_or_index(lab: str, index: int) -> None:
    with pytest.raises(ValueError):
        plan(lab, index)


def test_tls_is_on_by_default_and_plain_http_survives_the_state_file() -> None:
    """'lab up' serves HTTPS verified by the lab's CA unless '--plain-http' said otherwise; the
    choice is in the state file, so status, tests and benchmarks see the same URLs."""
    from meshpeer.lab import controllers, ohcs

    topo, keys = parse(yaml.safe_load(SAMPLE)), Secrets("a" * 32, "b" * 64, "c" * 32)
    on = make_plan(topo, "mp", 3, keys)
    c = on.controllers[0]
    assert on.tls and on.ca_file == f"{on.state_dir}/pki/ca.pem"
    assert controllers.url(on, c) == f"https://{c.mgmt_ip}:{c.rest_port}"
    conf = controllers.config_text(on, c)
    assert f"ca_file = {on.ca_file}" in conf and "tls_cert_file = " in conf
    assert f"ca_file = {on.ca_file}" in ohcs.config_text(on, on.hosts[0])
    off = make_plan(topo, "mp", 3, keys, tls=False)
    back = LabPlan.from_json(json.loads(json.dumps(off.to_json())))
    assert back == off and back.ca_file is None
    assert controllers.url(back, c) == f"http://{c.mgmt_ip}:{c.rest_port}"
    conf = controllers.config_text(back, c)
    assert "tls_cert_file" not in conf and "ca_file" not in conf


def test_etcd_members_and_replicas_are_planned_and_configured() -> None:
    """``etcd: {members: 3}``: a namespace per member on the management network; a shard of
    two replicas: one config each, ports 8080 and 8081, the etcd store, and the directory lists
    both (the hosts find the leader there)."""
    from meshpeer.lab import controllers

    raw = yaml.safe_load(SAMPLE)
    raw["controllers"] = [{"name": "ctl1", "replicas": 2}, *raw["controllers"][1:]]
    raw["etcd"] = {"members": 3}
    topo, keys = parse(raw), Secrets("a" * 32, "b" * 64, "c" * 32)
    p = make_plan(topo, "mp", 3, keys)
    assert [(m.name, m.netns, m.mgmt_ip) for m in p.etcd] == [
        ("etcd1", "mp-etcd1", "169.254.3.2"),
        ("etcd2", "mp-etcd2", "169.254.3.3"),
        ("etcd3", "mp-etcd3", "169.254.3.4"),
    ]
    assert p.netns_of("etcd2") == "mp-etcd2" and p.etcd[0].data_dir.startswith(p.state_dir)
    assert LabPlan.from_json(json.loads(json.dumps(p.to_json()))) == p
    c = p.controllers[0]
    a, b = controllers.replicas(c)
    assert (a.name, b.name, b.port) == ("ctl1-a", "ctl1-b", c.rest_port + 1)
    conf = controllers.config_text(p, c, b)
    assert "store = etcd" in conf and "replica = b" in conf
    assert f"listen_port = {c.rest_port + 1}" in conf
    assert f"etcd_endpoints = {','.join(p.etcd_endpoints)}" in conf
    assert f"advertise_url = https://{c.mgmt_ip}:{c.rest_port + 1}" in conf
    shard = controllers.directory_doc(p, topo)["shards"]["ctl1"]
    assert shard["replicas"] == [controllers.url(p, c), controllers.replica_url(p, c, b)]
    assert "replicas" not in controllers.directory_doc(p, topo)["shards"]["ctl2"]
    single = controllers.replicas(p.controllers[1])
    assert [(r.name, r.replica) for r in single] == [("ctl2", None)]  # as before replicas
