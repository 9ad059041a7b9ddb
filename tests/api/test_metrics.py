"""``GET /metrics`` on a real shard (docs/metrics.md): no token, Prometheus text format, and
values that follow what the shard does (writes, refusals, subscribers, peerings)."""

from __future__ import annotations

from tests.api.ctlkit import Cluster, Ctl, stream
from tests.support.metrics import Samples, parse, value
from tests.support.wait import wait_for


def scrape(ctl: Ctl) -> Samples:
    r = ctl.raw("GET", "/metrics", token=None)
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.body.decode() if isinstance(r.body, bytes) else str(r.body))


def requests(samples: Samples, method: str, route: str, code: str) -> float:
    return value(samples, "meshpeer_http_requests_total", method=method, route=route, code=code)


EP_ROUTE = "/v1/vpcs/{vpc}/endpoints"


def test_metrics_follow_writes_refusals_and_peerings(cluster: Cluster) -> None:
    c1 = cluster["ctl1"]
    c1.vpc("blue", "10.1.0.0/24")
    before = scrape(c1)
    assert value(before, "meshpeer_shard_info", shard="ctl1", version=c1.get("/healthz")["software_version"]) == 1  # fmt: skip
    assert value(before, "meshpeer_shard_vpcs") == 1
    c1.vm("blue", "b1", "10.1.0.11")
    bad = c1.req("POST", "/v1/vpcs/blue/endpoints", {"name": "b2", "ip": "10.9.9.9"})
    assert bad.status in (400, 409)
    c1.req("GET", "/no/such/path")
    after = scrape(c1)

    assert requests(after, "POST", EP_ROUTE, "201") == requests(before, "POST", EP_ROUTE, "201") + 1
    code = str(bad.status)
    assert requests(after, "POST", EP_ROUTE, code) == requests(before, "POST", EP_ROUTE, code) + 1
    assert requests(after, "GET", "unmatched", "404") >= 1
    assert value(after, "meshpeer_shard_endpoints") == value(before, "meshpeer_shard_endpoints") + 1
    assert value(after, "meshpeer_shard_deltas_published_total") > value(
        before, "meshpeer_shard_deltas_published_total"
    )
    assert value(after, "meshpeer_shard_store_version") == c1.version()
    count = value(
        after, "meshpeer_http_request_duration_seconds_count", method="POST", route=EP_ROUTE
    )
    assert count == requests(after, "POST", EP_ROUTE, "201") + requests(
        after, "POST", EP_ROUTE, code
    )

    cluster["ctl2"].vpc("red", "10.2.0.0/24")
    c1.peer("blue", "red")
    st = scrape(c1)
    assert value(st, "meshpeer_shard_peerings", state="INACTIVE") == 1
    assert value(st, "meshpeer_shard_peerings", state="ACTIVE") == 0
    cluster["ctl2"].peer("red", "blue")
    wait_for(
        lambda: value(scrape(c1), "meshpeer_shard_peerings", state="ACTIVE") == 1,
        30.0,
        what="the peering ACTIVE in ctl1's metrics",
    )


def test_subscribers_are_counted_while_attached(cluster: Cluster) -> None:
    c1 = cluster["ctl1"]
    c1.vpc("blue", "10.1.0.0/24")
    c1.vm("blue", "b1", "10.1.0.11", host="hv1")
    c1.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})

    def subscribers() -> float:
        return value(scrape(c1), "meshpeer_shard_stream_subscribers", service="destination")

    base = subscribers()
    with stream(c1, c1.host_token("hv1"), "destination", "blue", host="hv1") as s:
        assert s.status == 200, s.body
        s.next()  # the snapshot: attached
        assert wait_for(lambda: subscribers() == base + 1 or None, 10.0, what="one more")
    wait_for(lambda: subscribers() == base or None, 10.0, what="detached")
