"""Dynamic routes from real on-prem routers over BGP (issue 12), on a whole lab with BIRD2.

On tests/e2e/topologies/bgp.yaml: blue's vpn endpoint v1 (hv1) sits in front of dc1 (BIRD,
AS 65001), which announces 192.168.10.0/24 where d1 lives; green's v3 in front of dc2 (AS
65002, 192.168.20.0/24). Both sessions are held by ctl1's one BGP speaker. b1 (blue, hv2) must
reach d1 through v1 once dc1 announces the prefix, and stop when dc1 withdraws it; dc1 must
learn blue's subnet (next hop blue's gateway) and nothing of green's, dc2 nothing of blue's.
red (ctl2) peers blue and imports its custom routes: the dynamic route travels in blue's
federation view and forwarding service, r1 (hv3) sends to d1 straight to hv1, and dc1 learns
red's subnet too.
Each os-ken 4.2.2 workaround the speaker uses (meshpeer/controller/speaker.py) has a test here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers, onprem, supervisor, teardown
from meshpeer.lab.plan import OnpremPlan
from meshpeer.lab.procs import alive, read_pidfile
from meshpeer.lab.sh import netns_cmd, run
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, bring_up, lab_cli, running
from tests.support import wait as waiting

TOPOLOGY = "bgp.yaml"
PREFIX = "192.168.10.0/24"
D1 = "192.168.10.10"
DEADLINE = 30.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Named ``lab`` so that conftest dumps flows when a test fails. 'down' ends BIRD (a
    supervised process) by pid, also when a test failed."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        for r in the_lab.plan.onprem:
            wait_for(partial(established, r), f"{r.name}'s BGP session")
        yield the_lab


def router(lab: Lab, name: str) -> OnpremPlan:
    r = lab.plan.router(name)
    assert r is not None
    return r


def client(lab: Lab, ctl: str = "ctl1") -> Client:
    return controllers.client_for(lab.plan, ctl)


def wait_for(cond: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """``tests.support.wait.wait_for`` with this file's deadline, polling every 0.1 s."""
    waiting.wait_for(cond, timeout, 0.1, what)


def protocol(r: OnpremPlan) -> tuple[str, str]:
    """BIRD's BGP protocol ``vpc``: (state, since)."""
    line = next(
        x for x in onprem.birdc(r, "show", "protocols").splitlines() if x.startswith("vpc ")
    )
    fields = line.split()
    return fields[5] if len(fields) > 5 else fields[3], fields[4]


def established(r: OnpremPlan) -> bool:
    return protocol(r)[0] == "Established"


def bird_routes(r: OnpremPlan) -> dict[str, str]:
    """Prefix -> the line(s) BIRD shows for it, from the VPC's session only."""
    out: dict[str, str] = {}
    current = ""
    for line in onprem.birdc(r, "show", "route", "protocol", "vpc", "all").splitlines():
        m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s", line)
        if m:
            current = m.group(1)
            out[current] = line
        elif current:
            out[current] += "\n" + line
    return out


def effective(lab: Lab, vpc: str, ctl: str = "ctl1") -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = client(lab, ctl).get(f"/v1/vpcs/{vpc}/routes/effective")[
        "routes"
    ]
    return [r for r in routes if r["prefix"] == PREFIX]


def reaches(lab: Lab, src: str, dst: str = D1, count: int = 1) -> bool:
    args = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", dst]
    ns = lab.plan.netns_of(src)
    return run(args, netns=ns, check=False, timeout=30).returncode == 0


