"""A shard on a 3-member etcd: one member down changes nothing; two down (no quorum): writes
get a clear 503 JSON error and write nothing, reads keep working, and it all recovers when the
members return."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.ctlkit import Cluster
from tests.support.etcd import etcd_cluster
from tests.support.wait import wait_for

LAYOUT = {"ctl1": ((1000, 1999), ("blue",))}


def test_losing_the_etcd_quorum_stops_writes_only(make_cluster: Callable[..., Cluster]) -> None:
    with etcd_cluster(3) as etcd:
        endpoints = ",".join(etcd.urls)
        cluster = make_cluster(
            layout=LAYOUT, options={"store": "etcd", "etcd_endpoints": endpoints}
        )
        ctl = cluster["ctl1"]
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
        ctl.vpc("blue", "10.1.0.0/24")
        ctl.vm("blue", "b0", "10.1.0.10")

        etcd.kill("t1")  # the member the shard has talked to so far: it moves on
        assert ctl.vm("blue", "b1", "10.1.0.11")["version"] == 4
        etcd.kill("t2")  # no quorum
        before = ctl.get("/v1/vpcs/blue/endpoints")
        r = ctl.req(
            "POST", "/v1/vpcs/blue/endpoints", {"name": "b2", "ip": "10.1.0.12", "host": "hv1"}
        )
        assert r.status == 503, r.body
        error, field, detail = r.error()
        assert (error, field) == ("unavailable", None)
        assert detail.startswith("the intent store is unavailable") and "etcd" in detail
        assert r.headers["retry-after"] == "1"
        assert ctl.get("/v1/vpcs/blue/endpoints") == before  # reads: from memory, unchanged
        assert ctl.version() == 4

        etcd.start("t1")
        etcd.start("t2")
        etcd.wait_healthy()
        body = wait_for(
            lambda: (r := ctl.req("POST", "/v1/vpcs/blue/endpoints",
                                  {"name": "b2", "ip": "10.1.0.12", "host": "hv1"})).status == 201
            and r.body,
            timeout=60,
            what="writes to work again",
        )  # fmt: skip
        assert body["version"] == 5  # the refused write took no version
        names = [e["name"] for e in ctl.get("/v1/vpcs/blue/endpoints")["endpoints"]]
        assert names == ["b0", "b1", "b2"]
