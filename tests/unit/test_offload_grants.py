"""Offload grants (docs/protocol.md "Offload grants"): the own shard's decision on an
on-demand host's report, the peer shard's check of a subscription, and the host's reports
(which it sends, and what it follows meanwhile)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshpeer.controller.model import Peering
from meshpeer.controller.ondemand import (
    OffloadAsk,
    Refused,
    check_subscription,
    offload_grant,
)
from meshpeer.controller.peering import Status
from meshpeer.protocol import ServiceName
from meshpeer.protocol.grants import Grant, GrantError, Rejection, expiry_bucket
from ohc.offload import RETRY_S, HeldGrant, busy_sides, grant_asks, granted
from ohc.offload_grants import OffloadGrants

SIDE = Peering("blue", "to-red", "red", forwarding="on-demand")
ACTIVE = Status("ACTIVE", "", "p-red", 20)
ASK = OffloadAsk("hv1", "blue", "red", frozenset({"10.2.0.11", "fd00:2::b"}))
OK: dict[str, Any] = {
    "placed": True,
    "revoked": False,
    "side": SIDE,
    "status": ACTIVE,
    "exported": ["10.2.0.0/24", "fd00:2::/64"],
    "key_id": "k1",
    "expires_at": 7200.0,
}


def refused(ask: OffloadAsk = ASK, **change: Any) -> tuple[int, str]:
    with pytest.raises(Refused) as info:
        offload_grant(ask, **{**OK, **change})
    return info.value.status, info.value.field


def test_a_report_of_an_on_demand_sides_busy_pairs_gets_a_grant_for_them_only() -> None:
    grant = offload_grant(ASK, **OK)
    assert grant == Grant("blue", "red", "p-red", "hv1", 7200.0, "k1", ASK.dst)
    assert offload_grant(replace(ASK, dst=frozenset()), **OK) is None  # idle: nothing


def test_the_own_shard_refuses_what_the_peering_does_not_allow() -> None:
    assert refused(placed=False) == (403, "vpc")
    assert refused(revoked=True) == (403, "name")
    assert refused(side=None) == (404, "peer_vpc")
    for forwarding in ("direct", "gateway"):  # the peering's grant, or no destination at all
        assert refused(side=replace(SIDE, forwarding=forwarding)) == (409, "peer_vpc")
    assert refused(status=None) == (409, "peer_vpc")
    assert refused(status=Status("INACTIVE", "")) == (409, "peer_vpc")
    assert refused(exported=None) == (503, "peer_vpc")
    # an address the peer does not export to blue (another subnet, another family)
    for outside in ("10.3.0.5", "fd00:3::1"):
        assert refused(replace(ASK, dst=ASK.dst | {outside})) == (403, "dst")
    assert refused(exported=["10.2.0.0/24"]) == (403, "dst")


def test_expiry_is_rounded_as_the_peering_streams_grants() -> None:
    assert expiry_bucket(3599.0, 3600.0) == 7200.0
    assert expiry_bucket(3600.0, 3600.0) == 10800.0


FULL = Grant("blue", "red", "p-red", "hv1", 7200.0, "k1")
SCOPED = replace(FULL, dst=frozenset({"10.2.0.11"}))
DEST, FWD = ServiceName.DESTINATION, ServiceName.FORWARDING


def scope_refused(*args: Any) -> bool:
    try:
        check_subscription(*args)
    except GrantError as exc:
        assert exc.reason == Rejection.WRONG_SCOPE
        return True
    return False


def test_the_peer_shard_takes_a_scoped_grant_for_its_destinations_only() -> None:
    assert not scope_refused(SCOPED, DEST, frozenset({"10.2.0.11"}), "on-demand", False)
    assert scope_refused(SCOPED, DEST, frozenset({"10.2.0.12"}), "on-demand", False)
    assert scope_refused(SCOPED, DEST, frozenset({"10.2.0.11", "10.2.0.12"}), "on-demand", False)
    assert scope_refused(SCOPED, DEST, None, "on-demand", False)  # the whole stream
    assert scope_refused(SCOPED, FWD, None, "on-demand", False)  # another service


def test_an_on_demand_host_follows_no_destination_with_the_peerings_grant() -> None:
    for only in (None, frozenset({"10.2.0.11"})):
        assert scope_refused(FULL, DEST, only, "on-demand", False)
        assert not scope_refused(FULL, DEST, only, "on-demand", True)  # a gateway relaying
        assert not scope_refused(FULL, DEST, only, "direct", False)  # unchanged
        assert not scope_refused(FULL, DEST, only, None, False)  # side unknown: as before
    assert not scope_refused(FULL, FWD, None, "on-demand", False)  # its other services
    assert not scope_refused(FULL, DEST, None, "gateway", False)  # gateway mode unchanged


AB, AC = ("blue", "red"), ("blue", "green")


def test_the_host_asks_when_a_sides_busy_set_changes_and_halfway_to_expiry() -> None:
    held = {AB: HeldGrant(frozenset({"10.2.0.11"}), "g", renew_at=100.0)}
    busy = {AB: frozenset({"10.2.0.11"})}
    assert grant_asks(busy, held, {}, 50.0) == {}
    assert grant_asks(busy, held, {}, 100.0) == busy  # renewal
    grown = {AB: frozenset({"10.2.0.11", "10.2.0.12"}), AC: frozenset({"10.3.0.5"})}
    assert grant_asks(grown, held, {}, 50.0) == grown
    assert grant_asks({}, held, {}, 50.0) == {AB: frozenset()}  # idle: reported
    assert grant_asks({}, {}, {}, 50.0) == {}
    # a refused report of the same set waits RETRY_S; another set goes at once
    tried = {AC: (frozenset({"10.3.0.5"}), 50.0)}
    assert grant_asks(grown, held, tried, 51.0) == {AB: grown[AB]}
    assert grant_asks(grown, held, tried, 50.0 + RETRY_S) == grown


def test_the_host_follows_its_busy_pairs_that_a_grant_names() -> None:
    held = {AB: HeldGrant(frozenset({"10.2.0.11", "10.2.0.12"}), "g", 100.0)}
    busy = {AB: frozenset({"10.2.0.11", "10.2.0.13"}), AC: frozenset({"10.3.0.5"})}
    # 10.2.0.13 waits for its grant (on the gateways meanwhile); green has none yet
    assert granted(busy, held) == {AB: (frozenset({"10.2.0.11"}), "g")}
    assert granted({}, held) == {}
    assert busy_sides(frozenset({("blue", "red", "10.2.0.11")})) == {AB: {"10.2.0.11"}}


class Shard:
    """The own shard's offload route, as the host sees it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.refuse = False

    def __call__(self, url: str, body: dict[str, Any]) -> Any:
        assert url == "https://ctl1"
        self.bodies.append(body)
        if self.refuse:
            raise RuntimeError("403 forbidden")
        dst = body["dst"]
        grant = f"g-{'-'.join(dst)}" if dst else None
        return {**body, "grant": grant, "expires_at": 1100.0 if dst else None}