def test_sessions_and_what_each_router_learns(lab: Lab) -> None:
    """BIRD shows blue's subnet via blue's gateway on v1's segment; no transit: dc1 learns
    nothing of green and dc2 nothing of blue or of dc1 (out filters set before the session,
    workaround for the speaker being transit by default)."""
    dc1, dc2 = router(lab, "dc1"), router(lab, "dc2")
    wait_for(lambda: "10.1.0.0/24" in bird_routes(dc1), "dc1 learns blue's subnet")
    wait_for(lambda: "10.3.0.0/24" in bird_routes(dc2), "dc2 learns green's subnet")
    blue = bird_routes(dc1)
    print(f"\ndc1 learned:\n{onprem.birdc(dc1, 'show', 'route', 'protocol', 'vpc')}")
    wait_for(lambda: "10.2.0.0/24" in bird_routes(dc1), "dc1 learns red's subnet")
    blue = bird_routes(dc1)
    assert set(blue) == {"10.1.0.0/24", "10.2.0.0/24"}, blue  # red imports blue's routes
    assert "BGP.next_hop: 10.1.0.1" in blue["10.1.0.0/24"]
    assert "BGP.next_hop: 10.1.0.1" in blue["10.2.0.0/24"]
    assert "BGP.as_path: 64512" in blue["10.1.0.0/24"]
    green = bird_routes(dc2)
    assert set(green) == {"10.3.0.0/24"}, green  # not 192.168.10.0/24, not 10.1.0.0/24
    assert "BGP.as_path: 64513" in green["10.3.0.0/24"]  # green's own AS (per-session local AS)
    # what BIRD learned is in its kernel table: dc1 routes blue's subnet via the gateway
    assert "10.1.0.0/24 via 10.1.0.1" in lab.sh("dc1", "ip", "route", "show", "proto", "bird")


def test_a_learned_prefix_is_a_dynamic_route_and_b1_reaches_d1(lab: Lab) -> None:
    wait_for(lambda: effective(lab, "blue"), "blue learns " + PREFIX)
    (route,) = effective(lab, "blue")
    assert route == {
        "prefix": PREFIX,
        "kind": "dynamic",
        "origin": "local",
        "next_hop": lab.vm("v1").ip,
        "priority": 1000,
        "installed": True,
    }
    assert effective(lab, "green") == []
    (session,) = client(lab).get("/v1/vpcs/blue/bgp")["sessions"]
    assert (session["endpoint"], session["established"], session["announced_next_hop"]) == (
        "v1", True, "10.1.0.1",
    )  # fmt: skip
    assert session["learned"] == [{"prefix": PREFIX, "med": None, "stale": False, "accepted": True}]
    wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1 through v1 and dc1")
    assert reaches(lab, "d1", lab.vm("b1").ip)  # and back: dc1 forwards to blue's subnet
    assert not reaches(lab, "g1")  # green learned nothing from dc1


def test_a_peer_importing_custom_routes_reaches_d1_straight_to_the_vpn_host(lab: Lab) -> None:
    """red (ctl2) imports blue's custom routes: its effective routes show the dynamic route
    from blue, and r1's host tunnels packets for the prefix to hv1 itself (no proxy)."""
    wait_for(lambda: effective(lab, "red", "ctl2"), "red imports " + PREFIX)
    (route,) = effective(lab, "red", "ctl2")
    assert (route["kind"], route["origin"], route["next_hop"], route["installed"]) == (
        "dynamic", "peer:blue", lab.vm("v1").ip, True,
    )  # fmt: skip
    wait_for(lambda: reaches(lab, "r1"), "r1 reaches d1")
    assert reaches(lab, "d1", lab.vm("r1").ip)
    hv1 = lab.host("hv1").underlay_ip
    routed = [f for f in lab.flows("hv3").splitlines() if "nw_dst=192.168.10.0/24" in f]
    assert routed and all(f"set_field:{hv1}->tun_dst" in f for f in routed), routed


def probe(lab: Lab, src: str, dst: str = D1) -> subprocess.Popen[str]:
    """A ping every 20 ms with receive timestamps, until stopped."""
    cmd = ["ping", "-n", "-D", "-i", "0.02", "-W", "1", dst]
    return subprocess.Popen(
        netns_cmd(lab.plan.netns_of(src), cmd), stdout=subprocess.PIPE, text=True
    )


