"""What the reachability matrix should show, and why, from the topology alone.

A ping from A to B needs both directions: B must be visible to A's VPC (own VPC, or B's VPC
peers A's, both sides configured, and B's side exports B's address to A's VPC) and A to B's
VPC likewise, for the reply. And B's side must let A's VPC in (``inbound: all``): a side with
``inbound: replies`` admits only answers to what its own endpoints opened, so a ping from B to
A passes where a ping from A to B does not (docs/policies.md, "One-way peering").
"""

from __future__ import annotations

from dataclasses import dataclass

from meshpeer.lab.topology import Endpoint, Topology
from policies.export import ExportPolicy, parse_export_policy

OWN = "own VPC"
PEERED = "peered"
HIDDEN = "hidden by policy"
NOT_PEERED = "not peered"
FAMILY = "address family differs"
REPLIES_ONLY = "peer lets in replies only"


@dataclass(frozen=True)
class Expectation:
    reachable: bool
    why: str


def _exports(topo: Topology) -> dict[tuple[str, str], ExportPolicy]:
    """(vpc, peer) -> the export policy of vpc's side of the peering."""
    return {
        (p.vpc, p.peer): parse_export_policy(p.export, f"peerings[{i}].export")
        for i, p in enumerate(topo.peerings)
    }


def expect(topo: Topology, a: Endpoint, b: Endpoint) -> Expectation:
    if a.ip.version != b.ip.version:
        return Expectation(False, FAMILY)
    if a.vpc == b.vpc:
        return Expectation(True, OWN)
    exports = _exports(topo)
    there, back = exports.get((b.vpc, a.vpc)), exports.get((a.vpc, b.vpc))
    if there is None or back is None:
        return Expectation(False, NOT_PEERED)
    if not there.exports_ip(b.ip) or not back.exports_ip(a.ip):
        return Expectation(False, HIDDEN)
    if any(p.vpc == b.vpc and p.peer == a.vpc and p.inbound == "replies" for p in topo.peerings):
        return Expectation(False, REPLIES_ONLY)
    return Expectation(True, PEERED)
