"""Gateway forwarding on a whole lab (issue 14), netns backend only.

On tests/e2e/topologies/gateway.yaml both sides of blue <-> red say ``forwarding: gateway``
and gw1, gw2 are gateway hosts. b1 (hv1) pings r1 (hv2): tcpdump on the underlay shows each
echo request go hv1 -> gateway -> hv2 and each reply hv2 -> gateway -> hv1, with the
destination's VNI; hv1 holds no flow for r1's address (dump-flows), only red's subnet to a
select group over both gateways (dump-groups), which ``ofproto/trace`` of b1's packet reaches
(red's VNI, then dp_hash). Blue's own traffic (b1 -> b2) still goes straight between hosts.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import pytest

from meshpeer.lab import controllers, ovs
from meshpeer.lab.cli import load_topology, status
from meshpeer.lab.plan import NETNS
from ohc.compiler import gateway_mac
from tests.e2e import gwkit
from tests.e2e.traffic import Capture
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(
    os.environ.get("MESHPEER_LAB_BACKEND", NETNS) != NETNS,
    reason="gateway e2e runs on the netns backend only (captures on the fabric's host links)",
)

TOPOLOGY = "gateway.yaml"
GATEWAYS = ("gw1", "gw2")
DEADLINE = 60.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """gateway.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def ip(lab: Lab, host: str) -> str:
    return lab.host(host).underlay_ip


def test_status_says_each_hosts_role(lab: Lab) -> None:
    roles = {h["name"]: h["role"] for h in status(lab.plan)["hosts"]}
    assert roles == {"hv1": "hypervisor", "hv2": "hypervisor", "gw1": "gateway", "gw2": "gateway"}


def test_ping_goes_host_gateway_host_both_ways(lab: Lab) -> None:
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1 through the gateways")
    b1, r1 = lab.vm("b1"), lab.vm("r1")
    count = 5
    with contextlib.ExitStack() as stack:  # each capture armed before the first ping
        caps = {h: stack.enter_context(Capture(lab.plan, h)) for h in GATEWAYS}
        lab.sh("b1", "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", r1.ip)

        def seen() -> list[tuple[str, str, int, str | None]]:
            return [
                (p.src, p.dst, p.vni, p.icmp)
                for cap in caps.values()
                for p in cap.packets()
                if {p.inner_src, p.inner_dst} == {b1.ip, r1.ip}
            ]

        # each request and each reply crosses one gateway's link twice (in, then out)
        wait_for(lambda: len(seen()) >= 4 * count, DEADLINE, what="every packet captured")
        for cap in caps.values():
            cap.stop()
        got = seen()
    gws = {ip(lab, g) for g in GATEWAYS}
    hv1, hv2 = ip(lab, "hv1"), ip(lab, "hv2")
    print(f"\nb1 <-> r1 on the gateways' underlay links (src, dst, vni, icmp): {got}")
    requests = [x for x in got if x[3] == "request"]
    replies = [x for x in got if x[3] == "reply"]
    # each request: in from hv1 and out to hv2 on a gateway, with red's VNI; replies the reverse
    assert {(s, d) for s, d, _, _ in requests} <= {(hv1, g) for g in gws} | {(g, hv2) for g in gws}
    assert sum(1 for s, _, _, _ in requests if s == hv1) >= count, got
    assert sum(1 for _, d, _, _ in requests if d == hv2) >= count, got
    assert {v for _, _, v, _ in requests} == {r1.vni}, got
    assert {(s, d) for s, d, _, _ in replies} <= {(hv2, g) for g in gws} | {(g, hv1) for g in gws}
    assert sum(1 for _, d, _, _ in replies if d == hv1) >= count, got
    assert {v for _, _, v, _ in replies} == {b1.vni}, got


