"""Export policies, one-sided peerings and overlap checks on a whole lab (issue 5).

On tests/e2e/topologies/policies.yaml: hub VPC red exports differently to each of its peers
(default to blue, 10.2.0.0/25 to green, private space only to yellow), which the reachability
matrix and red's multiplexer must both show; red -> orange is configured on red's side only
until a test configures orange's; and a VPC overlapping red cannot peer with it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers
from meshpeer.lab.cli import load_topology
from meshpeer.lab.expect import HIDDEN, NOT_PEERED, PEERED, expect
from meshpeer.lab.probe import until
from meshpeer.lab.topology import Topology
from tests.e2e.traffic import Pinger
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, lab_cli, running
from tests.support.wait import wait_for

TOPOLOGY = "policies.yaml"


def topology() -> Topology:
    return load_topology(os.path.join(E2E_TOPOLOGIES, TOPOLOGY))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """policies.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def client(lab: Lab, ctl: str) -> Client:
    return controllers.client_for(lab.plan, ctl)


# --- (a) one hub, a different export policy per peer ----------------------------------------


def test_matrix_follows_each_peers_export_policy(lab: Lab) -> None:
    topo = topology()
    pairs = json.loads(lab_cli(lab.name, "matrix", "--json").stdout)["pairs"]
    got = {(p["src"], p["dst"]): p["reachable"] for p in pairs}
    names = [e.name for e in topo.endpoints]
    assert set(got) == {(a, b) for a in names for b in names if a != b}
    wrong, why = [], {}
    for a in topo.endpoints:
        for b in topo.endpoints:
            if a.name == b.name:
                continue
            want = expect(topo, a, b)
            why[(a.name, b.name)] = want.why
            if got[(a.name, b.name)] != want.reachable:
                wrong.append(f"{a.name} -> {b.name}: got {got[(a.name, b.name)]}, want {want}")
    print(f"\n[{lab.name}] matrix: {sum(got.values())}/{len(got)} ordered pairs reachable")
    assert not wrong, "\n".join(wrong)
    # The matrix is not trivially all-or-nothing: each policy shows in it.
    assert why[("b1", "r3")] == PEERED  # default export: red's public subnet too
    assert why[("g1", "r1")] == PEERED and why[("g1", "r2")] == HIDDEN  # ranges 10.2.0.0/25
    assert why[("g1", "r3")] == HIDDEN
    assert why[("y1", "r2")] == PEERED and why[("y1", "r3")] == HIDDEN  # private_only
    assert why[("o1", "r1")] == NOT_PEERED  # red's side only
    assert why[("b1", "g1")] == NOT_PEERED  # not transitive


def test_multiplexer_publishes_one_service_set_per_distinct_policy(lab: Lab) -> None:
    ctl2 = client(lab, "ctl2")
    policy = {
        peer: ctl2.get(f"/v1/vpcs/red/peerings/red-{peer}")["export_policy_id"]
        for peer in ("blue", "green", "yellow", "orange")
    }
    assert len({policy[p] for p in ("blue", "green", "yellow")}) == 3, policy
    assert policy["orange"] == policy["blue"]  # both default
    mux = ctl2.get("/v1/multiplexer")
    print(f"\nctl2 multiplexer: {json.dumps(mux, sort_keys=True)}")
    red_sets = mux["service_sets_by_vpc"]["red"]
    assert set(red_sets) == {policy[p] for p in ("blue", "green", "yellow")}, red_sets
    # orange's peering is INACTIVE (one side only): no set serves it.
    assert {p: sorted(v) for p, v in red_sets.items()} == {
        policy["blue"]: ["red-blue"],
        policy["green"]: ["red-green"],
        policy["yellow"]: ["red-yellow"],
    }


# --- (b) a peering configured on one side only -----------------------------------------------


