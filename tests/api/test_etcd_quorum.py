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


def test_a_batch_over_etcds_transaction_limit_is_413_and_writes_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    """etcd with its default --max-txn-ops (128) refuses a 200-endpoint batch as one
    transaction: 413 saying so and how to fit it, state unchanged; a smaller batch then takes
    the next version."""
    with etcd_cluster(1, max_txn_ops=128) as etcd:
        cluster = make_cluster(
            layout=LAYOUT, options={"store": "etcd", "etcd_endpoints": etcd.urls[0]}
        )
        ctl = cluster["ctl1"]
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
        ctl.vpc("blue", "10.1.0.0/16")
        before, version = ctl.get("/v1/vpcs/blue/endpoints"), ctl.version()

        def batch(n: int) -> dict[str, object]:
            return {
                "endpoints": [
                    {"name": f"e{i}", "ip": f"10.1.{i // 250}.{i % 250 + 2}", "host": "hv1"}
                    for i in range(n)
                ]
            }

        r = ctl.req("POST", "/v1/vpcs/blue/endpoints:batchCreate", batch(200))
        assert r.status == 413, r.body
        error, field, detail = r.error()
        assert (error, field) == ("payload_too_large", None)
        assert "too many operations" in detail and "--max-txn-ops" in detail
        assert (ctl.get("/v1/vpcs/blue/endpoints"), ctl.version()) == (before, version)
        r = ctl.req("POST", "/v1/vpcs/blue/endpoints:batchCreate", batch(20))
        assert r.status == 201, r.body
        assert ctl.version() == version + 1
