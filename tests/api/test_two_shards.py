"""Two controller shards on loopback: cross-shard peering, routes, streams, grants, multiplexer.

ctl1 owns blue, green, amber, teal, cyan, lime, navy, gold, sand, mint, jade, onyx; ctl2 owns
red, pink, rose, ruby, plum, wine, coral, sage. One pair of controllers serves the module; each
test works on its own VPCs (and reads per-VPC counters), so the tests do not see one another.
Latencies are printed and recorded as test properties (``--junitxml``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.protocol.grants import Grant, mint, verify
from tests.api.ctlkit import Cluster, Ctl, Stream, stream, tamper
from tests.support.wait import wait_for

ACTIVE_TIMEOUT = 30.0  # generous: federation polls between shards; a busy machine is slow


@pytest.fixture(scope="module")
def shards(module_cluster: Cluster) -> Iterator[Cluster]:
    for ctl in module_cluster:
        ctl.put("/v1/hosts/hv1", {"underlay_ip": "192.0.2.1"})
        ctl.put("/v1/hosts/hv2", {"underlay_ip": "192.0.2.2"})
    yield module_cluster


def both_active(a: Ctl, vpc_a: str, b: Ctl, vpc_b: str) -> float:
    """Wait until both sides are ACTIVE; return how long it took."""
    start = time.monotonic()
    a.wait_state(vpc_a, f"to-{vpc_b}", "ACTIVE", ACTIVE_TIMEOUT)
    b.wait_state(vpc_b, f"to-{vpc_a}", "ACTIVE", ACTIVE_TIMEOUT)
    return time.monotonic() - start


def routes(ctl: Ctl, vpc: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in ctl.get(f"/v1/vpcs/{vpc}/routes/effective")["routes"]:
        assert r["prefix"] not in out, r
        out[r["prefix"]] = r
    return out


# --- peering state across shards ----------------------------------------------------------------


def test_cross_shard_peering_needs_both_sides(
    shards: Cluster, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("cyan", "10.31.0.0/24")
    c2.vpc("rose", "10.32.0.0/24")
    p = c1.peer("cyan", "rose")
    assert p["state"] == "INACTIVE" and p["peer_export_policy_id"] is None
    # Once ctl1 has heard from ctl2: the peer exists but has not configured its side.

    def heard() -> Any:
        x = c1.peering("cyan", "to-rose")
        return x if x["state_details"].startswith("peer VPC") else None

    p = wait_for(heard, ACTIVE_TIMEOUT, what="ctl1 to hear about rose from ctl2")
    assert p["state"] == "INACTIVE"
    assert p["state_details"] == "peer VPC 'rose' has not configured a peering to 'cyan'"
    assert not any(r["origin"] != "local" for r in routes(c1, "cyan").values())

    start = time.monotonic()
    c2.peer("rose", "cyan")
    both_active(c1, "cyan", c2, "rose")
    latency = time.monotonic() - start
    record_property("active_latency_ms", round(latency * 1000, 1))
    with capsys.disabled():
        print(f"\n[two shards] second side configured -> both ACTIVE in {latency * 1000:.0f} ms")
    p = c1.peering("cyan", "to-rose")
    assert p["state_details"] == "both sides configured: 'cyan' <-> 'rose'"
    assert p["peer_export_policy_id"] == c2.peering("rose", "to-cyan")["export_policy_id"]
    assert routes(c1, "cyan")["10.32.0.0/24"]["origin"] == "peer:rose"

    # Delete one side: the other goes INACTIVE (and stops importing), the deleted one is gone.
    c2.delete("/v1/vpcs/rose/peerings/to-cyan")
    p = c1.wait_state("cyan", "to-rose", "INACTIVE", ACTIVE_TIMEOUT)
    assert p["state_details"] == "peer VPC 'rose' has not configured a peering to 'cyan'"
    assert c2.req("GET", "/v1/vpcs/rose/peerings/to-cyan").status == 404
    assert "10.32.0.0/24" not in routes(c1, "cyan")
    # ... and the other way round.
    c2.peer("rose", "cyan")
    both_active(c1, "cyan", c2, "rose")
    c1.delete("/v1/vpcs/cyan/peerings/to-rose")
    p = c2.wait_state("rose", "to-cyan", "INACTIVE", ACTIVE_TIMEOUT)
    assert p["state_details"] == "peer VPC 'cyan' has not configured a peering to 'rose'"
    assert "10.31.0.0/24" not in routes(c2, "rose")


def test_overlapping_peer_is_refused_and_later_overlap_is_inactive(shards: Cluster) -> None:
    """A subnet added on one side after the peering is ACTIVE cannot overlap the peer."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("sand", "10.41.0.0/24")
    c2.vpc("wine", "10.42.0.0/24")
    c1.peer("sand", "wine")
    c2.peer("wine", "sand")
    both_active(c1, "sand", c2, "wine")
    r = c2.req("POST", "/v1/vpcs/wine/subnets", {"cidr": "10.41.0.0/25"})
    assert r.status == 409
    assert r.error()[1] == "cidr" and "10.41.0.0/24" in r.error()[2]
    assert c1.peering("sand", "to-wine")["state"] == "ACTIVE"


