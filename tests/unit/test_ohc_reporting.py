"""An OHC's reports go to every shard at once (ohc/reporting.py): a shard that does not answer
must not hold back the report to one that does (issue 17's chaos suite: during a partition,
`?wait=programmed` at the reachable shard answered seconds late), and one with replicas goes
to its leader."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from meshpeer.client import ApiFailure
from meshpeer.controller import standby
from ohc.reporting import Reporter
from tests.support.jsonserver import JsonServer

SCRIPT = textwrap.dedent(
    """
    import eventlet
    eventlet.monkey_patch()
    import socket
    from types import SimpleNamespace
    from ohc.reporting import Reporter

    events = []

    def silent(sock):  # accepts, reads, never answers; notes when the client gives up
        conn, _ = sock.accept()
        conn.recv(65536)
        conn.recv(65536)  # returns b"" once the client closed (its timeout)
        events.append("silent: client gave up")

    def answering(sock):
        conn, _ = sock.accept()
        conn.recv(65536)
        events.append("answering: report received")
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                     b"Content-Length: 2\\r\\nConnection: close\\r\\n\\r\\n{}")
        conn.close()

    servers = []
    for handler in (silent, answering):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        eventlet.spawn(handler, s)
        servers.append(f"http://127.0.0.1:{s.getsockname()[1]}")
    # the silent shard first: sent one after the other, it would be tried first
    agent = SimpleNamespace(shard_urls=servers)
    Reporter("hv1", "169.254.0.1", "t", agent).status({"ok": True})
    eventlet.sleep(0.2)
    print(events)
    """
)


def test_a_silent_shard_does_not_hold_back_the_others() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    events = ast.literal_eval(out.strip().splitlines()[-1])  # the list the script printed
    assert events.index("answering: report received") < events.index("silent: client gave up")


def test_the_leaders_refusal_is_reported_not_a_standbys_503() -> None:
    """The leader refuses the registration (409); the shard's other replica is a standby
    (503): the failure raised is the leader's (review s6, E3)."""
    conflict = {"error": "conflict", "field": "role", "detail": "hv1 is a gateway"}
    servers = [JsonServer(409, conflict), JsonServer(503, standby.answer("ctl1", "b", None))]
    try:
        urls = [s.url for s in servers]
        reporter = Reporter("hv1", "169.254.0.1", "t", SimpleNamespace(), replicas=lambda u: urls)
        with pytest.raises(ApiFailure) as failed:
            reporter.register(urls[0])
        assert failed.value.status == 409 and failed.value.body == conflict
    finally:
        for s in servers:
            s.stop()
