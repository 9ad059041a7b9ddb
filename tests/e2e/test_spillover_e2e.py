"""The overload shift on a whole lab (issue 14, FIG. 8; docs/gateways.md "Overload shift").

On tests/e2e/topologies/spillover.yaml: ILB lb (VIP 10.2.0.100) in red, local backend r1 (hv2),
spillover backend b1 in blue (hv3); the client rc (red, hv1). Each backend answers its own name
over TCP (port 8000, tests/e2e/test_ilb_e2e.py's server) and over UDP (port 9000). A UDP stream
from rc above ``[ohc] spillover_high_pps`` loads r1: hv1's OHC shifts a share of the new
connections to b1, the stream itself stays on r1 (its connection is pinned); once the stream
stops, new connections return to r1. Conditions are waited for with generous deadlines; no
count or duration that depends on the machine's speed is asserted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshpeer.lab import ovs
from meshpeer.lab.sh import netns_cmd
from tests.e2e.test_ilb_e2e import Server, connect
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.wait import wait_for

TOPOLOGY = "spillover.yaml"
VIP = "10.2.0.100"
UDP_PORT = 9000
LOAD_PPS = 600  # above the default spillover_high_pps (200 per local backend; one here)

# argv: name, port. Answers every datagram with the backend's name. Prints "ready".
UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[1].encode(), peer)
"""

# argv: vip, port, pps. One UDP socket (one connection) sending at about pps until SIGINT;
# then prints JSON {"sent": n, "names": {backend: answers}}.
LOAD = """
import json, socket, sys, time
vip, port, pps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
names, sent, gap = {}, 0, 1.0 / pps
nxt = time.monotonic()
print("ready", flush=True)
try:
    while True:
        s.sendto(b"x", (vip, port))
        sent += 1
        while True:
            try:
                name = s.recv(64).decode()
            except BlockingIOError:
                break
            names[name] = names.get(name, 0) + 1
        nxt += gap
        time.sleep(max(0.0, nxt - time.monotonic()))
except KeyboardInterrupt:
    pass
print(json.dumps({"sent": sent, "names": names}), flush=True)
"""


def spawn(lab: Lab, vm: str, script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        netns_cmd(lab.vm(vm).netns, [sys.executable, "-c", script, *args]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"{vm}: did not start: {line}{proc.communicate()[1]}")
    return proc


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """spillover.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


@pytest.fixture
def servers(lab: Lab) -> Iterator[None]:
    tcp: list[Server] = []
    udp: list[subprocess.Popen[str]] = []
    try:
        for vm in ("r1", "b1"):
            tcp.append(Server(lab, vm))
            udp.append(spawn(lab, vm, UDP_SERVER, vm, str(UDP_PORT)))
        yield
    finally:
        for p in [s.proc for s in tcp] + udp:
            if p.poll() is None:
                p.kill()
                p.wait()


def timed_wait(what: str, cond: Callable[[], bool], timeout: float) -> float:
    """``wait_for`` ``cond``; the seconds it took (printed, never asserted)."""
    t0 = time.monotonic()
    wait_for(cond, timeout, step=0.5, what=what)
    return time.monotonic() - t0


def batch(lab: Lab, n: int) -> Counter[str]:
    answers = connect(lab, "rc", n, 2.0)
    errors = [a for a in answers if a.startswith("error")]
    assert not errors, errors
    return Counter(answers)


def buckets(lab: Lab) -> int:
    """How many buckets hv1's select group for the ILB has (1: r1 only; 2: b1 has a share)."""
    groups = ovs.ofctl(lab.host("hv1"), "dump-groups")
    return max((line.count("bucket=") for line in groups.splitlines()), default=0)


def test_load_shifts_new_connections_to_the_peer_and_back(lab: Lab, servers: None) -> None:
    timed_wait("hv1's group for the ILB", lambda: buckets(lab) == 1, 60)
    before = batch(lab, 10)
    assert set(before) == {"r1"}, before  # no load: every connection to the local backend
    load = spawn(lab, "rc", LOAD, VIP, str(UDP_PORT), str(LOAD_PPS))
    try:
        shifted_s = timed_wait("b1 in hv1's group under load", lambda: buckets(lab) == 2, 60)
        during: Counter[str] = Counter()

        def peer_serves() -> bool:
            during.update(batch(lab, 5))
            return during["b1"] > 0

        timed_wait("a new connection served by b1 (blue)", peer_serves, 60)
    finally:
        load.send_signal(signal.SIGINT)
        out, err = load.communicate(timeout=10)
    stream: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    # the stream is one connection, opened before the shift: it stayed on r1 all along
    assert set(stream["names"]) == {"r1"}, (stream, err)
    back_s = timed_wait("b1 out of hv1's group again", lambda: buckets(lab) == 1, 90)
    after = batch(lab, 10)
    assert set(after) == {"r1"}, after  # new connections back on the local backend
    print(
        f"\nspillover: before {dict(before)}; with {LOAD_PPS} pps on r1, b1 in the group after "
        f"{shifted_s:.1f} s, new connections then {dict(during)}; the stream's answers "
        f"{stream['names']} of {stream['sent']} sent; b1 out of the group {back_s:.1f} s after "
        f"the load stopped, then {dict(after)}"
    )