# --- effective routes and non-transitivity -------------------------------------------------


def test_effective_routes_import_what_the_peer_exports(shards: Cluster) -> None:
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("lime", "10.51.0.0/24")
    c2.vpc("ruby", "10.52.0.0/24", "10.53.0.0/24")
    c2.post(
        "/v1/vpcs/ruby/endpoints",
        {"name": "rt", "kind": "router", "ip": "10.52.0.9", "host": "hv2"},
    )
    c2.post(
        "/v1/vpcs/ruby/routes",
        {"name": "onprem", "prefix": "192.168.50.0/24", "next_hop": "10.52.0.9"},
    )
    c2.post(
        "/v1/vpcs/ruby/routes",
        {"name": "hidden", "prefix": "172.16.0.0/16", "next_hop": "10.52.0.9"},
    )
    export = {"ranges": ["10.52.0.0/25", "192.168.50.0/24"], "custom_routes": True}
    c1.peer("lime", "ruby")
    c2.peer("ruby", "lime", export=export)
    both_active(c1, "lime", c2, "ruby")

    got = routes(c1, "lime")
    assert set(got) == {"10.51.0.0/24", "10.52.0.0/25", "192.168.50.0/24"}
    assert got["10.51.0.0/24"]["origin"] == "local" and "imported" not in got["10.51.0.0/24"]
    subnet = got["10.52.0.0/25"]  # clipped by ruby's export ranges; 10.53.0.0/24 is not exported
    assert subnet == {
        "prefix": "10.52.0.0/25",
        "kind": "subnet",
        "origin": "peer:ruby",
        "next_hop": None,
        "priority": None,
        "installed": True,
        "imported": True,
        "preference": 100,  # lime's side's default
    }
    custom = got["192.168.50.0/24"]
    assert custom["origin"] == "peer:ruby" and custom["kind"] == "static"
    assert custom["imported"] is False and custom["installed"] is False
    assert "import_custom_routes" in custom["reason"]

    c1.put("/v1/vpcs/lime/peerings/to-ruby", {"import_custom_routes": True})
    custom = routes(c1, "lime")["192.168.50.0/24"]
    assert custom["imported"] is True and custom["installed"] is True
    assert custom["next_hop"] == "10.52.0.9" and "reason" not in custom

    # Narrowing the export withdraws the route from the importer.
    c2.put("/v1/vpcs/ruby/peerings/to-lime", {"export": {"ranges": ["10.52.0.0/25"]}})
    wait_for(
        lambda: set(routes(c1, "lime")) == {"10.51.0.0/24", "10.52.0.0/25"},
        ACTIVE_TIMEOUT,
        what="lime to drop ruby's custom route",
    )


