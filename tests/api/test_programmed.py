"""``?wait=programmed`` says true only when every host that must act has applied the write
(issue 21, part 3), on two real shards over HTTP. No OHC runs here: the tests report applied
versions themselves, as hosts would (``PUT /v1/hosts/{name}/applied``), so what is pending
at each step is exact.

ctl1 owns blue, green, amber, teal; ctl2 owns red, pink, rose (see ctlkit.DEFAULT_LAYOUT).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.protocol.messages import PEER_SERVICES
from tests.api.ctlkit import Cluster, Ctl, stream
from tests.support.wait import wait_for

FAR = 2**62  # above any version a shard will publish in a test
NOW = "wait=programmed&timeout=0"  # look once, do not wait


@pytest.fixture(scope="module")
def shards(module_cluster: Cluster) -> Iterator[Cluster]:
    for ctl in module_cluster:
        for i, host in enumerate(("hv1", "hv2", "hv3"), 1):
            ctl.put(f"/v1/hosts/{host}", {"underlay_ip": f"192.0.2.{i}"})
    yield module_cluster


def current(ctl: Ctl, token: str, service: str, key: str) -> int:
    """A stream's version now (its snapshot's)."""
    with stream(ctl, token, service, key) as s:
        version: int = s.next()["version"]
    return version


def applied(
    ctl: Ctl, host: str, *streams: str, grant: str | None = None, version: int = FAR
) -> None:
    """``host`` reports holding ``streams`` (with its own credential, and a peer stream with
    its grant; else with the operator's token)."""
    entries: list[dict[str, Any]] = [{"stream": s, "version": version} for s in streams]
    if grant is not None:
        for e in entries:
            e["grant"] = grant
    reply = ctl.req(
        "PUT",
        f"/v1/hosts/{host}/applied",
        {"streams": entries},
        token=ctl.host_token(host) if grant else "",
    )
    assert reply.status == 200, reply.body


def test_an_endpoint_on_a_host_that_never_registered_is_pending_on_it(shards: Cluster) -> None:
    """hv7 never registered: the endpoint is created (a host may boot later), but nothing
    holds it, so it is not programmed, and hv7 is what it waits for."""
    c1 = shards["ctl1"]
    c1.vpc("amber", "10.61.0.0/24")
    made = c1.post(
        f"/v1/vpcs/amber/endpoints?{NOW}", {"name": "a7", "ip": "10.61.0.7", "host": "hv7"}
    )
    assert (made["programmed"], made["pending_hosts"]) == (False, ["hv7"]), made
    # hv7 boots: its OHC registers (a shard takes no report from an unknown host), then
    # applies its endpoint stream
    c1.put("/v1/hosts/hv7", {"underlay_ip": "192.0.2.7"})
    applied(c1, "hv7", "endpoint/hv7//")
    got = c1.get(f"/v1/vpcs/amber/endpoints/a7?{NOW}")
    assert (got["programmed"], got["pending_hosts"]) == (True, []), got


def test_an_endpoint_is_pending_on_its_own_host_until_that_host_applies_it(
    shards: Cluster,
) -> None:
    """hv3 is registered but follows nothing yet (its OHC is down)."""
    c1 = shards["ctl1"]
    c1.vpc("teal", "10.62.0.0/24")
    made = c1.post(
        f"/v1/vpcs/teal/endpoints?{NOW}", {"name": "t1", "ip": "10.62.0.5", "host": "hv3"}
    )
    assert (made["programmed"], made["pending_hosts"]) == (False, ["hv3"]), made
    applied(c1, "hv3", "endpoint/hv3//", version=current(c1, shards.token, "endpoint", "hv3"))
    gone = c1.req("DELETE", f"/v1/vpcs/teal/endpoints/t1?{NOW}").body
    assert gone["pending_hosts"] == ["hv3"], gone  # it must remove it too
    applied(c1, "hv3", "endpoint/hv3//")
    c1.vm("teal", "t2", "10.62.0.6", host="hv8")  # never registered: nothing to remove there
    gone = c1.req("DELETE", f"/v1/vpcs/teal/endpoints/t2?{NOW}").body
    assert (gone["programmed"], gone["pending_hosts"]) == (True, []), gone


def test_an_inactive_peering_is_not_programmed(shards: Cluster) -> None:
    """The first side of a peering is INACTIVE until the peer configures its own: nothing is
    programmed for it, and the answer says so at once instead of a vacuous true."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("green", "10.63.0.0/24")
    c1.vm("green", "g1", "10.63.0.5", host="hv1")
    c2.vpc("pink", "10.64.0.0/24")
    p = c1.post(
        "/v1/vpcs/green/peerings?wait=programmed&timeout=30",
        {"name": "to-pink", "peer_vpc": "pink"},
    )
    assert p["state"] == "INACTIVE"
    assert (p["programmed"], p["pending_hosts"]) == (False, []), p
    got = c1.get("/v1/vpcs/green/peerings/to-pink?wait=programmed&timeout=30")
    assert (got["state"], got["programmed"]) == ("INACTIVE", False), got


def test_an_active_peering_waits_for_the_hosts_of_both_vpcs(shards: Cluster) -> None:
    """blue (ctl1) has b1 on hv1; red (ctl2) has r1 on hv2. Red's side makes the peering
    ACTIVE. Programmed means: hv2 has applied red's peering stream (an OHC reports it only
    once blue's services listed there have arrived: blue's destinations are on hv2), and hv1
    has applied red's services under the policy red exports to blue (the way back). Each
    host alone is not enough."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("blue", "10.65.0.0/24")
    c1.vm("blue", "b1", "10.65.0.5", host="hv1")
    c2.vpc("red", "10.66.0.0/24")
    c2.vm("red", "r1", "10.66.0.5", host="hv2")
    c1.peer("blue", "red")
    p = c2.post(f"/v1/vpcs/red/peerings?{NOW}", {"name": "to-blue", "peer_vpc": "blue"})
    assert p["state"] == "ACTIVE", p
    assert (p["programmed"], p["pending_hosts"]) == (False, ["hv1", "hv2"]), p

    def now() -> Any:
        return c2.get(f"/v1/vpcs/red/peerings/to-blue?{NOW}")

    applied(c2, "hv2", "peering/red//hv2")
    assert now()["pending_hosts"] == ["hv1"]

    def red_grant() -> str | None:
        """What hv1 subscribes to red with, once ctl1 has heard of red's side (federation:
        asynchronous, so the first snapshot may not have it yet)."""
        with stream(c1, shards.token, "peering", "blue", host="hv1") as s:
            red = s.next()["objects"].get("red")
            return None if red is None else str(red["grant"])

    grant = wait_for(red_grant, 30.0, what="ctl1 to hear of red's side of the peering")
    policy = p["export_policy_id"]
    applied(c2, "hv1", f"destination/red/{policy}/", grant=grant)
    assert now()["pending_hosts"] == ["hv1"]  # forwarding and load balancers too
    applied(c2, "hv1", *(f"{s}/red/{policy}/" for s in PEER_SERVICES), grant=grant)
    got = now()
    assert (got["programmed"], got["pending_hosts"]) == (True, []), got