def test_one_sided_peering_is_inactive_until_the_other_side_is_configured(lab: Lab) -> None:
    ctl1, ctl2 = client(lab, "ctl1"), client(lab, "ctl2")
    red_side = ctl2.get("/v1/vpcs/red/peerings/red-orange")
    print(f"\nred-orange, red's side only: {red_side['state']}: {red_side['state_details']}")
    assert red_side["state"] == "INACTIVE"
    assert "orange" in red_side["state_details"]
    assert "not configured" in red_side["state_details"]
    assert not lab.ping("o1", "r1", count=2)
    assert not lab.ping("r1", "o1", count=2)

    def active() -> bool:
        return bool(ctl2.get("/v1/vpcs/red/peerings/red-orange")["state"] == "ACTIVE")

    with Pinger(lab.vm("o1"), lab.vm("r1").ip, count=100000) as pinger:
        wait_for(lambda: pinger.unanswered() >= 3, 30, what="o1 -> r1 requests sent")
        assert not pinger.replies(), "o1 -> r1 answered while only red's side was configured"
        t_sent = time.time()
        ctl1.post("/v1/vpcs/orange/peerings", {"name": "orange-red", "peer_vpc": "red"})
        try:
            t_post = time.time()
            to_active = until(active, 30)
            t_active = time.time()
            assert to_active is not None, ctl2.get("/v1/vpcs/red/peerings/red-orange")
            first = pinger.wait_reply_after(t_sent, 30)
            pinger.stop()
            assert first is not None, "o1 -> r1 did not work within 30 s of configuring orange"
            print(
                f"orange's side configured: POST took {(t_post - t_sent) * 1000:.0f} ms; red's "
                f"side seen ACTIVE {(t_active - t_sent) * 1000:.0f} ms and the first o1 -> r1 "
                f"reply (100 pps) {(first - t_sent) * 1000:.0f} ms after the POST was sent"
            )
            assert ctl1.get("/v1/vpcs/orange/peerings/orange-red")["state"] == "ACTIVE"
            assert lab.ping("r1", "o1") and lab.ping("o1", "r3")
            assert not lab.ping("o1", "b1")  # still not transitive
            # orange shares blue's (default) policy: still three service sets on red, not four.
            red_sets = ctl2.get("/v1/multiplexer")["service_sets_by_vpc"]["red"]
            pid = ctl2.get("/v1/vpcs/red/peerings/red-blue")["export_policy_id"]
            assert len(red_sets) == 3, red_sets
            assert sorted(red_sets[pid]) == ["red-blue", "red-orange"], red_sets
        finally:
            ctl1.delete("/v1/vpcs/orange/peerings/orange-red")
    wait_for(lambda: not lab.ping("o1", "r1", count=2), 30, what="o1 -> r1 cut")


# --- (c) overlapping ranges are rejected at peering time -------------------------------------


def test_overlapping_vpcs_cannot_peer(lab: Lab) -> None:
    """clash (ctl1) is re-created with 10.2.0.0/16, which contains red's 10.2.0.0/24 (ctl2)."""
    ctl1, ctl2 = client(lab, "ctl1"), client(lab, "ctl2")
    ctl1.delete("/v1/vpcs/clash")
    ctl1.post("/v1/vpcs", {"name": "clash", "subnets": [{"cidr": "10.2.0.0/16"}]})
    red_before = ctl2.get("/v1/vpcs/red/peerings")["peerings"]

    for shard, vpc, peer in ((ctl1, "clash", "red"), (ctl2, "red", "clash")):
        status, body = shard.request(
            "POST", f"/v1/vpcs/{vpc}/peerings", {"name": f"{vpc}-{peer}", "peer_vpc": peer}
        )
        print(f"\n{vpc} -> {peer}: {status} {body}")
        assert status == 409, body
        assert body["field"] == "peer_vpc", body
        assert "10.2.0.0/16" in body["detail"] and "10.2.0.0/24" in body["detail"], body
        assert repr(peer) in body["detail"], body

    assert ctl1.get("/v1/vpcs/clash/peerings")["peerings"] == []
    assert ctl2.get("/v1/vpcs/red/peerings")["peerings"] == red_before
    assert "red-clash" not in {p["name"] for p in red_before}
    for shard, vpc, name in ((ctl1, "clash", "clash-red"), (ctl2, "red", "red-clash")):
        assert shard.request("GET", f"/v1/vpcs/{vpc}/peerings/{name}")[0] == 404