def test_the_host_reports_its_busy_pairs_and_follows_them_with_the_grant() -> None:
    shard = Shard()
    grants = OffloadGrants("hv1", shard, lambda vpc: "https://ctl1" if vpc == "blue" else None)
    busy = {AB: frozenset({"10.2.0.11"})}
    assert grants.update(busy, 100.0)
    assert shard.bodies == [{"vpc": "blue", "peer_vpc": "red", "dst": ["10.2.0.11"]}]
    assert grants.following(busy) == {AB: (frozenset({"10.2.0.11"}), "g-10.2.0.11")}
    assert not grants.update(busy, 101.0) and len(shard.bodies) == 1  # nothing new
    # renewed halfway to expiry (100 + (1100 - 100) / 2)
    assert grants.update(busy, 600.0) and len(shard.bodies) == 2
    # a refused report: the new pair stays on the gateways, the old one is still followed
    shard.refuse = True
    grown = {AB: frozenset({"10.2.0.11", "10.2.0.12"})}
    assert not grants.update(grown, 601.0)
    assert grants.following(grown) == {AB: (frozenset({"10.2.0.11"}), "g-10.2.0.11")}
    assert not grants.update(grown, 602.0) and len(shard.bodies) == 3  # retried after RETRY_S
    shard.refuse = False
    assert grants.update(grown, 601.0 + RETRY_S) and len(shard.bodies) == 4
    assert grants.following(grown) == {AB: (grown[AB], "g-10.2.0.11-10.2.0.12")}
    # the pairs went idle: reported, the grant dropped, nothing followed
    assert grants.update({}, 700.0) and shard.bodies[-1]["dst"] == []
    assert grants.held == {} and grants.following({}) == {}