def test_hypervisors_hold_no_flow_per_peer_endpoint(lab: Lab) -> None:
    b1, r1 = lab.vm("b1"), lab.vm("r1")
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1")
    assert "hv1" not in lab.hosts_with_flows_for(r1.ip)  # no flow names r1's address
    # hv2 holds b1 as blue's own destination (b2 is there), never in red's context
    in_red = [
        line
        for line in lab.flows("hv2").splitlines()
        if re.search(f"={re.escape(b1.ip)}(?![0-9])", line)
        and re.search(f"metadata=0x1?0*{r1.vni:x}/", line)
    ]
    assert in_red == [], in_red
    assert set(GATEWAYS) <= set(lab.hosts_with_flows_for(r1.ip))  # the gateways relay to it
    groups = ovs.ofctl(lab.host("hv1"), "dump-groups")
    tun_dsts = set(re.findall(r"set_field:([0-9.]+)->tun_dst", groups))
    assert tun_dsts == {ip(lab, g) for g in GATEWAYS}, groups
    assert "type=select" in groups, groups
    flow = (
        f"in_port={b1.host_port},icmp,dl_src={b1.mac},dl_dst={gateway_mac(b1.vni)},"
        f"nw_src={b1.ip},nw_dst={r1.ip},nw_ttl=64,icmp_type=8"
    )
    trace = ovs.appctl(lab.host("hv1"), "ofproto/trace", "br-int", flow)
    # red's subnet flow: red's VNI, then the select group; the datapath picks the bucket by
    # dp_hash after a recirculation (the trace stops there: the buckets are in dump-groups)
    group = re.search(r"group:(\d+)", trace)
    assert f"set_field:{r1.vni:#x}->tun_id" in trace and group is not None, trace
    assert f"group_id={group.group(1)},type=select" in groups, groups
    assert "hash(" in trace.split("Datapath actions:")[-1], trace


def test_own_vpc_traffic_stays_direct(lab: Lab) -> None:
    b1, b2 = lab.vm("b1"), lab.vm("b2")
    wait_for(lambda: lab.ping("b1", "b2"), DEADLINE, what="b1 pings b2")
    flow = (
        f"in_port={b1.host_port},icmp,dl_src={b1.mac},dl_dst={b2.mac},nw_src={b1.ip},nw_dst={b2.ip}"
    )
    trace = ovs.appctl(lab.host("hv1"), "ofproto/trace", "br-int", flow)
    assert re.findall(r"set_field:([0-9.]+)->tun_dst", trace) == [ip(lab, "hv2")], trace


def test_writes_are_programmed_and_a_new_peer_endpoint_needs_no_change_on_hv1(lab: Lab) -> None:
    """?wait=programmed waits for the hosts that follow each stream: red's side written, the
    gateways hold red's destinations and blue's hypervisors red's other services. r2, created
    behind the gateways, answers b1 while hv1's flows stay exactly as they were."""
    blue_ctl, red_ctl = (controllers.client_for(lab.plan, c) for c in ("ctl1", "ctl2"))
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1")
    got = red_ctl.put("/v1/vpcs/red/peerings/red-blue?wait=programmed", {"preference": 150})
    assert (got["programmed"], got["pending_hosts"]) == (True, []), got
    got = blue_ctl.put("/v1/vpcs/blue/peerings/blue-red?wait=programmed", {"preference": 150})
    assert (got["programmed"], got["pending_hosts"]) == (True, []), got
    before = sorted(lab.flows("hv1").splitlines())
    r2 = next(e for e in load_topology(os.path.join(E2E_TOPOLOGIES, TOPOLOGY)).endpoints
              if e.name == "r2")  # fmt: skip
    got = red_ctl.post(
        "/v1/vpcs/red/endpoints?wait=programmed", controllers.endpoint_body(lab.plan, r2)
    )
    assert (got["programmed"], got["pending_hosts"]) == (True, []), got
    wait_for(lambda: lab.ping("b1", "r2"), DEADLINE, what="b1 pings r2 through the gateways")
    assert sorted(lab.flows("hv1").splitlines()) == before  # nothing new on b1's host
    assert "hv1" not in lab.hosts_with_flows_for(lab.vm("r2").ip)


