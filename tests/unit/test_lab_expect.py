"""The expected matrix: own VPC, peered, hidden by policy, not peered (not transitive)."""

from __future__ import annotations

import yaml

from meshpeer.lab.expect import HIDDEN, NOT_PEERED, OWN, PEERED, REPLIES_ONLY, expect
from meshpeer.lab.topology import parse

DOC = """
controllers: [{name: ctl1}, {name: ctl2}]
hosts: [{name: hv1}, {name: hv2}]
vpcs:
  - {name: blue, controller: ctl1, subnets: [10.1.0.0/24]}
  - {name: red, controller: ctl2, subnets: [10.2.0.0/24]}
  - {name: green, controller: ctl2, subnets: [10.3.0.0/24]}
endpoints:
  - {name: b1, vpc: blue, host: hv1, ip: 10.1.0.11}
  - {name: b2, vpc: blue, host: hv2, ip: 10.1.0.12}
  - {name: r1, vpc: red, host: hv2, ip: 10.2.0.11}
  - {name: g1, vpc: green, host: hv1, ip: 10.3.0.11}
  - {name: g2, vpc: green, host: hv2, ip: 10.3.0.200}
peerings:
  - {vpc: blue, peer: red}
  - {vpc: red, peer: blue}
  - {vpc: red, peer: green}
  - {vpc: green, peer: red, export: {ranges: [10.3.0.0/25]}}
"""


def test_each_kind_of_cell() -> None:
    topo = parse(yaml.safe_load(DOC))
    ep = {e.name: e for e in topo.endpoints}
    assert expect(topo, ep["b1"], ep["b2"]).why == OWN
    assert expect(topo, ep["b1"], ep["r1"]).why == PEERED
    assert expect(topo, ep["r1"], ep["g1"]).why == PEERED
    assert expect(topo, ep["r1"], ep["g2"]) == expect(topo, ep["g2"], ep["r1"])
    assert expect(topo, ep["r1"], ep["g2"]).why == HIDDEN  # green exports only .0/25
    assert expect(topo, ep["b1"], ep["g1"]).why == NOT_PEERED  # not transitive via red
    assert not expect(topo, ep["b1"], ep["g1"]).reachable


def test_a_side_that_lets_in_replies_only_is_reached_one_way() -> None:
    """Blue lets in only replies from red: b1 reaches r1 (its ping is answered), r1 cannot
    reach b1 (its ping is a new connection into blue)."""
    doc = yaml.safe_load(DOC)
    doc["peerings"][0]["inbound"] = "replies"
    topo = parse(doc)
    ep = {e.name: e for e in topo.endpoints}
    assert expect(topo, ep["b1"], ep["r1"]) == expect(
        parse(yaml.safe_load(DOC)), ep["b1"], ep["r1"]
    )
    assert expect(topo, ep["b1"], ep["r1"]).reachable
    assert expect(topo, ep["r1"], ep["b1"]).why == REPLIES_ONLY
    assert not expect(topo, ep["r1"], ep["b1"]).reachable
    assert expect(topo, ep["b1"], ep["b2"]).why == OWN  # its own VPC is not a peer
