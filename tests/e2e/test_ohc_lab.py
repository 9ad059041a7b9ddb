"""The on-host controllers program br-int from the controllers' streams: real packets (issue 4).

On tests/e2e/topologies/mesh.yaml (blue <-> red across shards, red <-> green with green
exporting 10.3.0.0/25 only, blue - green not peered, r3 deferred): the reachability matrix,
TCP, Geneve on the wire, a peering deleted and re-added and an endpoint added and removed
under traffic. On limited.yaml: a host with only blue endpoints learns nothing else.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers, ohcs, ovs
from meshpeer.lab.cli import load_topology
from meshpeer.lab.expect import expect
from meshpeer.lab.topology import Endpoint, Topology
from tests.e2e.traffic import Capture, Pinger
from tests.integration.labkit import E2E_TOPOLOGIES as TOPOLOGIES
from tests.integration.labkit import Lab, check_matrix, running
from tests.support.wait import wait_for

MESH = "mesh.yaml"
LIMITED = "limited.yaml"
PEERING = {"name": "blue-red", "peer_vpc": "red"}


def topology(name: str) -> Topology:
    return load_topology(os.path.join(TOPOLOGIES, name))


def endpoint(topo: Topology, name: str) -> Endpoint:
    return next(e for e in topo.endpoints if e.name == name)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """mesh.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(MESH, TOPOLOGIES) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def limited() -> Iterator[Lab]:
    with running(LIMITED, TOPOLOGIES) as the_lab:
        yield the_lab


def client(lab: Lab, ctl: str) -> Client:
    return controllers.client_for(lab.plan, ctl)


# --- mesh.yaml -----------------------------------------------------------------------------------


def test_matrix_equals_expectation(lab: Lab) -> None:
    check_matrix(lab, topology(MESH))


@pytest.mark.parametrize(("client_vm", "server_vm"), [("b1", "r1"), ("r1", "b1")])
def test_tcp_across_the_cross_shard_peering(lab: Lab, client_vm: str, server_vm: str) -> None:
    nbytes = 4 << 20
    received, bps = lab.tcp_transfer(client_vm, server_vm, nbytes)
    print(f"\nTCP {client_vm} -> {server_vm}: {received} bytes at {bps / 1e6:.0f} Mbit/s")
    assert received >= nbytes


def test_geneve_goes_host_to_host_with_the_destination_vni(lab: Lab) -> None:
    """b1 (hv1, blue) -> r1 (hv2, red): straight from hv1's VTEP to hv2's, nothing via hv3.

    The sender uses the destination's VNI: red's for the request, blue's for the reply.
    """
    hv1, hv2 = lab.host("hv1").underlay_ip, lab.host("hv2").underlay_ip
    blue, red = lab.plan.vnis["blue"], lab.plan.vnis["red"]
    with Capture(lab.plan, "hv1") as on_hv1, Capture(lab.plan, "hv3") as on_hv3:
        assert lab.ping("b1", "r1", count=3)
        seen, raw = on_hv1.stop(expect=6)
        via_hv3, raw3 = on_hv3.stop()
    assert not via_hv3, f"Geneve through hv3 (a proxy?):\n{raw3}"
    requests = [p for p in seen if p.icmp == "request"]
    replies = [p for p in seen if p.icmp == "reply"]
    assert len(requests) == 3 and len(replies) == 3, raw
    assert len(seen) == 6, raw  # nothing else crossed hv1's underlay link
    for p in requests:
        assert (p.src, p.dst, p.vni) == (hv1, hv2, red), raw
        assert (p.inner_src, p.inner_dst) == (lab.vm("b1").ip, lab.vm("r1").ip), raw
    for p in replies:
        assert (p.src, p.dst, p.vni) == (hv2, hv1, blue), raw
        assert (p.inner_src, p.inner_dst) == (lab.vm("r1").ip, lab.vm("b1").ip), raw


@pytest.mark.parametrize(
    ("src", "dst", "why"),
    [("b1", "g1", "not peered"), ("g1", "b1", "not peered"), ("r1", "g2", "hidden by policy")],
)
def test_not_peered_and_policy_hidden_do_not_pass(lab: Lab, src: str, dst: str, why: str) -> None:
    topo = topology(MESH)
    assert expect(topo, endpoint(topo, src), endpoint(topo, dst)).why == why
    assert not lab.ping(src, dst, count=2)
    assert lab.ping("r1", "g1")  # the path next to it works