def replies(p: subprocess.Popen[str]) -> dict[int, float]:
    """icmp_seq -> receive time of every reply the probe got."""
    p.terminate()
    out, _ = p.communicate(timeout=10)
    found = re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)", out, re.M)
    return {int(m.group(2)): float(m.group(1)) for m in found}


def test_withdraw_stops_traffic_and_announce_brings_it_back(lab: Lab) -> None:
    """dc1 drops the prefix from its config (birdc configure): the route leaves the table and
    b1's packets stop, and red's (the peer's) too; announcing it again brings them back. Timed
    from the configure (a probe every 20 ms: the numbers have that resolution)."""
    dc1 = router(lab, "dc1")
    wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1")
    stops, firsts = [], []
    for _ in range(3):
        p = probe(lab, "b1")
        wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1")
        t0 = time.time()
        onprem.announce(dc1, [])
        wait_for(lambda: not effective(lab, "blue"), "the withdrawal reaches blue")
        wait_for(lambda: not reaches(lab, "b1"), "b1's traffic to d1 stops")
        got = replies(p).values()
        stops.append(max(t for t in got if t < t0 + DEADLINE) - t0)

        p = probe(lab, "b1")
        t0 = time.time()
        onprem.announce(dc1, [PREFIX])
        wait_for(lambda: effective(lab, "blue"), "the announcement reaches blue")
        wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1 again")
        got = replies(p).values()
        firsts.append(min(t for t in got if t > t0) - t0)
    onprem.announce(dc1, [])  # withdrawn everywhere: red (another shard) too
    wait_for(lambda: not effective(lab, "red", "ctl2"), "the withdrawal reaches red")
    assert not effective(lab, "blue")
    wait_for(lambda: not reaches(lab, "r1"), "r1's traffic to d1 stops")
    onprem.announce(dc1, [PREFIX])
    wait_for(lambda: reaches(lab, "r1") and reaches(lab, "b1"), "both reach d1 again")
    print(f"\nwithdraw -> last reply: {', '.join(f'{s * 1000:.0f}' for s in stops)} ms; "
          f"announce -> first reply: {', '.join(f'{s * 1000:.0f}' for s in firsts)} ms")  # fmt: skip
    (route,) = effective(lab, "blue")
    assert route["installed"] is True


def test_a_route_refresh_keeps_the_session(lab: Lab) -> None:
    """``birdc reload in`` makes BIRD ask for a route refresh: without a MED on the neighbor,
    os-ken 4.2.2 resets the session (the speaker sets one). The refresh is answered (BIRD
    receives blue's subnet again) and the session stays up, since the same time."""
    dc1 = router(lab, "dc1")
    state, since = protocol(dc1)
    assert state == "Established"

    def received() -> int:
        out = onprem.birdc(dc1, "show", "protocols", "all", "vpc")
        m = re.search(r"Import updates:\s+(\d+)", out)
        assert m is not None, out
        return int(m.group(1))

    before = received()
    assert "reloading" in onprem.birdc(dc1, "reload", "in", "vpc")
    wait_for(lambda: received() > before, "BIRD receives the refreshed routes")
    assert protocol(dc1) == (state, since)
    assert reaches(lab, "b1")


def test_removing_the_endpoints_bgp_session_drops_its_routes(lab: Lab) -> None:
    """DELETE .../endpoints/v1/bgp: the speaker deletes the neighbor (BIRD's session goes
    down) and blue's dynamic route goes, though the speaker's own table keeps the peer's
    paths (os-ken 4.2.2: the learned routes are never read from it); PUT brings both back."""
    dc1 = router(lab, "dc1")
    c = client(lab)
    body = c.get("/v1/vpcs/blue/endpoints/v1")["bgp"]
    c.delete("/v1/vpcs/blue/endpoints/v1/bgp")
    wait_for(lambda: not effective(lab, "blue"), "blue's dynamic route goes")
    wait_for(lambda: not established(dc1), "dc1's session goes down")
    wait_for(lambda: not reaches(lab, "b1"), "b1's traffic to d1 stops")
    c.put("/v1/vpcs/blue/endpoints/v1/bgp", body)
    wait_for(lambda: established(dc1), "dc1's session comes back")
    wait_for(lambda: effective(lab, "blue"), "blue learns the prefix again")
    wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1 again")


