"""Topology validation: every error reported with its path, nothing accepted that the lab can't build."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
import yaml

from meshpeer.lab.topology import TopologyError, parse

SAMPLE = """
controllers: [{name: ctl1}, {name: ctl2}]
hosts: [{name: hv1}, {name: hv2}, {name: hv3}]
vpcs:
  - {name: blue, controller: ctl1, subnets: [10.1.0.0/24]}
  - {name: red,  controller: ctl2, subnets: [10.2.0.0/24, "fd00:2::/64"]}
endpoints:
  - {name: b1, vpc: blue, host: hv1, ip: 10.1.0.11}
  - {name: r1, vpc: red,  host: hv2, ip: 10.2.0.11}
  - {name: r6, vpc: red,  host: hv3, ip: "fd00:2::11"}
peerings:
  - {vpc: blue, peer: red}
  - {vpc: red,  peer: blue, export: {ranges: [10.2.0.0/25]}}
"""


def sample() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SAMPLE)
    return doc


def errors_of(doc: object) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse(doc)
    return info.value.errors


def test_sample_parses_with_defaults() -> None:
    topo = parse(sample())
    assert [h.name for h in topo.hosts] == ["hv1", "hv2", "hv3"]
    assert topo.vpc("red").subnets[1] == ipaddress.ip_network("fd00:2::/64")
    b1 = topo.endpoints[0]
    assert (b1.kind, b1.host, b1.ip) == ("vm", "hv1", ipaddress.ip_address("10.1.0.11"))
    assert topo.peerings[1].export == {"ranges": ["10.2.0.0/25"]}
    assert [p.inbound for p in topo.peerings] == ["all", "all"]
    assert [e.name for e in topo.endpoints_on("hv2")] == ["r1"]


def test_the_issue_example_error_path() -> None:
    doc = sample()
    doc["endpoints"].append({"name": "x9", "vpc": "blue", "host": "hv9", "ip": "10.1.0.99"})
    assert errors_of(doc) == ["endpoints[3].host: unknown host 'hv9'"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(extra=1), "topology.extra: unknown key"),
        (lambda d: d["hosts"][0].update(cpu=4), "hosts[0].cpu: unknown key"),
        (lambda d: d["vpcs"][0].update(subnets=["10.1.0.0/33"]), "vpcs[0].subnets[0]: bad CIDR"),
        (lambda d: d["vpcs"][0].update(subnets=["10.1.0.1/24"]), "vpcs[0].subnets[0]: bad CIDR"),
        (lambda d: d["vpcs"][0].update(subnets=[]), "vpcs[0].subnets: expected a non-empty"),
        (
            lambda d: d["vpcs"][0].update(subnets=["10.1.0.0/24", "10.1.0.128/25"]),
            "vpcs[0].subnets[1]: subnet 10.1.0.128/25 overlaps 10.1.0.0/24",
        ),
        (lambda d: d["endpoints"][0].update(ip="10.9.0.5"), "endpoints[0].ip: 10.9.0.5 is outside"),
        (
            lambda d: d["endpoints"][0].update(ip="10.1.0.1"),
            "endpoints[0].ip: 10.1.0.1 is reserved",
        ),
        (
            lambda d: d["endpoints"][0].update(ip="10.1.0.255"),
            "endpoints[0].ip: 10.1.0.255 is reserved",
        ),
        (lambda d: d["endpoints"][0].update(ip="banana"), "endpoints[0].ip: bad IP address"),
        (lambda d: d["endpoints"][0].update(kind="nat"), "endpoints[0].kind: unknown kind 'nat'"),
        (lambda d: d["endpoints"][0].update(vpc="green"), "endpoints[0].vpc: unknown VPC 'green'"),
        (lambda d: d["endpoints"][0].update(mac="01:00:5e:00:00:01"), "endpoints[0].mac: MAC"),
        (lambda d: d["endpoints"][0].update(mac="zz"), "endpoints[0].mac: bad MAC"),
        (lambda d: d["endpoints"][0].pop("ip"), "endpoints[0].ip: required key missing"),
        (lambda d: d["hosts"].append({"name": "b1"}), "endpoints[0].name: duplicate name 'b1'"),
        (lambda d: d["hosts"].append({"name": "hv1"}), "hosts[3].name: duplicate name 'hv1'"),
        (lambda d: d["hosts"].append({"name": "Hv-4"}), "hosts[3].name: bad name"),
        (
            lambda d: d["hosts"].append({"name": "fabric"}),
            "hosts[3].name: name 'fabric' is reserved",
        ),
        (
            lambda d: d["vpcs"][0].update(controller="ctl9"),
            "vpcs[0].controller: unknown controller",
        ),
        (lambda d: d["vpcs"][0].update(vni=0), "vpcs[0].vni: bad VNI 0"),
        (lambda d: d["vpcs"][0].update(vni=True), "vpcs[0].vni: bad VNI True"),
        (
            lambda d: [v.update(vni=7) for v in d["vpcs"]],
            "vpcs[1].vni: VNI 7 already used by VPC 'blue'",
        ),
        (lambda d: d["peerings"].append({"vpc": "red", "peer": "red"}), "peerings[2].peer: VPC"),
        (lambda d: d["peerings"].append({"vpc": "red", "peer": "blue"}), "peerings[2]: duplicate"),
        (lambda d: d["peerings"][0].update(peer="pink"), "peerings[0].peer: unknown VPC 'pink'"),
        (lambda d: d["peerings"][0].update(inbound="some"), "peerings[0].inbound: expected one"),
        (lambda d: d["peerings"][1].update(inbound=None), "peerings[1].inbound: expected one"),
        (
            lambda d: d["peerings"][1]["export"].update(ranges=["10.2.0.0/8"]),
            "peerings[1].export.ranges[0]: not a network CIDR",
        ),
        (
            lambda d: d["peerings"][1]["export"].update(private_only="yes"),
            "peerings[1].export.private_only: must be true or false",
        ),
        (lambda d: d["peerings"][1]["export"].update(all=True), "peerings[1].export.all: unknown"),
        (
            lambda d: d["peerings"][0].update(import_custom_routes="yes"),
            "peerings[0].import_custom_routes: expected true or false",
        ),
        (lambda d: d["peerings"][0].update(preference=-1), "peerings[0].preference: bad"),
        (lambda d: d["peerings"][0].update(preference=65536), "peerings[0].preference: bad"),
        (lambda d: d["peerings"][0].update(preference=True), "peerings[0].preference: bad"),
        (lambda d: d["peerings"][0].update(preference="high"), "peerings[0].preference: bad"),
    ],
)
def test_each_error_names_its_field(mutate: Any, expected: str) -> None:
    doc = sample()
    mutate(doc)
    errs = errors_of(doc)
    assert any(e.startswith(expected) for e in errs), errs


def test_duplicate_ip_in_one_vpc_rejected_but_allowed_across_vpcs() -> None:
    doc = sample()
    doc["endpoints"].append({"name": "b2", "vpc": "blue", "host": "hv2", "ip": "10.1.0.11"})
    assert errors_of(doc) == ["endpoints[3].ip: 10.1.0.11 already used by 'b1' in VPC 'blue'"]
    doc = sample()
    doc["vpcs"].append({"name": "green", "controller": "ctl1", "subnets": ["10.1.0.0/24"]})
    doc["endpoints"].append({"name": "g1", "vpc": "green", "host": "hv2", "ip": "10.1.0.11"})
    assert len(parse(doc).endpoints) == 4  # separate VPCs may reuse addresses


def test_all_errors_reported_at_once() -> None:
    doc = sample()
    doc["endpoints"][0]["host"] = "hv9"
    doc["endpoints"][1]["ip"] = "10.7.0.1"
    doc["vpcs"][0]["subnets"] = ["nope"]
    assert len(errors_of(doc)) >= 3


@pytest.mark.parametrize("doc", [None, [], "hosts: []", {"vpcs": []}])
def test_not_a_topology(doc: object) -> None:
    assert errors_of(doc)


def test_ilb_backends_and_weights() -> None:
    doc = sample()
    doc["endpoints"].append(
        {
            "name": "lb1",
            "kind": "ilb",
            "vpc": "red",
            "ip": "10.2.0.100",
            "backends": [{"endpoint": "r1", "weight": 3}, {"endpoint": "b1"}],
        }
    )
    ilb = parse(doc).endpoints[-1]
    assert ilb.host is None and not ilb.namespaced
    assert [(b.endpoint, b.weight) for b in ilb.backends] == [("r1", 3), ("b1", 1)]
    bad = copy.deepcopy(doc)
    bad["endpoints"][-1]["backends"] = [{"endpoint": "zz"}, {"endpoint": "r1", "weight": 0}]
    errs = errors_of(bad)
    assert "endpoints[3].backends[0].endpoint: unknown endpoint 'zz'" in errs
    assert any(e.startswith("endpoints[3].backends[1].weight: bad weight 0") for e in errs)
    bad = copy.deepcopy(doc)
    bad["endpoints"][-1]["host"] = "hv1"
    assert "endpoints[3].host: an ILB is a VIP and has no host" in errors_of(bad)


def test_ilb_spillover_backends_are_written_as_its_backends() -> None:
    doc = sample()
    doc["endpoints"].append(
        yaml.safe_load(
            "{name: lb1, kind: ilb, vpc: red, ip: 10.2.0.100, backends: [{endpoint: r1}],"
            " spillover: [{endpoint: b1, weight: 2}]}"
        )
    )
    ilb = parse(doc).endpoints[-1]
    assert [(b.endpoint, b.weight) for b in ilb.spillover] == [("b1", 2)]
    bad = copy.deepcopy(doc)
    bad["endpoints"][-1]["spillover"] = [{"endpoint": "r1"}, {"endpoint": "zz"}]
    errs = errors_of(bad)
    assert "endpoints[3].spillover[0].endpoint: 'r1' is in the ILB's VPC: not a peer's" in errs
    assert "endpoints[3].spillover[1].endpoint: unknown endpoint 'zz'" in errs
    bad = copy.deepcopy(doc)
    bad["endpoints"][0]["spillover"] = [{"endpoint": "r1"}]
    assert "endpoints[0].spillover: only an ILB has spillover" in errors_of(bad)
    # the shard would refuse it once the lab is built: named before anything is (review S6)
    for kept in ([], [0], [1]):
        bad = copy.deepcopy(doc)
        bad["peerings"] = [bad["peerings"][k] for k in kept]
        assert any(
            e.startswith("endpoints[3].spillover[0].endpoint: 'b1' is in VPC 'blue', which")
            for e in errors_of(bad)
        ), errors_of(bad)


def test_a_side_may_let_in_replies_only() -> None:
    doc = sample()
    doc["peerings"][0]["inbound"] = "replies"
    assert [p.inbound for p in parse(doc).peerings] == ["replies", "all"]


def test_a_side_imports_custom_routes_at_a_preference() -> None:
    """The contract's keys (issue 12): ``import_custom_routes`` and ``preference``."""
    doc = sample()
    doc["peerings"][1] = yaml.safe_load(
        "{vpc: red, peer: blue, import_custom_routes: true, preference: 100}"
    )
    blue, red = parse(doc).peerings
    assert (blue.import_custom_routes, blue.preference) == (False, None)
    assert (red.import_custom_routes, red.preference) == (True, 100)