def test_peering_is_not_transitive(shards: Cluster) -> None:
    """amber <-> pink <-> teal: amber learns nothing of teal, nor teal of amber."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("amber", "10.61.0.0/24")
    c2.vpc("pink", "10.62.0.0/24")
    c1.vpc("teal", "10.63.0.0/24")
    c1.vm("amber", "a1", "10.61.0.5")
    c1.vm("teal", "t1", "10.63.0.5")
    c1.peer("amber", "pink")
    c2.peer("pink", "amber")
    c2.peer("pink", "teal")
    c1.peer("teal", "pink")
    both_active(c1, "amber", c2, "pink")
    both_active(c1, "teal", c2, "pink")

    assert set(routes(c1, "amber")) == {"10.61.0.0/24", "10.62.0.0/24"}
    assert set(routes(c1, "teal")) == {"10.63.0.0/24", "10.62.0.0/24"}
    assert set(routes(c2, "pink")) == {"10.62.0.0/24", "10.61.0.0/24", "10.63.0.0/24"}
    for vpc in ("amber", "teal"):
        with stream(c1, shards.token, "peering", vpc, host="hv1") as s:
            snap = s.next()
        assert snap["type"] == "snapshot" and set(snap["objects"]) == {"pink"}
    # amber holds no grant for teal, and one it minted itself is refused.
    teal_policy = c1.peering("teal", "to-pink")["export_policy_id"]
    forged = grant(shards, "amber", "teal", teal_policy, "hv1")
    with stream(c1, forged, "destination", "teal", policy=teal_policy, host="hv1") as s:
        assert s.status == 403 and s.body["field"] == "policy"


# --- subscriptions with grants -----------------------------------------------------------------


def grant(
    cluster: Cluster,
    sub: str,
    tgt: str,
    policy: str,
    host: str,
    expires: float | None = None,
    key_id: str = "k1",
    key: str | None = None,
) -> str:
    """A grant minted with the shards' key, as if by the subscriber's own controller."""
    exp = time.time() + 600 if expires is None else expires
    keys = {key_id: bytes.fromhex(key or cluster.grant_key)}
    return mint(Grant(sub, tgt, policy, host, exp, key_id), keys)


def refused(s: Stream, status: int) -> str:
    """The subscription was refused before any data: the status and a JSON error."""
    assert s.status == status, (s.status, s.body)
    assert s.content_type.startswith("application/json")
    assert set(s.body) == {"error", "field", "detail"}
    detail: str = s.body["detail"]
    return detail


def test_peer_streams_snapshot_delta_resume_and_close(
    shards: Cluster, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    c1, c2 = shards["ctl1"], shards["ctl2"]
    tok = shards.token
    c1.vpc("blue", "10.1.0.0/24")
    c1.vpc("green", "10.3.0.0/24")
    c2.vpc("red", "10.2.0.0/24")
    c1.vm("blue", "b1", "10.1.0.5", host="hv1")
    c1.vm("green", "g1", "10.3.0.5", host="hv1")
    c2.vm("red", "r1", "10.2.0.5", host="hv2")
    c2.vm("red", "hidden1", "10.2.0.200", host="hv2")  # outside red's export to blue
    c1.peer("blue", "red")
    red_side = c2.peer("red", "blue", export={"ranges": ["10.2.0.0/25"]})
    both_active(c1, "blue", c2, "red")
    red_policy = red_side["export_policy_id"]
    assert c1.peering("blue", "to-red")["peer_export_policy_id"] == red_policy

    # blue's own peering service (API token) hands hv1 what it needs to follow red.
    own = stream(c1, tok, "peering", "blue", host="hv1")
    snap = own.next()
    assert snap["type"] == "snapshot" and set(snap["objects"]) == {"red"}
    peer = snap["objects"]["red"]
    assert peer["peering"] == "to-red" and peer["peer_vpc"] == "red"
    assert peer["policy_id"] == red_policy and peer["controller"] == c2.url
    assert peer["peer_vni"] == c2.get("/v1/vpcs/red")["vni"]
    g = verify(
        peer["grant"],
        {"k1": bytes.fromhex(shards.grant_key)},
        time.time(),
        target_vpc="red",
        policy_id=red_policy,
        host="hv1",
    )
    assert g.subscriber_vpc == "blue" and g.expires_at == peer["expires_at"]
    red_grant = peer["grant"]
    # green is not peered with red: a grant naming green (signed with the real key) is refused,
    # and blue's grant does not open red's own (unfiltered) streams.
    forged = grant(shards, "green", "red", red_policy, "hv1")
    with stream(c2, forged, "destination", "red", policy=red_policy, host="hv1") as s:
        assert "no ACTIVE peering" in refused(s, 403)
    with stream(c2, red_grant, "destination", "red") as s:
        refused(s, 401)

    # red's destination service through red's export policy: only what it admits.
    with stream(c2, red_grant, "destination", "red", policy=red_policy, host="hv1") as s:
        assert s.content_type.startswith("application/x-ndjson")
        first = s.next()
        assert first["type"] == "snapshot" and first["key"] == "red"
        assert set(first["objects"]) == {"r1"}  # hidden1 is not exported to blue
        r1 = first["objects"]["r1"]
        assert r1["ip"] == "10.2.0.5" and r1["host_ip"] == "192.0.2.2" and r1["kind"] == "vm"
        v0 = first["version"]
        c2.vm("red", "r2", "10.2.0.6", host="hv1")
        delta = s.next()
        assert delta["type"] == "delta" and delta["version"] == v0 + 1
        assert set(delta["upserts"]) == {"r2"} and delta["deletes"] == []
        c2.vm("red", "hidden2", "10.2.0.201", host="hv1")  # hidden: no delta at all
        assert s.quiet(2.5 * shards.heartbeat) == v0 + 1
        assert s.heartbeats >= 1
    # While disconnected: two visible changes and a hidden one.
    c2.vm("red", "r3", "10.2.0.7", host="hv1")
    c2.vm("red", "hidden3", "10.2.0.202", host="hv1")
    c2.delete("/v1/vpcs/red/endpoints/r2")
    with stream(
        c2, red_grant, "destination", "red", policy=red_policy, host="hv1", since=v0 + 1
    ) as s:
        d1, d2 = s.next(), s.next()
        assert (d1["type"], d1["version"], set(d1["upserts"])) == ("delta", v0 + 2, {"r3"})
        assert (d2["type"], d2["version"], d2["deletes"]) == ("delta", v0 + 3, ["r2"])
        assert s.quiet(1.5 * shards.heartbeat) == v0 + 3
    # Up to date: nothing but heartbeats.
    with stream(
        c2, red_grant, "destination", "red", policy=red_policy, host="hv1", since=v0 + 3
    ) as s:
        assert s.quiet(1.5 * shards.heartbeat) == v0 + 3

    # Deleting the peering (on blue's side) ends red's stream for blue: peering-gone.
    with stream(c2, red_grant, "destination", "red", policy=red_policy, host="hv1") as s:
        assert s.next()["type"] == "snapshot"
        start = time.monotonic()
        c1.delete("/v1/vpcs/blue/peerings/to-red")
        close = s.next(ACTIVE_TIMEOUT)
        took = time.monotonic() - start
        assert close == {"type": "close", "reason": "peering-gone"}
        assert s.read(30.0) is None  # and the connection ends
    record_property("close_latency_ms", round(took * 1000, 1))
    with capsys.disabled():
        print(f"\n[two shards] peering deleted -> peer stream closed in {took * 1000:.0f} ms")
    # blue's own peering service drops red; the grant no longer opens red's services.
    gone = own.next()
    assert gone["type"] == "delta" and gone["deletes"] == ["red"]
    own.close()
    with stream(c2, red_grant, "destination", "red", policy=red_policy, host="hv1") as s:
        assert "no ACTIVE peering" in refused(s, 403)
    assert c2.peering("red", "to-blue")["state"] == "INACTIVE"


def test_least_knowledge(shards: Cluster) -> None:
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("navy", "10.71.0.0/24")
    c1.vpc("gold", "10.72.0.0/24")
    c2.vpc("plum", "10.73.0.0/24")
    c1.vm("navy", "n1", "10.71.0.5", host="hv1")
    c2.vm("plum", "p1", "10.73.0.5", host="hv2")
    c1.peer("navy", "plum")
    plum_side = c2.peer("plum", "navy", export={"ranges": ["10.73.0.0/25"]})
    both_active(c1, "navy", c2, "plum")
    pol = plum_side["export_policy_id"]
    with stream(c1, shards.token, "peering", "navy", host="hv1") as s:
        real = s.next()["objects"]["plum"]["grant"]
    with stream(c2, real, "destination", "plum", policy=pol, host="hv1") as s:
        assert s.next()["type"] == "snapshot"  # the real grant works

    other_key = "ab" * 32
    # A bad or expired credential is 401; a good grant for something else is 403
    # (docs/protocol.md). Either way: a JSON error and not one byte of the stream.
    cases: dict[str, tuple[str, dict[str, str | int], int]] = {
        "expired": (grant(shards, "navy", "plum", pol, "hv1", time.time() - 5), {}, 401),
        "tampered": (tamper(real), {}, 401),
        "bad signature": (real[:-2] + ("AA" if real[-2:] != "AA" else "BB"), {}, 401),
        "unknown key": (grant(shards, "navy", "plum", pol, "hv1", key_id="k9"), {}, 401),
        "wrong key": (grant(shards, "navy", "plum", pol, "hv1", key=other_key), {}, 401),
        "api token as grant": (shards.token, {}, 401),
        "other host": (real, {"host": "hv2"}, 403),
        "other policy in the query": (real, {"policy": "p-0000000000000000"}, 403),
        "not peered": (grant(shards, "gold", "plum", pol, "hv1"), {}, 403),
        "policy not exported to navy": (
            grant(shards, "navy", "plum", "p-0000000000000000", "hv1"),
            {"policy": "p-0000000000000000"},
            403,
        ),
        # probing for VPC names with a valid grant looks like a VPC that is not peered
        "unknown vpc": (grant(shards, "navy", "nope", pol, "hv1"), {"key": "nope"}, 403),
        "own stream with grant": (real, {"policy": "", "host": ""}, 401),
        "federation with grant": (real, {"service": "federation", "policy": "", "host": ""}, 401),
        "peering with grant": (real, {"service": "peering", "key": "navy", "policy": ""}, 401),
    }
    for why, (token, change, status) in cases.items():
        query: dict[str, str | int] = {
            "service": "destination",
            "key": "plum",
            "policy": pol,
            "host": "hv1",
        }
        query.update(change)
        query = {k: v for k, v in query.items() if v != ""}
        target = c1 if query["service"] == "peering" else c2
        with Stream(target, query, token) as s:
            assert s.status == status, (why, s.status, s.body)
            refused(s, status)
            if why in ("not peered", "policy not exported to navy", "unknown vpc"):
                assert s.body["field"] == "policy", why
    # Issue 16: a grant is checked against who presents it, not only against its text.
    query = {"service": "destination", "key": "plum", "policy": pol, "host": "hv1"}
    with Stream(c2, query, real, credential=None) as s:  # the grant alone (all it took)
        refused(s, 401)
    with Stream(c2, query, real, credential=shards.host_token("hv2")) as s:  # replayed by hv2
        assert "acts only for itself" in refused(s, 403)
    with Stream(c2, {**query, "host": "hv2"}, real, credential=shards.host_token("hv2")) as s:
        assert "wrong-scope" in refused(s, 403)  # hv2 as itself: the grant names hv1
    with Stream(c2, query, real, credential=shards.host_token("hv1")) as s:
        assert s.next()["type"] == "snapshot"  # hv1 itself


def test_a_peer_host_reports_applied_versions_with_its_credential_and_grant(
    shards: Cluster,
) -> None:
    """hv1 (a host of ctl1's iris) follows ctl2's fern and reports to ctl2 what it applied:
    with its own credential, each peer stream with its grant, checked like a subscription
    (the grant must name the reporting host). A refused report records nothing."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c1.vpc("iris", "10.91.0.0/24")
    c2.vpc("fern", "10.92.0.0/24")
    c1.vm("iris", "i1", "10.91.0.5", host="hv1")
    c2.vm("fern", "f1", "10.92.0.5", host="hv2")
    c1.peer("iris", "fern")
    pol = c2.peer("fern", "iris")["export_policy_id"]
    both_active(c1, "iris", c2, "fern")
    with stream(c1, shards.token, "peering", "iris", host="hv1") as s:
        real = s.next()["objects"]["fern"]["grant"]
    name = f"destination/fern/{pol}/"

    def report(*streams: dict[str, Any], host: str = "hv1", who: str | None = "hv1") -> Any:
        token = None if who is None else shards.host_token(who)
        return c2.req("PUT", f"/v1/hosts/{host}/applied", {"streams": list(streams)}, token)

    def create(ep: str, ip: str) -> Any:
        body = {"name": ep, "ip": ip, "host": "hv2"}
        return c2.post("/v1/vpcs/fern/endpoints?wait=programmed&timeout=1", body)

    with stream(c2, real, "destination", "fern", policy=pol, host="hv1") as sub:
        sub.next()  # snapshot: hv1 now follows the stream
        far = {"stream": name, "version": 2**62, "grant": real}  # above any version to come
        refusals = {
            "no grant": ((far | {"grant": None},), "hv1", "hv1", 401, "streams[0].grant"),
            "tampered": ((far | {"grant": tamper(real)},), "hv1", "hv1", 401, "streams[0].grant"),
            # Issue 16: the grant alone was enough; a host reports for itself only.
            "no credential": ((far,), "hv1", None, 401, None),
            "for another host": ((far,), "hv2", "hv1", 403, None),
            "hv1's grant replayed by hv2": ((far,), "hv2", "hv2", 403, "streams[0].grant"),
            "bad name": ((far | {"stream": "destination/fern"},), "hv1", "hv1", 400, "streams[0].stream"),
            "one bad of two": ((far, far | {"grant": "x"}), "hv1", "hv1", 401, "streams[1].grant"),
        }  # fmt: skip
        for why, (streams, host, who, status, field) in refusals.items():
            body = [{k: v for k, v in st.items() if v is not None} for st in streams]
            r = report(*body, host=host, who=who)
            assert (r.status, r.body["field"]) == (status, field), (why, r.body)
        # hv2 holds the new endpoints: it reports its own stream (the operator's token here).
        own = {"streams": [{"stream": "endpoint/hv2//", "version": far["version"]}]}
        assert c2.req("PUT", "/v1/hosts/hv2/applied", own).status == 200
        made = create("f2", "10.92.0.6")
        assert made["pending_hosts"] == ["hv1"], made  # nothing was recorded
        assert report(far).status == 200  # hv1's credential and its grant
        last = create("f3", "10.92.0.7")
        assert last["programmed"] is True, (last["pending_hosts"], last)


def test_multiplexer_one_service_set_per_unique_policy(shards: Cluster) -> None:
    """coral exports one policy to mint, jade (ctl1) and sage (ctl2), another to onyx (ctl1)."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    c2.vpc("coral", "10.81.0.0/24")
    c2.vm("coral", "c1", "10.81.0.5", host="hv2")
    c2.vpc("sage", "10.82.0.0/24")
    c1.vpc("mint", "10.83.0.0/24")
    c1.vpc("jade", "10.84.0.0/24")
    c1.vpc("onyx", "10.85.0.0/24")
    c1.vm("mint", "m1", "10.83.0.5", host="hv1")
    c1.vm("jade", "j1", "10.84.0.5", host="hv1")
    narrow = {"ranges": ["10.81.0.0/26"]}
    for peer in ("mint", "jade", "onyx"):
        c1.peer(peer, "coral")
        c2.peer("coral", peer, export=narrow if peer == "onyx" else {})
    c2.peer("sage", "coral")
    c2.peer("coral", "sage")
    for peer in ("mint", "jade", "onyx"):
        both_active(c1, peer, c2, "coral")
    both_active(c2, "sage", c2, "coral")
    pid_shared = c2.peering("coral", "to-mint")["export_policy_id"]
    pid_narrow = c2.peering("coral", "to-onyx")["export_policy_id"]
    assert pid_shared != pid_narrow
    assert c2.peering("coral", "to-sage")["export_policy_id"] == pid_shared

    m = c2.get("/v1/multiplexer")
    assert m["shard"] == "ctl2"
    assert m["service_sets_by_vpc"]["coral"] == {
        pid_shared: ["to-jade", "to-mint", "to-sage"],
        pid_narrow: ["to-onyx"],
    }
    assert m["service_sets"] == sum(len(v) for v in m["service_sets_by_vpc"].values())
    assert m["services_published"] == 3 * m["service_sets"]
    coral_streams = {k for k in m["subscribers"] if k.split("/")[1] == "coral"}
    assert coral_streams == {
        f"{service}/coral/{pid}"
        for service in ("destination", "forwarding", "loadbalancer", "federation")
        for pid in (pid_shared, pid_narrow, "own")
        if service != "federation" or pid == "own"
    } | {"peering/coral/own/hv2"}  # coral's own hosts: one peering stream per host

    # mint's and jade's hosts share the one destination stream of the shared policy.
    grants = {}
    for vpc in ("mint", "jade"):
        with stream(c1, shards.token, "peering", vpc, host="hv1") as s:
            grants[vpc] = s.next()["objects"]["coral"]["grant"]
    assert grants["mint"] != grants["jade"]
    subs = {
        vpc: stream(c2, grants[vpc], "destination", "coral", policy=pid_shared, host="hv1")
        for vpc in ("mint", "jade")
    }
    key = f"destination/coral/{pid_shared}"
    try:
        snaps = [s.next() for s in subs.values()]
        assert snaps[0] == snaps[1] and set(snaps[0]["objects"]) == {"c1"}
        assert c2.get("/v1/multiplexer")["subscribers"][key] == 2
        # mint's peering ends: only mint's subscriber is closed; jade's stream goes on.
        c1.delete("/v1/vpcs/mint/peerings/to-coral")
        assert subs["mint"].next(ACTIVE_TIMEOUT) == {"type": "close", "reason": "peering-gone"}
        c2.vm("coral", "c2", "10.81.0.6", host="hv2")
        delta = subs["jade"].next()
        assert delta["type"] == "delta" and set(delta["upserts"]) == {"c2"}
        m = c2.get("/v1/multiplexer")
        assert m["subscribers"][key] == 1
        assert m["service_sets_by_vpc"]["coral"][pid_shared] == ["to-jade", "to-sage"]
    finally:
        for s in subs.values():
            s.close()


# --- VPCs placed by the API alone ---------------------------------------------------------------


def test_a_new_vpc_is_placed_by_hash_created_peered_and_its_name_freed(shards: Cluster) -> None:
    """No directory edit, no restart: every shard names the same owner for an unpinned VPC,
    the owner creates it, the other refuses naming the owner, and peering works across."""
    c1, c2 = shards["ctl1"], shards["ctl2"]
    by = {"ctl1": c1, "ctl2": c2}
    names = ["indigo", "violet"]  # by the hash of the two shard names: one on each shard
    where = {n: c1.get(f"/v1/placement/{n}") for n in names}
    assert {n: c2.get(f"/v1/placement/{n}") for n in names} == where
    assert {w["shard"] for w in where.values()} == {"ctl1", "ctl2"}
    assert all(not w["pinned"] and w["url"] == by[w["shard"]].url for w in where.values())
    owner = {n: by[where[n]["shard"]] for n in names}
    other = {n: by[{"ctl1": "ctl2", "ctl2": "ctl1"}[where[n]["shard"]]] for n in names}
    r = other["indigo"].req("POST", "/v1/vpcs", {"name": "indigo"})
    assert r.status == 409 and r.body["field"] == "name"
    assert (
        where["indigo"]["shard"] in r.body["detail"] and where["indigo"]["url"] in r.body["detail"]
    )
    assert other["indigo"].req("GET", "/v1/vpcs/indigo").status == 404  # nothing was made
    owner["indigo"].vpc("indigo", "10.61.0.0/24")
    owner["violet"].vpc("violet", "10.62.0.0/24")
    owner["indigo"].peer("indigo", "violet")
    owner["violet"].peer("violet", "indigo")
    both_active(owner["indigo"], "indigo", owner["violet"], "violet")
    # deleting frees the name: the same name can be created again, at the same owner
    owner["indigo"].delete("/v1/vpcs/indigo/peerings/to-violet")
    owner["violet"].delete("/v1/vpcs/violet/peerings/to-indigo")
    owner["indigo"].delete("/v1/vpcs/indigo")
    assert owner["indigo"].req("GET", "/v1/vpcs/indigo").status == 404
    assert owner["indigo"].vpc("indigo", "10.63.0.0/24")["name"] == "indigo"
