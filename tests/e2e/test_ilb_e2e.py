"""An internal load balancer reached across a peering, on a whole lab (issue 5).

On tests/e2e/topologies/ilb.yaml: ILB lb (VIP 10.2.0.100) in red, owned by ctl2, with backends
r1 (hv2) and r2 (hv3) at weights 1:1; client b1 in blue (ctl1, hv1), peered with red. The ILB is
direct server return: each backend has the VIP on its loopback and answers from it. Each backend
runs a small TCP server on port 8000 that logs every connection and answers with its own name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest

from meshpeer.lab.sh import netns_cmd
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running

TOPOLOGY = "ilb.yaml"
VIP = "10.2.0.100"
PORT = 8000
BACKENDS = ("r1", "r2")
CONNECTIONS = 30

# argv: name, port. Prints "ready", then "client-ip client-port" per accepted connection, and answers
# each with the backend's name.
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, (ip, port) = s.accept()
    print(ip, port, flush=True)
    c.sendall(sys.argv[1].encode())
    c.close()
"""

# argv: vip, port, count, timeout. Prints a JSON list: the answering backend's name per
# connection, or "error: ..." when it failed. Each connection is a new socket: a new source port.
CLIENT = """
import json, socket, sys
vip, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = []
for _ in range(n):
    try:
        with socket.create_connection((vip, port), timeout=timeout) as c:
            out.append(c.recv(64).decode() or "error: empty answer")
    except OSError as exc:
        out.append(f"error: {type(exc).__name__}: {exc}")
print(json.dumps(out))
"""


class Server:
    """The connection-logging TCP server in one backend VM's namespace."""

    def __init__(self, lab: Lab, vm: str) -> None:
        self.name = vm
        self.proc = subprocess.Popen(
            netns_cmd(lab.vm(vm).netns, [sys.executable, "-c", SERVER, vm, str(PORT)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"server on {vm} did not start: {line}{self.proc.stderr}")

    def stop(self) -> list[tuple[str, int]]:
        """Stop; the (client ip, client port) of every connection it accepted."""
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=5)
        return [(ip, int(port)) for ip, port in (line.split() for line in out.splitlines())]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """ilb.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


@pytest.fixture
def servers(lab: Lab) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for vm in BACKENDS:
            started[vm] = Server(lab, vm)
        yield started
    finally:
        for s in started.values():
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()


def connect(lab: Lab, vm: str, count: int, timeout: float) -> list[str]:
    out = lab.sh(
        vm,
        sys.executable,
        "-c",
        CLIENT,
        VIP,
        str(PORT),
        str(count),
        str(timeout),
        timeout=count * timeout + 10,
    )
    answers: list[str] = json.loads(out)
    return answers


def test_ilb_spreads_peered_connections_over_backends_on_two_hosts(
    lab: Lab, servers: dict[str, Server]
) -> None:
    assert {lab.vm(b).host for b in BACKENDS} == {"hv2", "hv3"}
    answers = connect(lab, "b1", CONNECTIONS, 2.0)
    logged = {name: s.stop() for name, s in servers.items()}
    split = Counter(answers)
    print(
        f"\nILB {VIP}:{PORT} from b1 (blue, hv1), {CONNECTIONS} connections, weights 1:1: "
        + ", ".join(f"{k} {v}" for k, v in sorted(split.items()))
    )
    errors = [a for a in answers if a.startswith("error")]
    assert not errors, errors
    assert set(split) == set(BACKENDS), split
    assert all(split[b] > 0 for b in BACKENDS), split
    # What each backend logged matches what the client was told, and no proxy sits in between:
    # every backend saw b1's own address, each connection from a different source port.
    assert {b: len(logged[b]) for b in BACKENDS} == {b: split[b] for b in BACKENDS}, logged
    seen = [c for b in BACKENDS for c in logged[b]]
    assert {ip for ip, _ in seen} == {lab.vm("b1").ip}, seen
    assert len({port for _, port in seen}) == CONNECTIONS, seen


def test_ilb_is_not_reachable_from_a_vpc_not_peered_with_red(
    lab: Lab, servers: dict[str, Server]
) -> None:
    """g1 (green) shares hv1 with b1, so hv1 knows the ILB; green is still not peered with red."""
    control = connect(lab, "b1", 2, 2.0)  # the ILB works right now, from a peered VPC
    answers = connect(lab, "g1", 3, 1.0)
    logged = {name: s.stop() for name, s in servers.items()}
    print(f"\nILB {VIP}:{PORT} from g1 (green, not peered with red): {answers}")
    assert all(a in BACKENDS for a in control), control
    assert all(a.startswith("error") for a in answers), answers
    sources = {ip for conns in logged.values() for ip, _ in conns}
    assert sources == {lab.vm("b1").ip}, logged