REPLICAS = {"controllers": [{"name": "ctl1", "replicas": 2}, {"name": "ctl2"}], "etcd": {}}


def test_replicas_and_the_etcd_cluster() -> None:
    doc = {**sample(), **REPLICAS}
    topo = parse(doc)
    assert [(c.name, c.replicas) for c in topo.controllers] == [("ctl1", 2), ("ctl2", 1)]
    assert topo.etcd is not None and topo.etcd.members == 3
    assert parse(sample()).etcd is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("etcd"), "controllers[0].replicas: replicas need the etcd store"),
        (lambda d: d["controllers"][0].update(replicas=0), "controllers[0].replicas: bad replicas"),
        (lambda d: d["controllers"][0].update(replicas="2"), "controllers[0].replicas: bad"),
        (lambda d: d["controllers"][0].update(replicas=4), "controllers[0].replicas: bad"),
        (lambda d: d.update(etcd={"members": 2}), "etcd.members: bad members 2: want one of 1, 3"),
        (lambda d: d.update(etcd={"members": True}), "etcd.members: bad members True"),
        (lambda d: d.update(etcd={"nodes": 3}), "etcd.nodes: unknown key"),
        (lambda d: d.update(etcd=[3]), "etcd: expected a mapping"),
        (lambda d: d["hosts"].append({"name": "etcd2"}), "duplicate name 'etcd2'"),
    ],
)
def test_replicas_and_etcd_errors_name_their_field(mutate: Any, expected: str) -> None:
    doc = {**copy.deepcopy(sample()), **copy.deepcopy(REPLICAS)}
    mutate(doc)
    assert any(expected in e for e in errors_of(doc)), errors_of(doc)


def test_etcd_needs_controllers() -> None:
    doc = {**sample(), "etcd": {"members": 1}, "controllers": []}
    doc["vpcs"] = [{k: x for k, x in v.items() if k != "controller"} for v in doc["vpcs"]]
    assert any(e.startswith("etcd: an etcd cluster needs controllers") for e in errors_of(doc))
