"""Offload grants (docs/protocol.md "Offload grants", docs/gateways.md on-demand): an on-demand
host reports its busy pairs to its own shard, which mints a grant for those destinations only;
the peer's shard lets it follow the peer's destinations within that grant only. On real
shards: blue (ctl1, hv1, on-demand toward red) peers with red (ctl2, r1 and r2 on hv2)."""

from __future__ import annotations

from typing import Any

from tests.api.ctlkit import Cluster, Ctl, stream
from tests.api.test_channels import peer_side


def on_demand_blue_and_red(cluster: Cluster) -> tuple[Ctl, Ctl]:
    c1, c2 = cluster["ctl1"], cluster["ctl2"]
    c1.vpc("blue", "10.1.0.0/24")
    c2.vpc("red", "10.2.0.0/24", "10.3.0.0/24")
    c1.vm("blue", "b1", "10.1.0.5", host="hv1")
    c2.vm("red", "r1", "10.2.0.5", host="hv2")
    c2.vm("red", "r2", "10.2.0.6", host="hv2")
    c1.peer("blue", "red", forwarding="on-demand")
    c2.peer("red", "blue", export={"ranges": ["10.2.0.0/24"]})
    c1.wait_state("blue", "to-red", "ACTIVE")
    c2.wait_state("red", "to-blue", "ACTIVE")
    return c1, c2


def report(ctl: Ctl, token: str, dst: list[str], host: str = "hv1", **extra: Any) -> Any:
    body = {"vpc": "blue", "peer_vpc": "red", "dst": dst, **extra}
    return ctl.req("PUT", f"/v1/hosts/{host}/offload", body, token=token)


def test_a_busy_pair_gets_a_grant_for_its_destination_only(cluster: Cluster) -> None:
    c1, c2 = on_demand_blue_and_red(cluster)
    hv1 = cluster.host_token("hv1")
    r = report(c1, hv1, ["10.2.0.5"])
    assert r.status == 200, r.body
    assert (r.body["dst"], r.body["host"]) == (["10.2.0.5"], "hv1") and r.body["grant"]
    grant = r.body["grant"]
    side = peer_side(cluster, c1)
    query = {"policy": side["policy_id"], "host": "hv1"}
    with stream(c2, grant, "destination", "red", **query, dst="10.2.0.5") as s:
        assert s.status == 200, s.body
        assert set(s.next()["objects"]) == {"r1"}
    # a destination outside the grant, or the whole stream: 403 naming the reason
    for dst in ({"dst": "10.2.0.6"}, {"dst": "10.2.0.5,10.2.0.6"}, {}):
        with stream(c2, grant, "destination", "red", **query, **dst) as s:
            assert s.status == 403, (dst, s.body)
            assert s.body["field"] == "Authorization" and "wrong-scope" in s.body["detail"]
    # nor another stream of red with it
    with stream(c2, grant, "forwarding", "red", **query) as s:
        assert s.status == 403 and "wrong-scope" in s.body["detail"], s.body
    # the peering's grant no longer follows red's destinations from an on-demand side ...
    with stream(c2, side["grant"], "destination", "red", **query) as s:
        assert s.status == 403 and "on-demand" in s.body["detail"], s.body
    with stream(c2, side["grant"], "destination", "red", **query, dst="10.2.0.5") as s:
        assert s.status == 403, s.body
    # ... and still follows its other services
    with stream(c2, side["grant"], "forwarding", "red", **query) as s:
        assert s.status == 200, s.body
    # the pair went idle: no grant
    r = report(c1, hv1, [])
    assert (r.status, r.body["grant"], r.body["expires_at"]) == (200, None, None), r.body


def test_the_own_shard_checks_each_report(cluster: Cluster) -> None:
    c1, _ = on_demand_blue_and_red(cluster)
    hv1, hv2 = cluster.host_token("hv1"), cluster.host_token("hv2")
    before = report(c1, hv1, ["10.2.0.5"]).body
    # not exported by red to blue (10.3.0.0/24 is red's, not exported; 10.9.. is no one's)
    for outside in ("10.3.0.5", "10.9.0.1"):
        r = report(c1, hv1, ["10.2.0.5", outside])
        assert (r.status, r.body["field"]) == (403, "dst"), r.body
        assert outside in r.body["detail"]
    r = report(c1, hv1, ["10.2.0.x"])
    assert (r.status, r.body["field"]) == (400, "dst[0]"), r.body
    r = report(c1, hv1, ["10.2.0.5"], peer_vpc="green")
    assert (r.status, r.body["field"]) == (404, "peer_vpc"), r.body
    # another host's credential, or a host with no endpoint in blue
    assert report(c1, hv2, ["10.2.0.5"]).status == 403
    r = report(c1, hv2, ["10.2.0.5"], host="hv2")
    assert (r.status, r.body["field"]) == (403, "vpc"), r.body
    # a side that is not on-demand has the peering's grant: nothing to ask
    c1.vpc("green", "10.4.0.0/24")
    c1.peer("blue", "green")
    c1.peer("green", "blue")
    c1.wait_state("blue", "to-green", "ACTIVE")
    r = report(c1, hv1, ["10.4.0.5"], peer_vpc="green")
    assert (r.status, r.body["field"]) == (409, "peer_vpc"), r.body
    assert report(c1, hv1, ["10.2.0.5"]).body["dst"] == before["dst"]
