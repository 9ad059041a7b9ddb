"""VPC ownership claimed in etcd (``store = etcd``): any shard may create an unpinned VPC, the
first claim wins, a second claim on any shard is a 409 naming the owner, and every shard learns
the owner by a watch (placement and federation follow it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.api.ctlkit import Cluster
from tests.support.etcd import etcd_server
from tests.support.wait import wait_for


@pytest.fixture
def on_etcd(make_cluster: Callable[..., Cluster]) -> Iterator[Cluster]:
    with etcd_server() as etcd:
        yield make_cluster(options={"store": "etcd", "etcd_endpoints": etcd.url})


def test_the_first_claim_wins_and_every_shard_follows_it(on_etcd: Cluster) -> None:
    c1, c2 = on_etcd["ctl1"], on_etcd["ctl2"]
    # "zeta" is pinned nowhere: whichever shard creates it first owns it
    c2.vpc("zeta", "10.9.0.0/24")
    r = c1.req("POST", "/v1/vpcs", {"name": "zeta", "subnets": [{"cidr": "10.8.0.0/24"}]})
    assert r.status == 409, r.body
    error, field, detail = r.error()
    assert (error, field) == ("conflict", "name")
    assert f"belongs to shard 'ctl2' ({c2.url})" in detail
    assert c1.req("GET", "/v1/vpcs/zeta").status == 404  # nothing written on the loser
    placement = wait_for(
        lambda: (p := c1.get("/v1/placement/zeta"))["shard"] == "ctl2" and p,
        what="ctl1 to learn zeta's owner by the watch",
    )
    assert placement["url"] == c2.url
    # federation follows the claimed owner: a peering across the two shards comes up
    c1.vpc("blue", "10.1.0.0/24")
    c1.peer("blue", "zeta")
    c2.peer("zeta", "blue")
    c1.wait_state("blue", "to-zeta", "ACTIVE")
    c2.wait_state("zeta", "to-blue", "ACTIVE")
    # a pinned VPC stays with the shard the directory pins it to
    r = c2.req("POST", "/v1/vpcs", {"name": "green", "subnets": []})
    assert r.status == 409 and "belongs to shard 'ctl1'" in r.error()[2]
    # deleting the VPC gives the name up: then another shard may claim it
    c2.delete("/v1/vpcs/zeta/peerings/to-blue")
    c2.delete("/v1/vpcs/zeta")
    assert c1.vpc("zeta", "10.8.0.0/24")["name"] == "zeta"
    wait_for(
        lambda: c2.get("/v1/placement/zeta")["shard"] == "ctl1",
        what="ctl2 to learn zeta's new owner",
    )


def test_concurrent_creates_of_one_vpc_on_one_shard_answer_one_201(on_etcd: Cluster) -> None:
    """Validation against memory and the commit are one step: etcd I/O between them must not
    let a second request pass the same check (two 201s for one name)."""
    c1 = on_etcd["ctl1"]
    for n in range(8):
        name = f"race{n}"
        gate = threading.Barrier(2)
        statuses: list[int] = []

        def create(
            cidr: str, name: str = name, gate: threading.Barrier = gate, out: list[int] = statuses
        ) -> None:
            gate.wait()
            body = {"name": name, "subnets": [{"cidr": cidr}]}
            out.append(c1.req("POST", "/v1/vpcs", body).status)

        threads = [
            threading.Thread(target=create, args=(f"10.{50 + 2 * n + i}.0.0/24",)) for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [201, 409], (name, statuses)
