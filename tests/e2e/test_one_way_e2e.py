"""One-way peering on a whole lab (issue 10): blue lets in only replies from red.

On tests/e2e/topologies/oneway.yaml: blue's side of blue <-> red says ``inbound: replies``,
red's says ``all``. Blue's VMs open ICMP, UDP and TCP contacts to red's and get answers; red's
VMs cannot open any toward blue's, over the tunnel (b1 hv1 <-> r1 hv2) or on the same host
(b1 <-> r2 on hv1, b2 <-> r1 on hv2). Flipping blue's side through REST opens and closes the
way back; and an OHC that restarts finds its ct flows installed as it wants them (0 changes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from meshpeer.client import Client
from meshpeer.lab import controllers, ohcs
from meshpeer.lab.cli import load_topology
from meshpeer.lab.expect import PEERED, REPLIES_ONLY, expect
from meshpeer.lab.procs import alive, read_pidfile
from meshpeer.lab.sh import netns_cmd
from tests.e2e.test_ohc_restarts import applied, changes, log_size, logged_syncs, wait_applied
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, check_matrix, running
from tests.support.wait import wait_for

TOPOLOGY = "oneway.yaml"
CONTACT = os.path.join(os.path.dirname(__file__), "contact.py")
PAIRS = [("b1", "r1"), ("b1", "r2"), ("b2", "r1")]  # tunnel, same host hv1, same host hv2
PORT = 7000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """oneway.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def blue(lab: Lab) -> Client:
    return controllers.client_for(lab.plan, "ctl1")


class Server:
    """``contact.py serve`` in a VM: which sources reached it."""

    def __init__(self, lab: Lab, vm: str, proto: str) -> None:
        self.ip = lab.vm(vm).ip
        cmd = [sys.executable, CONTACT, "serve", proto, self.ip, str(PORT)]
        self.proc = subprocess.Popen(
            netns_cmd(lab.vm(vm).netns, cmd), stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "listening", f"{vm}: no {proto} server"

    def stop(self) -> set[str]:
        """Stop the server; the sources it heard from."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return {line.split()[1] for line in out.splitlines() if line.startswith("from ")}


def test_matrix_shows_blue_to_red_and_not_back(lab: Lab) -> None:
    topo = load_topology(os.path.join(E2E_TOPOLOGIES, TOPOLOGY))
    ep = {e.name: e for e in topo.endpoints}
    for b, r in PAIRS:
        assert expect(topo, ep[b], ep[r]).why == PEERED
        assert expect(topo, ep[r], ep[b]).why == REPLIES_ONLY
    check_matrix(lab, topo)  # scripts/lab matrix: pings, each pair once


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_blue_opens_and_red_answers_red_cannot_open(lab: Lab, proto: str) -> None:
    servers = {vm: Server(lab, vm, proto) for vm in ("b1", "b2", "r1", "r2")}
    try:
        for b, r in PAIRS:
            # blue -> red: answered (wait: the first contact may meet a cold ARP/VTEP cache)
            wait_for(lambda b=b, r=r: _contact(lab, b, r, proto), 30, what=f"{b} -> {r} {proto}")
            assert not _contact(lab, r, b, proto), f"{r} opened {proto} to {b}"
    finally:
        heard = {vm: s.stop() for vm, s in servers.items()}
    for b, r in PAIRS:
        assert lab.vm(b).ip in heard[r]
        assert lab.vm(r).ip not in heard[b], f"{b}'s server was reached by {r}"


def _contact(lab: Lab, src: str, dst: str, proto: str) -> bool:
    cmd = [sys.executable, CONTACT, "ask", proto, lab.vm(dst).ip, str(PORT)]
    res = subprocess.run(netns_cmd(lab.vm(src).netns, cmd), capture_output=True, timeout=30)
    return res.returncode == 0


def test_tcp_bytes_cross_conntrack_both_ways_of_blues_connection(lab: Lab) -> None:
    for b, r in PAIRS:
        received, bps = lab.tcp_transfer(b, r, 4 << 20)  # data b -> r, acks r -> b (tracked)
        print(f"\n{b} -> {r}: {received} bytes at {bps / 1e6:.0f} Mbit/s through conntrack")
        assert received == 4 << 20


def test_icmp_both_ways(lab: Lab) -> None:
    for b, r in PAIRS:
        assert wait_for(lambda b=b, r=r: lab.ping(b, r), 30, what=f"{b} pings {r}")
        assert not lab.ping(r, b), f"{r}'s ping reached {b}"


def test_flipping_blues_side_opens_and_closes_the_way_back(lab: Lab) -> None:
    path = "/v1/vpcs/blue/peerings/blue-red"
    got = blue(lab).put(f"{path}?wait=programmed", {"inbound": "all"})
    assert got["inbound"] == "all" and got["programmed"] is True, got
    for b, r in PAIRS:
        wait_for(lambda b=b, r=r: lab.ping(r, b), 30, what=f"{r} reaches {b} after inbound=all")
    got = blue(lab).put(f"{path}?wait=programmed", {"inbound": "replies"})
    assert got["inbound"] == "replies" and got["programmed"] is True, got
    for b, r in PAIRS:
        wait_for(lambda b=b, r=r: not lab.ping(r, b), 30, what=f"{r} cut off from {b}")
        assert lab.ping(b, r)


def test_a_restarted_ohc_finds_its_ct_flows_as_it_wants_them(lab: Lab) -> None:
    """The syncer compares flows read back from OVS with desired ones: the ct actions and the
    ct_state/ct_zone matches must read back equal, or every sync would rewrite them."""
    hv1 = lab.host("hv1")
    offset = log_size(hv1)
    old = read_pidfile(f"{hv1.rundir}/ohc.pid")
    assert old is not None and alive(old)
    held = applied(hv1)
    ohcs.stop(lab.plan, hv1)
    t_dead = time.time()
    ohcs.start(lab.plan, hv1)
    status = wait_applied(hv1, t_dead, held)
    syncs = logged_syncs(hv1, offset)
    print(f"\nrestarted OHC: last sync {status['last_sync']['counts']}, {len(syncs)} with changes")
    assert changes(syncs) == 0, syncs
    assert lab.ping("b1", "r1") and not lab.ping("r1", "b1")
