"""Route conflicts over real HTTP (issue 12, FIG. 7): two peers export one prefix to blue.

red and pink (ctl2) each route 192.168.77.0/24 via their router and export it to blue (ctl1),
which imports both. ``GET /v1/vpcs/blue/routes/effective`` must say, for that prefix, which
route won, which lost, and by which rule, as blue's ``preference`` on each side changes; a
local route beats both. Bad preferences are refused naming the field, changing nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.ctlkit import Cluster, Ctl, register
from tests.support.wait import wait_for

PREFIX = "192.168.77.0/24"
TIMEOUT = 30.0  # generous: federation polls between shards


@pytest.fixture(scope="module")
def world(module_cluster: Cluster) -> Iterator[Cluster]:
    c1, c2 = module_cluster["ctl1"], module_cluster["ctl2"]
    register(module_cluster, "hv1", "hv2")
    c1.vpc("blue", "10.1.0.0/24")
    for n, vpc in ((2, "red"), (3, "pink")):
        c2.vpc(vpc, f"10.{n}.0.0/24")
        router = {"name": "rt", "kind": "router", "ip": f"10.{n}.0.9", "host": "hv2"}
        c2.post(f"/v1/vpcs/{vpc}/endpoints", router)
        route = {"name": "onprem", "prefix": PREFIX, "next_hop": f"10.{n}.0.9"}
        c2.post(f"/v1/vpcs/{vpc}/routes", route)
        c2.peer(vpc, "blue", export={"custom_routes": True})
    c1.peer("blue", "red", import_custom_routes=True)
    c1.peer("blue", "pink", import_custom_routes=True, preference=200)
    for vpc in ("red", "pink"):
        c1.wait_state("blue", f"to-{vpc}", "ACTIVE", TIMEOUT)
    wait_for(lambda: len(conflict(c1)) == 2, TIMEOUT, what="both peers' routes at blue")
    yield module_cluster


def conflict(ctl: Ctl) -> list[dict[str, Any]]:
    """blue's effective routes to PREFIX."""
    routes = ctl.get("/v1/vpcs/blue/routes/effective")["routes"]
    return [r for r in routes if r["prefix"] == PREFIX]


def decided(ctl: Ctl) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The winner of PREFIX and its losers."""
    routes = conflict(ctl)
    (won,) = [r for r in routes if r["installed"]]
    return won, [r for r in routes if not r["installed"]]


def outcome(ctl: Ctl) -> tuple[str, str, str]:
    """(the winner's origin, the loser's origin, the rule it lost by)."""
    won, (lost,) = decided(ctl)
    return won["origin"], lost["origin"], lost["rule"]


def test_the_higher_preference_wins_and_each_side_says_why(world: Cluster) -> None:
    c1 = world["ctl1"]
    assert c1.peering("blue", "to-pink")["preference"] == 200
    assert c1.peering("blue", "to-red")["preference"] == 100  # the default
    won, (lost,) = decided(c1)
    print(f"\nwinner: {won}\nloser: {lost}")
    assert (won["origin"], won["next_hop"], won["preference"]) == ("peer:pink", "10.3.0.9", 200)
    assert (lost["origin"], lost["next_hop"], lost["preference"]) == ("peer:red", "10.2.0.9", 100)
    assert lost["imported"] is False and lost["rule"] == "peering-preference"
    assert lost["reason"].startswith("peering-preference: ") and "200 > 100" in lost["reason"]
    assert "from peer:pink via 10.3.0.9" in lost["reason"]
    assert lost["winner"] == {k: won[k] for k in lost["winner"]}
    assert won["losers"] == [
        {k: lost[k] for k in ("prefix", "kind", "origin", "next_hop", "priority", "preference")}
        | {"rule": "peering-preference"}
    ]
    assert "reason" not in won and "rule" not in won


def test_changing_the_preference_over_rest_moves_the_winner(world: Cluster) -> None:
    c1 = world["ctl1"]
    try:
        c1.put("/v1/vpcs/blue/peerings/to-pink", {"preference": 50})
        assert outcome(c1) == ("peer:red", "peer:pink", "peering-preference")
        # equal preferences, equal priorities: the lower peer id (VPC name) wins
        c1.put("/v1/vpcs/blue/peerings/to-pink", {"preference": 100})
        assert outcome(c1) == ("peer:pink", "peer:red", "lower-peer-id")
        # then priority (MED) before the peer id
        world["ctl2"].delete("/v1/vpcs/red/routes/onprem")
        red = {"name": "onprem", "prefix": PREFIX, "next_hop": "10.2.0.9", "priority": 10}
        world["ctl2"].post("/v1/vpcs/red/routes", red)
        wait_for(
            lambda: decided(c1)[0]["origin"] == "peer:red", TIMEOUT, what="red's cheaper route"
        )
        won, (lost,) = decided(c1)
        assert (lost["origin"], lost["rule"], won["priority"]) == ("peer:pink", "priority", 10)
    finally:
        c1.put("/v1/vpcs/blue/peerings/to-pink", {"preference": 200})


def test_a_local_route_beats_every_peer(world: Cluster) -> None:
    c1 = world["ctl1"]
    router = {"name": "rt", "kind": "router", "ip": "10.1.0.9", "host": "hv1"}
    c1.post("/v1/vpcs/blue/endpoints", router)
    route = {"name": "onprem", "prefix": PREFIX, "next_hop": "10.1.0.9", "priority": 65535}
    c1.post("/v1/vpcs/blue/routes", route)
    try:
        won, losers = decided(c1)
        assert (won["origin"], won["next_hop"]) == ("local", "10.1.0.9")
        assert {(r["origin"], r["rule"]) for r in losers} == {
            ("peer:red", "local-preferred"),
            ("peer:pink", "local-preferred"),
        }
        assert all(r["winner"]["origin"] == "local" for r in losers)
        assert "preference" not in won  # a local route has no peering
    finally:
        c1.delete("/v1/vpcs/blue/routes/onprem")
        c1.delete("/v1/vpcs/blue/endpoints/rt")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/vpcs/blue/peerings", {"name": "x", "peer_vpc": "rose", "preference": -1}),
        ("PUT", "/v1/vpcs/blue/peerings/to-pink", {"preference": 65536}),
        ("PUT", "/v1/vpcs/blue/peerings/to-pink", {"preference": "high"}),
        ("PUT", "/v1/vpcs/blue/peerings/to-pink", {"preference": 1.5}),
    ],
)
def test_a_bad_preference_is_refused_naming_it(
    world: Cluster, method: str, path: str, body: dict[str, Any]
) -> None:
    c1 = world["ctl1"]
    before = (c1.peering("blue", "to-pink"), conflict(c1))
    reply = c1.req(method, path, body)
    assert (reply.status, reply.error()[1]) == (400, "preference"), reply.body
    assert (c1.peering("blue", "to-pink"), conflict(c1)) == before