def test_endpoint_added_and_removed_under_traffic(lab: Lab) -> None:
    """r3 (deferred) is created, reached from b1, deleted; b1 -> r1 runs unharmed throughout.

    Each step waits for what it needs (replies, r3's flows gone from every host); the
    latencies are printed, and how many pings went out meanwhile is the machine's business.
    """
    red = client(lab, "ctl2")
    r3 = endpoint(topology(MESH), "r3")
    with (
        Pinger(lab.vm("b1"), lab.vm("r1").ip, count=100000) as steady,
        Pinger(lab.vm("b1"), lab.vm("r3").ip, count=100000) as probe,
    ):
        assert steady.wait_reply_after(steady.started, 30) is not None, "b1 -> r1 at the start"
        wait_for(lambda: probe.unanswered() >= 3, 30, what="b1 -> r3 requests sent")
        assert not probe.replies(), "r3 answered before it was created"

        t_sent = time.time()
        red.post("/v1/vpcs/red/endpoints", controllers.endpoint_body(lab.plan, r3))
        t_post = time.time()
        first = probe.wait_reply_after(t_sent, 30)
        assert first is not None, "b1 -> r3 did not work within 30 s of creating r3"
        print(
            f"\nendpoint programming latency: first b1 -> r3 reply "
            f"{(first - t_post) * 1000:.0f} ms after POST returned "
            f"({(first - t_sent) * 1000:.0f} ms after it was sent)"
        )
        assert lab.ping("r3", "b1") and lab.ping("r3", "r1")

        red.delete("/v1/vpcs/red/endpoints/r3")
        t_del = time.time()
        wait_for(
            lambda: not lab.hosts_with_flows_for(lab.vm("r3").ip), 30, what="r3's flows removed"
        )
        t_gone = time.time()
        last = probe.last_reply()
        assert last is not None
        print(
            f"endpoint removal: r3's flows gone from every host {(t_gone - t_del) * 1000:.0f} ms "
            f"after DELETE returned; last b1 -> r3 reply {(last - t_del) * 1000:+.0f} ms"
        )
        assert not lab.ping("b1", "r3", count=2)
        steady_t = time.time()
        assert steady.wait_reply_after(steady_t, 30) is not None, "b1 -> r1 after the removal"
        steady_result = steady.stop()
        probe.stop()
    print(
        f"b1 -> r1 at up to 100 pps meanwhile: {steady_result.sent} sent, "
        f"{steady_result.lost} lost, gaps {steady_result.gaps()}"
    )
    assert not steady_result.gaps(), "b1 -> r1 lost packets while r3 came and went"


def test_deleting_a_peering_cuts_traffic_and_re_adding_restores_it(lab: Lab) -> None:
    blue = client(lab, "ctl1")
    with Pinger(lab.vm("b1"), lab.vm("r1").ip, count=100000) as pinger:
        assert pinger.wait_reply_after(pinger.started, 30) is not None, "b1 -> r1 before the cut"
        t_sent = time.time()
        blue.delete("/v1/vpcs/blue/peerings/blue-red")
        t_del = time.time()
        wait_for(lambda: not lab.ping("b1", "r1", count=2), 30, what="b1 -> r1 cut")
        last = pinger.last_reply()
        assert last is not None
        print(
            f"\npeering cut: last reply {(last - t_del) * 1000:+.0f} ms after DELETE returned "
            f"({(last - t_sent) * 1000:.0f} ms after it was sent; DELETE took "
            f"{(t_del - t_sent) * 1000:.0f} ms)"
        )
        assert not lab.ping("r1", "b1", count=2), "cut one way only"

        t_sent = time.time()
        blue.post("/v1/vpcs/blue/peerings", PEERING)
        t_post = time.time()
        first = pinger.wait_reply_after(t_sent, 30)
        result = pinger.stop()
    assert first is not None, "traffic did not come back within 30 s of re-adding the peering"
    print(
        f"peering restore: first reply {(first - t_post) * 1000:.0f} ms after POST returned "
        f"({(first - t_sent) * 1000:.0f} ms after it was sent); "
        f"pinger {result.sent} sent, {result.received} received"
    )
    state = blue.get("/v1/vpcs/blue/peerings/blue-red")["state"]
    assert state == "ACTIVE"
    assert lab.ping("b1", "r1", count=3)


def test_peer_changes_still_arrive_after_a_peering_sharing_the_stream_was_cycled(lab: Lab) -> None:
    """hv1 holds b1 (blue) and g2 (green); red exports the same policy to both, so hv1 follows
    ONE red@policy stream for both peerings, opened with one of their grants. Cycle each
    peering once (delete, re-add: whichever grant opened the stream, one deletion closes it),
    then create r3: hv1 must still learn it and b1 -> r3 must work.
    """
    ctl1, red = client(lab, "ctl1"), client(lab, "ctl2")
    topo = topology(MESH)
    green_red = next(p for p in topo.peerings if (p.vpc, p.peer) == ("green", "red"))
    bodies = {
        "blue": PEERING,
        "green": {"name": "green-red", "peer_vpc": "red", "export": dict(green_red.export or {})},
    }
    policy = red.get("/v1/vpcs/red/peerings/red-blue")["export_policy_id"]
    assert policy == red.get("/v1/vpcs/red/peerings/red-green")["export_policy_id"]
    peer_of = {"blue": ("b1", "r1"), "green": ("r1", "g1")}
    for vpc, body in bodies.items():
        ctl1.delete(f"/v1/vpcs/{vpc}/peerings/{body['name']}")
        src, dst = peer_of[vpc]
        wait_for(
            lambda src=src, dst=dst: not lab.ping(src, dst, count=2), 30, what=f"{vpc}-red cut"
        )
        ctl1.post(f"/v1/vpcs/{vpc}/peerings", body)
        wait_for(lambda: lab.ping("b1", "r1") and lab.ping("r1", "g1"), 30, what=f"{vpc}-red back")
    r3 = endpoint(topo, "r3")
    with Pinger(lab.vm("b1"), lab.vm("r3").ip, count=100000) as probe:
        t_sent = time.time()
        red.post("/v1/vpcs/red/endpoints", controllers.endpoint_body(lab.plan, r3))
        try:
            first = probe.wait_reply_after(t_sent, 30)
            probe.stop()
            others = lab.ping("r1", "r3")  # hv2 and hv3 learnt r3: the shard published it
        finally:
            red.delete("/v1/vpcs/red/endpoints/r3")
    st = ohcs.status(lab.host("hv1")) or {}
    red_streams = {
        k: v for k, v in st.get("received", {}).get("streams", {}).items() if "red@" in k
    }
    print(f"\nhv1 red streams after the cycles: {red_streams}")
    assert others
    assert first is not None, "hv1 never learnt r3: its red stream is dead"