def test_bad_bgp_bodies_are_refused_naming_the_field(lab: Lab) -> None:
    c = client(lab)
    status, body = c.request(
        "PUT",
        "/v1/vpcs/blue/endpoints/b1/bgp",
        {"peer_asn": 65009, "peer_ip": "169.254.250.9", "local_ip": "169.254.250.10"},
    )
    assert (status, body["field"]) == (400, "bgp"), body  # a vm holds no session
    status, body = c.request(
        "PUT",
        "/v1/vpcs/green/endpoints/v3/bgp",
        {"peer_asn": 65009, "peer_ip": router(lab, "dc1").router_ip, "local_ip": "169.254.250.9"},
    )
    assert (status, body["field"]) == (409, "bgp.peer_ip"), body  # dc1's address is v1's
    status, body = c.request("POST", "/v1/vpcs", {"name": "teal", "asn": 0})
    assert (status, body["field"]) == (400, "asn"), body


def shard_pid(lab: Lab) -> int | None:
    ctl1 = next(c for c in lab.plan.controllers if c.name == "ctl1")
    return read_pidfile(f"{controllers.rundir(lab.plan, ctl1)}/controller.pid")


def test_a_shard_restart_keeps_forwarding_and_relearns(lab: Lab) -> None:
    """kill -9 of ctl1 (its supervisor restarts it): the hosts keep the route meanwhile (fail
    static), the shard comes back with the routes it had learned (kept in its store, stale
    until the router announces them again), so b1's traffic to d1 never stops."""
    dc1 = router(lab, "dc1")
    ctl1 = next(c for c in lab.plan.controllers if c.name == "ctl1")
    wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1")
    _, since = protocol(dc1)
    pid = shard_pid(lab)
    assert pid is not None
    p = probe(lab, "b1")
    wait_for(lambda: reaches(lab, "b1"), "the probe runs")
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: controllers.running(lab.plan, ctl1) and shard_pid(lab) != pid, "restart")
    controllers.wait_healthy(lab.plan, ctl1)
    wait_for(lambda: established(dc1) and protocol(dc1)[1] != since, "dc1's new session")
    wait_for(lambda: effective(lab, "blue"), "blue's dynamic route, after the restart")
    wait_for(lambda: reaches(lab, "b1"), "b1 reaches d1 after the restart")
    got = replies(p)
    lost = sorted(set(range(min(got), max(got))) - set(got))
    took = max(got.values()) - t0
    print(f"\nshard restart: {len(got)} replies over {took:.1f}s, lost icmp_seq {lost}")
    assert lost == [], f"b1's traffic to d1 stopped during the shard's restart: lost {lost}"


def test_down_ends_bird_and_removes_every_namespace() -> None:
    """A lab of its own: 'down' ends each BIRD by pid (a supervised process) and deletes the
    routers' and on-prem hosts' namespaces with the rest."""
    other = bring_up(TOPOLOGY, E2E_TOPOLOGIES)
    try:
        birds = [p for p in supervisor.processes(other.plan.state_dir) if p["kind"] == "bird"]
        assert sorted(p["name"] for p in birds if p["running"]) == ["dc1", "dc2"], birds
        pids = [int(p["pid"]) for p in birds]
    finally:
        lab_cli(other.name, "down")
    assert not [pid for pid in pids if alive(pid)]
    assert teardown.lab_netns(other.name) == []
