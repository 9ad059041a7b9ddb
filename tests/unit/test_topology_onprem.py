"""The ``onprem`` topology key (issue 12's lab contract): parsed, validated with paths, planned."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
import yaml

from meshpeer.lab import onprem
from meshpeer.lab.plan import LabPlan, make_plan
from meshpeer.lab.topology import parse
from tests.unit.test_topology import errors_of

DOC = """
controllers: [{name: ctl1}]
hosts: [{name: hv1}, {name: hv2}]
vpcs:
  - {name: blue, controller: ctl1, subnets: [10.1.0.0/24], asn: 64512}
  - {name: red, controller: ctl1, subnets: [10.2.0.0/24]}
endpoints:
  - {name: v1, vpc: blue, host: hv1, ip: 10.1.0.5, kind: vpn}
  - {name: b1, vpc: blue, host: hv2, ip: 10.1.0.11}
onprem:
  - {name: dc1, asn: 65001, attach: v1, prefixes: [192.168.10.0/24],
     hosts: [{name: d1, ip: 192.168.10.10}]}
"""


def doc() -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load(DOC)
    return d


def test_the_contract_example_parses() -> None:
    topo = parse(doc())
    (dc1,) = topo.onprem
    assert (dc1.name, dc1.asn, dc1.attach) == ("dc1", 65001, "v1")
    assert dc1.prefixes == (ipaddress.ip_network("192.168.10.0/24"),)
    assert [(h.name, str(h.ip)) for h in dc1.hosts] == [("d1", "192.168.10.10")]
    assert (topo.vpc("blue").asn, topo.vpc("red").asn) == (64512, None)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("asn",), 0, "onprem[0].asn: bad AS number 0"),
        (("attach",), "b1", "onprem[0].attach: 'b1' is a vm"),
        (("attach",), "zz", "onprem[0].attach: unknown endpoint 'zz'"),
        (("prefixes",), ["fd00::/64"], "onprem[0].prefixes[0]: fd00::/64: want an IPv4 prefix"),
        (("prefixes",), [], "onprem[0].prefixes: expected a non-empty list"),
        (("hosts", 0, "ip"), "192.168.11.10", "onprem[0].hosts[0].ip: 192.168.11.10 is in none"),
        (("hosts", 0, "ip"), "192.168.10.1", "onprem[0].hosts[0].ip: 192.168.10.1 is reserved"),
        (("hosts", 0, "name"), "b1", "onprem[0].hosts[0].name: duplicate name 'b1'"),
        (("color",), "x", "onprem[0].color: unknown key"),
    ],
)
def test_bad_onprem_is_reported_with_its_path(
    path: tuple[Any, ...], value: object, expected: str
) -> None:
    d = copy.deepcopy(doc())
    target = d["onprem"][0]
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    errors = errors_of(d)
    assert any(e.startswith(expected) for e in errors), errors


def test_a_vpc_asn_out_of_range() -> None:
    d = doc()
    d["vpcs"][0]["asn"] = 70000
    assert errors_of(d)[0] == "vpcs[0].asn: bad AS number 70000: want an integer 1..65535"


@pytest.mark.parametrize(("vpc_asn", "router_asn"), [(64512, 64512), (None, 64512), (65010, 65010)])
def test_a_router_in_its_vpcs_own_as_is_refused_with_its_path(
    vpc_asn: int | None, router_asn: int
) -> None:
    """Found by a review: the parser took it and the controller refused the session later,
    so ``lab up`` failed halfway (the VPC's AS is 64512 when the topology gives none)."""
    d = doc()
    d["vpcs"][0].pop("asn")
    if vpc_asn is not None:
        d["vpcs"][0]["asn"] = vpc_asn
    d["onprem"][0]["asn"] = router_asn
    assert errors_of(d) == [
        f"onprem[0].asn: {router_asn} is VPC 'blue''s own AS number: only eBGP is supported"
    ]


@pytest.mark.parametrize("asn", [23456, 65535])
def test_reserved_as_numbers_are_refused_with_their_path(asn: int) -> None:
    d = doc()
    d["onprem"][0]["asn"] = asn
    d["vpcs"][1]["asn"] = asn
    errors = errors_of(d)
    assert [e.split(":")[0] for e in errors] == ["vpcs[1].asn", "onprem[0].asn"], errors
    assert all(f"AS number {asn} is " in e for e in errors)


def test_one_router_per_endpoint() -> None:
    d = doc()
    d["onprem"].append({"name": "dc2", "asn": 65002, "attach": "v1", "prefixes": ["10.9.0.0/24"]})
    assert errors_of(d) == ["onprem[1].attach: 'v1' already has router 'dc1'"]


def test_plan_puts_the_endpoint_in_the_routers_namespace() -> None:
    plan = make_plan(parse(doc()), "t", 3)
    (r,) = plan.onprem
    assert plan.netns_of("v1") == plan.netns_of("dc1") == "t-dc1"
    assert plan.netns_of("d1") == "t-d1"
    assert plan.all_netns().count("t-dc1") == 1
    assert (r.shard_ip, r.router_ip, r.vpc_asn, r.controller_netns) == (
        "169.254.250.1", "169.254.250.2", 64512, "t-ctl1",
    )  # fmt: skip
    assert r.lans == (("lan0", "192.168.10.1/24"),)
    (h,) = plan.onprem_hosts
    assert (h.gateway, h.lan, h.router_port) == ("192.168.10.1", "lan0", "h-d1")
    assert LabPlan.from_json(plan.to_json()) == plan


def test_bird_config_announces_the_prefixes_file_and_peers_the_shard() -> None:
    (r,) = make_plan(parse(doc()), "t", 3).onprem
    conf = onprem.bird_conf(r)
    assert "local 169.254.250.2 as 65001;" in conf
    assert "neighbor 169.254.250.1 as 64512;" in conf
    assert f'include "{r.prefixes_file}";' in conf
    assert onprem.prefixes_text(["192.168.10.0/24"]) == "route 192.168.10.0/24 blackhole;\n"
    assert onprem.birdc_targeted(r, ["birdc", "show", "route"]) == [
        "birdc", "-s", r.socket, "show", "route",
    ]  # fmt: skip
    assert onprem.birdc_targeted(r, ["ip", "route"]) == ["ip", "route"]