# --- limited.yaml --------------------------------------------------------------------------------

STREAM_RE = re.compile(r"^(\w+)/([a-z0-9]+)(?:@(\S+))? at (\S+)$")


def streams(status: dict[str, Any]) -> list[tuple[str, str, str | None, str]]:
    """(service, key, policy, url) of every stream the OHC follows, from its status file."""
    out = []
    for name in status["received"]["streams"]:
        m = STREAM_RE.match(name)
        assert m, name
        out.append((m[1], m[2], m[3], m[4]))
    return out


def test_limited_matrix_equals_expectation(limited: Lab) -> None:
    check_matrix(limited, topology(LIMITED))


def test_a_blue_only_host_learns_only_blue_and_what_red_exports_to_blue(limited: Lab) -> None:
    lab = limited
    topo = topology(LIMITED)
    ctl2 = client(lab, "ctl2")
    to_blue = ctl2.get("/v1/vpcs/red/peerings/red-blue")["export_policy_id"]
    to_green = ctl2.get("/v1/vpcs/red/peerings/red-green")["export_policy_id"]
    assert to_blue != to_green  # red exports differently to blue: two service sets

    status: dict[str, dict[str, Any]] = {}
    for h in lab.plan.hosts:
        st = ohcs.status(h)
        assert st is not None, h.name
        status[h.name] = st
    print(f"\n[{lab.name}] received per host (limited.yaml):")
    for name, st in status.items():
        rx = st["received"]
        print(
            f"  {name}: {rx['bytes']} bytes, {rx['objects']} objects, "
            f"{len(rx['streams'])} streams, vpcs_known {sorted(st['vpcs_known'])}"
        )
    hv1 = status["hv1"]
    for name, rx in hv1["received"]["streams"].items():
        print(f"    hv1 {name}: {rx['bytes']} bytes, {rx['objects']} objects")

    assert {v.vpc for v in lab.plan.vms_on("hv1")} == {"blue"}
    assert set(hv1["ports"]) == {"blue/b1", "blue/b2"}
    assert set(hv1["vpcs_known"]) == {"blue", "red"}, hv1["vpcs_known"]
    assert set(hv1["vpcs_known"]["red"]) == {"destination", "forwarding", "loadbalancer"}
    for service, key, policy, _url in streams(hv1):
        if service == "endpoint":
            assert key == "hv1"
        elif key == "blue":
            assert policy is None
        else:
            # Only red's export *to blue*; no green, no yellow, not red's export to green.
            assert (key, policy) == ("red", to_blue), (service, key, policy)
    assert ("destination", "red", to_blue) in {s[:3] for s in streams(hv1)}
    # Others do follow what hv1 must not: the limit is per host, not global.
    assert ("destination", "red", to_green) in {s[:3] for s in streams(status["hv2"])}
    assert hv1["received"]["bytes"] < min(status[h]["received"]["bytes"] for h in ("hv2", "hv3"))

    # What red sent hv1 excludes r9 (hidden by red's export to blue): no flow mentions it,
    # nor anything of green or yellow, while r1 (exported) is there.
    flows = ovs.ofctl(lab.host("hv1"), "dump-flows", "--no-stats")
    assert lab.vm("r1").ip in flows
    for e in topo.endpoints:
        if e.vpc in ("green", "yellow") or e.name == "r9":
            assert f"={e.ip}" not in flows and f"={e.ip}/" not in flows, (e.name, flows)
    for vpc in ("green", "yellow"):
        vni = hex(lab.plan.vnis[vpc])
        assert f"tun_id={vni}," not in flows and f"{vni}->tun_id" not in flows, (vpc, flows)
        assert f"metadata={vni}/" not in flows, (vpc, flows)
    for subnet in ("10.3.0.", "10.4.0."):
        assert subnet not in flows, flows
    # r9 is known where it should be: hv2 hosts green's g1, and green sees all of red.
    assert lab.vm("r9").ip in ovs.ofctl(lab.host("hv2"), "dump-flows", "--no-stats")
