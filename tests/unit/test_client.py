"""meshpeer.client keeps one connection per thread, and survives the server closing it.

A real HTTP/1.1 server on loopback (stdlib), counting the connections it accepted."""

from __future__ import annotations

import http.server
import json
import os
import resource
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.client import ApiFailure, Client, Replicas, next_replica
from tests.support.jsonserver import JsonServer


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, body))
        data = json.dumps({"n": len(self.server.seen)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if self.server.close_after_each:
            self.close_connection = True  # closes without saying so (no Connection: close)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        return


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.accepted = 0
        self.seen: list[tuple[str, str, bytes]] = []
        self.close_after_each = False
        self.closed = threading.Semaphore(0)  # released once per connection closed

    def get_request(self) -> tuple[socket.socket, Any]:
        self.accepted += 1
        return super().get_request()

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.release()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


def _client(srv: _Server) -> Client:
    return Client(f"http://127.0.0.1:{srv.server_address[1]}", "t0ken", timeout=10)


def test_requests_of_one_thread_share_one_connection(server: _Server) -> None:
    c = _client(server)
    for i in range(5):
        assert c.post("/v1/x", {"i": i}) == {"n": i + 1}
    assert c.get("/v1/x") == {"n": 6}
    assert server.accepted == 1
    assert [json.loads(b) for _, _, b in server.seen[:5]] == [{"i": i} for i in range(5)]
    c.close()


def test_each_thread_has_its_own_connection(server: _Server) -> None:
    c = _client(server)
    done = []

    def work() -> None:
        for _ in range(3):
            c.get("/v1/x")
        done.append(1)
        c.close()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(done) == 3
    assert server.accepted == 3
    assert len(server.seen) == 9


def test_a_connection_the_server_closed_is_replaced_before_a_post(server: _Server) -> None:
    """The server closes each connection after one answer without saying so (as a shard
    closes idle ones): the next request, a POST too, gets through once on a new connection."""
    server.close_after_each = True
    c = _client(server)
    for i in range(4):
        c.post("/v1/x", {"i": i})
        assert server.closed.acquire(timeout=30)  # it is closed before the next request
    assert [json.loads(b)["i"] for _, _, b in server.seen] == [0, 1, 2, 3]
    assert server.accepted == 4
    c.close()


def test_a_kept_connection_is_reused_above_1024_descriptors(server: _Server) -> None:
    """A process holding many files (the scale tools) still reuses its connection: the
    check that it is still open took ``select``, which refuses descriptors from 1024 on, and
    every request then opened a new connection (found by a review)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        c = _client(server)
        for _ in range(5):
            c.get("/v1/x")
        assert server.accepted == 1, f"{server.accepted} connections for 5 GETs"
        c.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- Replicas: a client that follows a shard's leader -------------------------------------


def test_next_replica_follows_the_named_leader_else_moves_on_from_silence() -> None:
    urls = ["http://a", "http://b", "http://c"]
    named = {"error": "unavailable", "leader": {"replica": "c", "url": "http://c"}}
    assert next_replica(urls, "http://a", 503, named) == "http://c"
    unknown = {"error": "unavailable", "leader": {"replica": "x", "url": "http://x"}}
    assert next_replica(urls, "http://a", 503, unknown) == "http://b"  # not ours: the next
    assert next_replica(urls, "http://c", 503, {"leader": None}) == "http://a"  # no leader yet
    assert next_replica(urls, "http://b", None, None) == "http://c"  # no answer
    # the leader's own 503 (etcd without quorum): the same replica again, it still leads
    assert next_replica(urls, "http://b", 503, {"error": "unavailable"}) == "http://b"
    assert next_replica(urls, "http://b", 409, {"error": "conflict"}) == "http://b"


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: refused


def test_replicas_reach_the_leader_through_a_dead_replica_and_a_standby() -> None:
    leader = JsonServer(200, {"ok": True})
    standby = JsonServer(503, {"error": "unavailable", "leader": {"url": leader.url}})
    try:
        client = Replicas([_dead_url(), standby.url, leader.url], None, pause=0.0)
        got = client.request("GET", "/v1/vpcs")
        assert (got.status, got.body, got.url) == (200, {"ok": True}, leader.url)
        assert got.sends == 3  # refused, the standby's 503, the leader
        again = client.request("GET", "/v1/vpcs")  # it stays with the leader
        assert (again.sends, again.url) == (1, leader.url)
    finally:
        leader.stop()
        standby.stop()


class Ticks:
    """A clock that only ``sleep`` moves: the retries are counted in pauses, not in how fast
    the machine is (review E9)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_replicas_give_the_last_503_or_error_after_retry_for() -> None:
    alone = JsonServer(503, {"error": "unavailable", "leader": None})
    ticks = Ticks()
    client = Replicas([alone.url], None, retry_for=0.2, pause=0.05, sleep=ticks.sleep, clock=ticks)
    try:
        got = client.request("GET", "/x")
        assert (got.status, got.sends) == (503, 5)  # at 0, 0.05, 0.1, 0.15 and 0.2 s
    finally:
        client.close()
        alone.stop()
    ticks = Ticks()
    dead = Replicas([_dead_url()], None, retry_for=0.2, pause=0.05, sleep=ticks.sleep, clock=ticks)
    with pytest.raises(OSError):
        dead.request("GET", "/x")
    assert ticks.now == pytest.approx(0.2)


class Scripted:
    """A replica's client answering from a script (an exception: raised)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.asked.append((method, path))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


def test_replicas_post_takes_its_own_create_resent_after_it_applied() -> None:
    """The first send applied and its answer was lost (leader killed); the resend gets 409:
    ``post`` gives the resource there if it is the one sent, and raises only on a real
    conflict (a 409 to a first send, or another resource of that name) (review E8)."""
    vpc = {"name": "wl", "subnets": [{"cidr": "10.50.0.0/16"}]}
    there = {"name": "wl", "vni": 1000, "version": 3}
    r = Replicas(["http://a"], None, pause=0.0)
    r.clients["http://a"] = Scripted(  # type: ignore[assignment]
        [ConnectionResetError(), (409, {"error": "conflict"}), (200, there), (200, there)]
    )
    assert r.post("/v1/vpcs", vpc) == there
    r.clients["http://a"] = Scripted([(409, {"error": "conflict"})])  # type: ignore[assignment]
    with pytest.raises(ApiFailure, match="409"):
        r.post("/v1/vpcs", vpc)  # a 409 to a first send: someone else's
    r.clients["http://a"] = Scripted(  # type: ignore[assignment]
        [ConnectionResetError(), (409, {"error": "conflict"}), (200, {**there, "name": "x"})]
    )
    with pytest.raises(ApiFailure, match="409"):
        r.post("/v1/vpcs", vpc)