def test_a_batch_create_is_one_version_and_pending_on_every_host_it_places(
    shards: Cluster,
) -> None:
    """``endpoints:batchCreate``: every endpoint in one transaction and one version (the
    destination stream shows them all at it); an ILB may list earlier ones as backends; the
    answer is pending on each host the batch places endpoints on until it applies them."""
    c1 = shards["ctl1"]
    c1.vpc("onyx", "10.65.0.0/16")
    before = c1.version()
    stream_before = current(c1, shards.token, "destination", "onyx")
    vms = [
        {"name": f"v{n}", "ip": f"10.65.{n // 200}.{n % 200 + 10}", "host": f"hv{n % 2 + 1}"}
        for n in range(400)
    ]
    ilb = {"name": "lb", "ip": "10.65.9.9", "kind": "ilb", "backends": [{"endpoint": "v3"}]}
    made = c1.post(f"/v1/vpcs/onyx/endpoints:batchCreate?{NOW}", {"endpoints": [*vms, ilb]})
    assert c1.version() == before + 1  # one transaction
    assert {e["version"] for e in made["endpoints"]} == {made["version"]}
    assert [e["name"] for e in made["endpoints"]] == [*(v["name"] for v in vms), "lb"]
    assert (made["programmed"], made["pending_hosts"]) == (False, ["hv1", "hv2"]), made
    listed = {e["name"]: e for e in c1.get("/v1/vpcs/onyx/endpoints")["endpoints"]}
    assert len(listed) == 401 and listed["v399"]["ip"] == "10.65.1.209"
    assert {e["version"] for e in listed.values()} == {made["version"]}
    with stream(c1, shards.token, "destination", "onyx") as s:
        snap = s.next()
    assert snap["version"] == stream_before + 1  # one delta for the whole batch
    assert {f"v{n}" for n in range(400)} <= set(snap["objects"])
    for host in ("hv1", "hv2"):
        applied(c1, host, f"endpoint/{host}//")
    got = c1.get(f"/v1/vpcs/onyx/endpoints/v0?{NOW}")
    assert got["programmed"], got
