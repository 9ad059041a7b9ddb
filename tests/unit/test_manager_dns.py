"""meshpeer-manager runs without eventlet's green DNS resolver (16 MiB of dnspython and
cryptography in every process): names are then resolved by libc in a worker thread, so a slow
DNS server stalls only the connection that asked, never the hub (found by a review)."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: importing meshpeer.manager monkey-patches the whole process.
PROBE = """
import time
import meshpeer.manager as manager
import eventlet, eventlet.green.socket as green, socket, sys
assert "dns" not in sys.modules, "dnspython was imported"
import threading
hub_thread = threading.get_ident()
seen = []
def slow(*args, **kwargs):  # a resolver that blocks (a DNS server that does not answer)
    seen.append(threading.get_ident())
    start, deadline = len(ticks), time.monotonic() + 60
    while len(ticks) < start + 3 and time.monotonic() < deadline:  # until the hub ran, or never
        time.sleep(0.01)
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", args[1]))]
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic())
        eventlet.sleep(0.01)
assert socket.getaddrinfo is green.getaddrinfo, "create_connection would not use it"
assert socket.getaddrinfo.__qualname__.startswith("resolve_off_hub"), socket.getaddrinfo
green.getaddrinfo = socket.getaddrinfo = manager.resolve_off_hub(slow)
eventlet.spawn(ticker)
eventlet.sleep(0)
t0 = time.monotonic()
answer = socket.getaddrinfo("shard.example", 8080)
t1 = time.monotonic()
assert answer[0][4] == ("192.0.2.1", 8080), answer
assert seen and seen[0] != hub_thread, "resolved on the hub's thread"
assert any(t0 < t < t1 for t in ticks), "the hub stood still while a name was resolved"
print("ok")
"""


def test_names_resolve_in_a_worker_thread_and_the_hub_runs_meanwhile() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