def test_on_demand_moves_a_busy_pair_to_the_direct_path_and_back(lab: Lab) -> None:
    """Blue's side says on-demand: b1 pings r1 at 100 pps through the gateways; hv1 counts the
    pair (a learned flow), finds it above [ohc] offload_pps and compiles r1's destination: the
    requests go hv1 -> hv2 with no gateway (tcpdump on hv1's link), and no ping is lost across
    the switch. Once b1 stops, the pair goes back to the gateways (offload_idle_s). hv1
    follows red's destination stream only while the pair is direct, narrowed to r1
    (docs/protocol.md, "Destination filter"; what it then receives: tests/api), with the
    grant its own shard minted for r1 alone on its report of the busy pair ("Offload
    grants": red's shard refuses the peering's grant for red's destinations to an on-demand
    host, so "delivered" below means the scoped grant was taken)."""
    blue_ctl = controllers.client_for(lab.plan, "ctl1")

    def follows_red_destinations() -> bool:
        status = blue_ctl.get("/v1/hosts/hv1")["status"] or {"streams": []}
        return any(
            s["stream"].startswith("destination/red/") and s["state"] == "delivered"
            for s in status["streams"]
        )

    path = "/v1/vpcs/blue/peerings/blue-red?wait=programmed"
    got = blue_ctl.put(path, {"forwarding": "on-demand"})
    assert (got["programmed"], got["pending_hosts"]) == (True, []), got
    b1, r1 = lab.vm("b1"), lab.vm("r1")
    hv1, hv2 = lab.host("hv1"), lab.host("hv2")
    try:
        wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1")
        assert not gwkit.has_direct_flow(hv1, r1.ip)  # through the gateways to start with
        wait_for(lambda: not follows_red_destinations(), DEADLINE, what="no red destination")
        run = gwkit.offload(lab.plan, hv1, b1, r1, DEADLINE)
        wait_for(follows_red_destinations, DEADLINE, what="red's stream, narrowed to r1")
        requests = [p for p in run.captured if p.icmp == "request" and p.inner_dst == r1.ip]
        assert requests, run.captured
        assert {(p.src, p.dst, p.vni) for p in requests} == {
            (hv1.underlay_ip, hv2.underlay_ip, r1.vni)
        }
        assert run.result.gaps() == []  # nothing lost across the switch
        print(f"\noffloaded {run.offloaded_at - run.started_at:.2f} s after the first reply")
        wait_for(
            lambda: not gwkit.has_direct_flow(hv1, r1.ip), DEADLINE,
            what="the idle pair back to the gateways",
        )  # fmt: skip
        wait_for(lambda: not follows_red_destinations(), DEADLINE, what="red's stream left")
        wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1 through the gateways")
    finally:
        got = blue_ctl.put(path, {"forwarding": "gateway"})
    assert got["programmed"], got


def test_a_dead_gateway_leaves_the_group_and_traffic_stays_on_the_other(lab: Lab) -> None:
    """hv1 and hv2 keep a BFD session to each gateway (its port reflects them back), and each
    bucket of their select groups watches its gateway's session. b1 pings r1 at 100 pps; the
    gateway carrying it dies (its ovs-vswitchd stopped): both hypervisors' sessions to it go
    down, no b1 <-> r1 packet goes to it any more, and every ping after that is answered
    through the other one. Then it comes back and gets its share again."""
    hvs = [lab.host("hv1"), lab.host("hv2")]
    gw_ips = {g: ip(lab, g) for g in GATEWAYS}
    b1, r1 = lab.vm("b1"), lab.vm("r1")

    def all_up() -> bool:
        return gwkit.all_fast(hvs, gw_ips.values())

    wait_for(all_up, DEADLINE, what="hv1 and hv2 have a BFD session up to each gateway")
    groups = ovs.ofctl(lab.host("hv1"), "dump-groups")
    watched = set(re.findall(r"watch_port:(\d+)", groups))
    assert len(watched) == len(GATEWAYS), groups  # one BFD port per gateway
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1")
    gws = {g: lab.host(g) for g in GATEWAYS}
    run = gwkit.failover(lab.plan, hvs, gws, b1, r1, DEADLINE)
    # after the switch: b1 <-> r1 only on the live gateway, none toward the dead one
    assert [p for p in run.on_dead if p.vni in (b1.vni, r1.vni)] == [], run.on_dead
    assert {p.vni for p in run.on_other if p.icmp} == {b1.vni, r1.vni}, run.on_other
    assert run.lost_after_switch() == []  # nothing lost once the group had switched
    lost = len(run.result.gaps())
    print(f"\nkilled {run.dead}: {lost} pings lost, loss window {run.window_s():.3f} s")
    # back: both sessions up again, and b1 still reaches r1
    wait_for(all_up, DEADLINE, what=f"the sessions to {run.dead} up again")
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1 after the return")
