"""Streaming transport over loopback: a real eventlet WSGI server and green clients in-process.

No ``eventlet.monkey_patch()``: the server (``eventlet.listen`` + ``eventlet.wsgi``) and the
client (``eventlet.green.socket``) are green by construction, and the test body runs in the main
greenlet, yielding to the hub with ``eventlet.sleep``. Nothing here patches the stdlib, so the
other test modules of the pytest process are unaffected.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import eventlet
import eventlet.wsgi
import pytest
import webob
from eventlet.green import socket as green_socket

from meshpeer.protocol import (
    Decoder,
    Delta,
    ErrorMsg,
    Heartbeat,
    Message,
    ProtocolError,
    ReplicaState,
    ServiceName,
    Snapshot,
    encode,
    parse_subscribe_request,
)
from meshpeer.streaming import StreamClient, StreamHub, StreamId, ndjson_response
from meshpeer.streaming.subscriber import (
    ChunkedDecoder,
    TransportError,
    body_for,
    parse_head,
)
from tests.support.wait import wait_for

DEST = ServiceName.DESTINATION
SID = StreamId(DEST, "red")
PEER_SID = StreamId(DEST, "red", "p-1", "host-1")  # a peer's stream: grants need policy + host
SERVER_LOG = logging.getLogger("test-streaming-wsgi")
FAST = (0.01, 0.05)  # client backoff for tests


def ep(n: int, pad: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"mac": f"02:00:00:00:{n // 256:02x}:{n % 256:02x}", "vni": 7}
    if pad:
        body["pad"] = "x" * pad
    return body


def objs(*ns: int) -> dict[str, dict[str, Any]]:
    return {f"10.0.{n // 256}.{n % 256}": ep(n) for n in ns}


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """``wait_for`` on the hub: the test body is a green thread, so it yields while it waits."""
    wait_for(pred, timeout, step=0.005, what=what, sleep=eventlet.sleep)


# --- in-process server --------------------------------------------------------------------


def json_error(start_response: Any, status: str, code: str, detail: str = "") -> list[bytes]:
    body = json.dumps({"error": code, "field": "", "detail": detail}).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [body]


def make_app(
    hub: StreamHub,
    *,
    heartbeat: float = 5.0,
    token: str | None = None,
    expiry: dict[str, float] | None = None,
) -> Callable[..., Any]:
    """The controller's route, reduced: parse, (check the grant), attach to the hub."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        req = webob.Request(environ)
        if req.path != "/v1/subscribe":
            return json_error(start_response, "404 Not Found", "no-route")
        try:
            sub = parse_subscribe_request(req.GET, req.headers.get("Authorization"))
        except ProtocolError as exc:
            return json_error(start_response, "400 Bad Request", "bad-request", str(exc))
        if token is not None and sub.grant != token:
            return json_error(start_response, "401 Unauthorized", "bad-signature")
        lifetime = (expiry or {}).get(sub.grant or "")
        expires_at = None if lifetime is None else hub.clock() + lifetime
        try:
            writer = hub.wsgi_stream(StreamId.of(sub), sub.since, heartbeat, expires_at=expires_at)
        except KeyError:
            return json_error(start_response, "404 Not Found", "unknown-key")
        return ndjson_response(writer, environ)(environ, start_response)

    return app


class Server:
    def __init__(self, app: Callable[..., Any], port: int = 0, sndbuf: int | None = None) -> None:
        self.sock = eventlet.listen(("127.0.0.1", port))
        if sndbuf is not None:  # inherited by accepted sockets
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pool = eventlet.GreenPool()
        self.thread = eventlet.spawn(
            eventlet.wsgi.server,
            self.sock,
            app,
            custom_pool=self.pool,
            log=SERVER_LOG,
            log_output=False,
        )

    def stop(self) -> None:
        """Hard stop: drop every connection (like a crashed controller)."""
        for gt in list(self.pool.coroutines_running):
            gt.kill()
        self.thread.kill()
        self.sock.close()


class RawServer:
    """A hand-written HTTP server: answers each GET with ``reply`` and then stays silent."""

    def __init__(self, reply: bytes) -> None:
        self.sock = eventlet.listen(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.requests: list[str] = []
        self.conns: list[Any] = []
        self.thread = eventlet.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.conns.append(conn)
            eventlet.spawn(self._handle, conn)

    def _handle(self, conn: Any) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(4096)
        self.requests.append(data.split(b"\r\n")[0].decode())
        conn.sendall(self.reply)

    def stop(self) -> None:
        self.thread.kill()
        for conn in self.conns:
            conn.close()
        self.sock.close()


class Stoppable:
    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop


def chunked_reply(*lines: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)


def serve(cleanup: list[Any], hub: StreamHub, port: int = 0, **kw: Any) -> Server:
    sndbuf = kw.pop("sndbuf", None)
    server = Server(make_app(hub, **kw), port=port, sndbuf=sndbuf)
    cleanup.append(server)
    return server


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.closes: list[str] = []

    def on_change(self, replica: ReplicaState, msg: Message) -> None:
        assert isinstance(msg, Snapshot | Delta)
        self.seen.append((type(msg).__name__, msg.version))

    def on_close(self, reason: str) -> None:
        self.closes.append(reason)


def client(cleanup: list[Any], url: str, rec: Recorder | None = None, **kw: Any) -> StreamClient:
    kw.setdefault("backoff", FAST)
    kw.setdefault("heartbeat_timeout", 30.0)  # servers here beat every 5 s: no false deaths
    if rec is not None:
        kw.setdefault("on_change", rec.on_change)
        kw.setdefault("on_close", rec.on_close)
    c = StreamClient(url, DEST, "red", **kw)
    cleanup.insert(0, c)
    c.start()
    return c


def raw_get(port: int, query: str, count: int, timeout: float = 30.0) -> tuple[Any, list[Message]]:
    """GET /v1/subscribe?query with a bare socket; return the head and the first messages."""
    sock = green_socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(f"GET /v1/subscribe?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        raw_head, _, rest = buf.partition(b"\r\n\r\n")
        head = parse_head(raw_head)
        body, decoder = body_for(head), Decoder()
        msgs: list[Message] = decoder.feed(body.feed(rest))
        while len(msgs) < count:
            data = sock.recv(65536)
            assert data, "server closed early"
            msgs += decoder.feed(body.feed(data))
        return head, msgs
    finally:
        sock.close()


# --- hub alone ------------------------------------------------------------------------------


def test_publish_diffs_full_sets_into_contiguous_deltas() -> None:
    hub = StreamHub(base_version=5 << 32)
    assert hub.publish(SID, objs(1, 2)) is None  # created at the base version
    assert hub.version(SID) == 5 << 32
    assert hub.publish(SID, objs(1, 2)) is None  # nothing changed
    delta = hub.publish(SID, {**objs(1, 3), "10.0.0.1": {"moved": True}})
    assert delta == Delta(
        DEST, "red", (5 << 32) + 1, {"10.0.0.1": {"moved": True}, **objs(3)}, ("10.0.0.2",)
    )
    assert dict(hub.objects(SID)) == {**objs(3), "10.0.0.1": {"moved": True}}
    with pytest.raises(ValueError, match="bad object id"):
        hub.publish(SID, {"has space": {}})
    with pytest.raises(ValueError, match="not a dict"):
        hub.publish(SID, {"a": [1]})  # type: ignore[dict-item]
    assert hub.version(SID) == (5 << 32) + 1


def test_unknown_stream_raises_and_forgotten_stream_restarts_higher() -> None:
    hub = StreamHub()
    with pytest.raises(KeyError):
        hub.wsgi_stream(SID, None, 1.0)
    hub.publish(SID, objs(1))
    hub.publish(SID, objs(2))
    assert hub.close_stream(SID, "peering-gone")
    assert not hub.close_stream(SID, "peering-gone")
    assert SID not in hub and len(hub) == 0
    hub.publish(SID, objs(9))
    assert hub.version(SID) == 2  # above the forgotten incarnation's 1: an old since never matches


def test_writer_resume_and_overflowing_resume_become_snapshot() -> None:
    hub = StreamHub(queue_maxlen=2)
    hub.publish(SID, objs())
    for n in range(1, 6):
        hub.publish(SID, objs(*range(1, n + 1)))
    few = hub.wsgi_stream(SID, 3, 1.0)
    assert Decoder().feed(next(few)) == [
        Delta(DEST, "red", 4, objs(4), ()),
        Delta(DEST, "red", 5, objs(5), ()),
    ]
    many = hub.wsgi_stream(SID, 1, 1.0)  # 4 deltas > maxlen 2
    assert Decoder().feed(next(many)) == [Snapshot(DEST, "red", 5, objs(1, 2, 3, 4, 5))]
    assert hub.stats()[SID].subscribers == 2
    few.close()
    many.close()
    stats = hub.stats()[SID]
    assert (stats.subscribers, stats.messages_sent, stats.snapshots_sent) == (0, 3, 1)
    assert stats.overflows == 1


def test_writer_heartbeats_when_idle_and_unencodable_body_ends_with_error() -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1))
    writer = hub.wsgi_stream(SID, None, 0.02)
    assert Decoder().feed(next(writer)) == [Snapshot(DEST, "red", 0, objs(1))]
    (beat,) = Decoder().feed(next(writer))  # blocks (green) for ~one interval
    assert isinstance(beat, Heartbeat) and beat.version == 0
    hub.publish(SID, {"bad": {"not json": {1, 2}}})
    (err,) = Decoder().feed(next(writer))
    assert isinstance(err, ErrorMsg) and err.code == "internal"
    with pytest.raises(StopIteration):
        next(writer)
    assert hub.stats()[SID].subscribers == 0


def test_heartbeats_are_encoded_once_per_version_and_second() -> None:
    now = [100.2]
    hub = StreamHub(clock=lambda: now[0])
    hub.publish(SID, objs(1))
    # Subscribers that are already current get a heartbeat as their first write.
    a, b = hub.wsgi_stream(SID, 0, 5.0), hub.wsgi_stream(SID, 0, 5.0)
    first, second = next(a), next(b)
    assert first is second  # the same bytes object: encoded once
    assert Decoder().feed(first) == [Heartbeat(0, 100.2)]
    now[0] = 100.9  # same second: still shared (``now`` is informational)
    assert hub.wsgi_stream(SID, 0, 5.0).__next__() is first
    now[0] = 101.1  # next second: a fresh heartbeat
    assert Decoder().feed(next(hub.wsgi_stream(SID, 0, 5.0))) == [Heartbeat(0, 101.1)]
    hub.publish(SID, objs(1, 2))  # new version: the heartbeat carries it
    (beat,) = Decoder().feed(next(hub.wsgi_stream(SID, 1, 5.0)))
    assert beat == Heartbeat(1, 101.1)


# --- HTTP wire ---------------------------------------------------------------------------------


def test_wire_headers_and_since(cleanup: list[Any]) -> None:
    hub = StreamHub(base_version=100)
    hub.publish(SID, objs(1))
    hub.publish(SID, objs(1, 2))
    hub.publish(SID, objs(1, 2, 3))
    # An hour between heartbeats: a current subscriber's heartbeat can only come "at once".
    server = serve(cleanup, hub, heartbeat=3600.0)
    head, msgs = raw_get(server.port, "service=destination&key=red", 1)
    assert head.status == 200
    assert head.headers["content-type"] == "application/x-ndjson"
    assert head.headers["transfer-encoding"] == "chunked"
    assert head.headers["cache-control"] == "no-store"
    assert msgs == [Snapshot(DEST, "red", 102, objs(1, 2, 3))]
    _, msgs = raw_get(server.port, "service=destination&key=red&since=101", 1)
    assert msgs == [Delta(DEST, "red", 102, objs(3), ())]  # only the missing one
    _, msgs = raw_get(server.port, "service=destination&key=red&since=102", 1)
    assert isinstance(msgs[0], Heartbeat) and msgs[0].version == 102  # current: at once


# --- client against the hub -------------------------------------------------------------------


def test_snapshot_then_deltas_in_order_and_counters(cleanup: list[Any]) -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1, 2))
    server = serve(cleanup, hub)
    rec = Recorder()
    c = client(cleanup, server.url, rec)
    wait_until(lambda: c.version == 0)
    assert c.connected
    hub.publish(SID, objs(1, 2, 3))
    hub.publish(SID, objs(2, 3))  # two publishes before the writer runs: queued in order
    eventlet.sleep(0.01)
    hub.publish(SID, {**objs(2, 3), "10.0.0.2": {"moved": 1}})
    wait_until(lambda: c.version == 3)
    assert rec.seen == [("Snapshot", 0), ("Delta", 1), ("Delta", 2), ("Delta", 3)]
    assert dict(c.replica.objects) == dict(hub.objects(SID))
    assert (c.snapshots_received, c.deltas_received, c.reconnects) == (1, 3, 0)
    assert c.objects_received == 2 + 1 + 1 + 1
    stats = hub.stats()[SID]
    assert stats.subscribers == 1 and stats.messages_sent == 4
    assert c.bytes_received == stats.bytes_sent
    assert c.last_error is None and c.last_status == 200


def test_resume_with_since_gets_only_missing_deltas(cleanup: list[Any]) -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub, heartbeat=0.05)
    rec = Recorder()
    c = client(cleanup, server.url, rec)
    wait_until(lambda: c.version == 0)
    c.stop()
    assert not c.running and not c.connected
    hub.publish(SID, objs(1, 2))
    hub.publish(SID, objs(1, 2, 3))
    c.start()
    wait_until(lambda: c.version == 2)
    assert rec.seen == [("Snapshot", 0), ("Delta", 1), ("Delta", 2)]
    assert dict(c.replica.objects) == objs(1, 2, 3)
    wait_until(lambda: hub.stats()[SID].subscribers == 1)  # the stopped one was detached


def test_since_older_than_history_gets_snapshot(cleanup: list[Any]) -> None:
    hub = StreamHub(history=2)
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub)
    rec = Recorder()
    c = client(cleanup, server.url, rec)
    wait_until(lambda: c.version == 0)
    c.stop()
    for n in range(2, 7):
        hub.publish(SID, objs(*range(1, n + 1)))
    c.start()
    wait_until(lambda: c.version == 5)
    assert rec.seen == [("Snapshot", 0), ("Snapshot", 5)]
    assert dict(c.replica.objects) == objs(1, 2, 3, 4, 5, 6)


@pytest.mark.parametrize("new_base", [2 << 32, 0], ids=["higher-base", "lower-than-since"])
def test_server_restart_client_keeps_state_then_converges(
    cleanup: list[Any], new_base: int
) -> None:
    hub = StreamHub(base_version=1 << 32)
    hub.publish(SID, objs(1))
    hub.publish(SID, objs(1, 2))
    server = serve(cleanup, hub)
    rec = Recorder()
    c = client(cleanup, server.url, rec)
    wait_until(lambda: c.version == (1 << 32) + 1)
    server.stop()  # crash: connections dropped, port closed
    wait_until(lambda: not c.connected and c.last_error is not None)
    assert dict(c.replica.objects) == objs(1, 2)  # fail static
    wait_until(lambda: c.reconnects >= 1, what="a refused reconnect")
    hub2 = StreamHub(base_version=new_base)
    hub2.publish(SID, objs(2, 3))  # changed while down
    serve(cleanup, hub2, port=server.port)
    wait_until(lambda: c.version == new_base, what="converged on the new incarnation")
    assert dict(c.replica.objects) == objs(2, 3)
    assert rec.seen[-1] == ("Snapshot", new_base)
    assert c.connected


def test_heartbeats_keep_idle_stream_alive(cleanup: list[Any]) -> None:
    """The client's clock is driven by the test: 10 x 0.6 s pass on it, 6 times its 1 s
    heartbeat timeout, and each heartbeat that arrives meanwhile keeps the stream alive."""
    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub, heartbeat=0.03)
    now = [0.0]
    c = client(cleanup, server.url, heartbeat_timeout=1.0, clock=lambda: now[0])
    wait_until(lambda: c.version == 0)
    for _ in range(10):
        beats = c.heartbeats_received
        now[0] += 0.6
        wait_until(lambda beats=beats: c.heartbeats_received > beats, what="a heartbeat")
    assert c.connected and c.reconnects == 0 and c.last_error is None


def test_silent_server_is_detected_dead_and_state_kept(cleanup: list[Any]) -> None:
    raw = RawServer(chunked_reply(encode(Snapshot(DEST, "red", 7, objs(1)))))
    cleanup.append(raw)
    c = client(cleanup, raw.url, heartbeat_timeout=0.15)
    wait_until(lambda: len(raw.requests) >= 2, what="a reconnect")
    assert "nothing heard" in (c.last_error or "")
    assert c.version == 7 and dict(c.replica.objects) == objs(1)
    assert "since" not in raw.requests[0]
    assert "since=7" in raw.requests[1]


def test_protocol_error_drops_connection_and_resumes(cleanup: list[Any]) -> None:
    snap = encode(Snapshot(DEST, "red", 3, objs(1)))
    raw = RawServer(chunked_reply(snap, b'{"type":"nonsense"}\n'))
    cleanup.append(raw)
    c = client(cleanup, raw.url)
    wait_until(lambda: len(raw.requests) >= 2)
    assert (c.last_error or "").startswith("protocol error")
    assert c.version == 3 and "since=3" in raw.requests[1]


def test_slow_subscriber_overflows_to_snapshot_without_stalling_fast(cleanup: list[Any]) -> None:
    hub = StreamHub(queue_maxlen=16)
    hub.publish(SID, objs())
    server = serve(cleanup, hub, sndbuf=4096)
    fast = client(cleanup, server.url)
    slow = green_socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    slow.connect(("127.0.0.1", server.port))
    slow.settimeout(30.0)
    cleanup.append(Stoppable(slow.close))
    slow.sendall(b"GET /v1/subscribe?service=destination&key=red HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: fast.version == 0 and hub.stats()[SID].subscribers == 2)
    total = 100
    for n in range(1, total + 1):
        hub.publish(SID, {f"10.1.0.{n}": ep(n, pad=2000) for n in range(1, n + 1)})
        eventlet.sleep(0.001)
    wait_until(lambda: fast.version == total, what="the fast subscriber")
    assert (fast.snapshots_received, fast.deltas_received) == (1, total)  # never overflowed
    assert hub.stats()[SID].overflows >= 1  # the slow one did
    # Now the slow one reads: it ends at the current version via a fresh snapshot.
    replica, decoder, body, buf = ReplicaState(DEST, "red"), Decoder(), None, b""
    kinds: list[tuple[str, int]] = []
    deadline = time.monotonic() + 30
    while replica.version != total and time.monotonic() < deadline:
        buf += slow.recv(1 << 20)
        if body is None:
            if b"\r\n\r\n" not in buf:
                continue
            raw_head, _, buf = buf.partition(b"\r\n\r\n")
            body = body_for(parse_head(raw_head))
        for msg in decoder.feed(body.feed(buf)):
            assert isinstance(msg, Snapshot | Delta | Heartbeat)
            kinds.append((type(msg).__name__, getattr(msg, "version", -1)))
            replica.apply(msg)
        buf = b""
    assert replica.version == total and dict(replica.objects) == dict(hub.objects(SID))
    assert kinds[0] == ("Snapshot", 0)
    assert any(kind == "Snapshot" and version > 0 for kind, version in kinds[1:])
    assert len(kinds) < total / 2


def test_close_stream_delivers_reason_and_client_stops(cleanup: list[Any]) -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub)
    rec = Recorder()
    c = client(cleanup, server.url, rec)
    wait_until(lambda: c.version == 0)
    assert hub.close_stream(SID, "peering-gone")
    assert c.wait(2.0)
    assert c.closed_reason == "peering-gone" and rec.closes == ["peering-gone"]
    assert not c.running and not c.connected and c.reconnects == 0
    assert len(hub) == 0 and c.last_error is None


def test_close_shutdown_reconnects_with_since(cleanup: list[Any]) -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub)
    rec = Recorder()
    c = client(cleanup, server.url, rec)
    wait_until(lambda: c.version == 0)
    assert hub.close_where(lambda sid: sid.key == "red", "shutdown", forget=False) == 1
    wait_until(lambda: c.reconnects == 1 and c.connected)
    wait_until(lambda: hub.stats()[SID].subscribers == 1)
    assert rec.closes == ["shutdown"] and c.running
    assert c.snapshots_received == 1  # resumed: since == current -> heartbeat only
    hub.publish(SID, objs(1, 2))
    wait_until(lambda: c.version == 1)


def test_client_disconnect_detaches_subscriber(cleanup: list[Any]) -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub, heartbeat=0.02)
    c = client(cleanup, server.url)
    wait_until(lambda: c.version == 0 and hub.stats()[SID].subscribers == 1)
    c.stop()
    wait_until(lambda: hub.stats()[SID].subscribers == 0, what="detach on a failed write")


def test_http_errors_recorded_and_retried(cleanup: list[Any]) -> None:
    hub = StreamHub()
    server = serve(cleanup, hub, token="good-token")
    statuses: list[int] = []
    c = client(
        cleanup,
        server.url,
        auth="wrong-token",
        policy="p-1",
        host="host-1",
        on_http_error=statuses.append,
    )
    wait_until(lambda: c.last_status == 401)
    assert (c.last_error or "").startswith("HTTP 401: bad-signature")
    assert not c.connected and c.used_auth == "wrong-token"
    c.set_auth("good-token")
    wait_until(lambda: c.last_status == 404)  # the stream does not exist yet
    assert (c.last_error or "").startswith("HTTP 404: unknown-key")
    assert c.used_auth == "good-token"
    hub.publish(PEER_SID, objs(1))
    wait_until(lambda: c.version == 0)
    assert c.connected and c.reconnects >= 2
    assert statuses[0] == 401 and 404 in statuses and set(statuses) == {401, 404}


def test_grant_expiry_closes_and_client_resumes(cleanup: list[Any]) -> None:
    """The hub's clock is driven by the test; the client's backoff is long, so it reconnects
    only when ``set_auth`` cuts the backoff short, with the new grant."""
    now = [1000.0]
    hub = StreamHub(clock=lambda: now[0])
    hub.publish(PEER_SID, objs(1))
    # Beats every 0.05 s of its clock: the writer wakes that often (real time) to look at the
    # clock, so an expiry is seen soon after the test moves the clock past it.
    server = serve(cleanup, hub, heartbeat=0.05, expiry={"short": 10.0})
    rec = Recorder()
    c = client(
        cleanup, server.url, rec, auth="short", policy="p-1", host="host-1",
        backoff=(60.0, 60.0), heartbeat_timeout=60.0,
    )  # fmt: skip
    wait_until(lambda: c.version == 0)
    now[0] += 11.0  # past the short grant's expiry
    wait_until(lambda: rec.closes == ["grant-expired"])
    c.set_auth("long")  # never expires
    wait_until(lambda: c.reconnects == 1 and c.connected)
    now[0] += 3600.0
    hub.publish(PEER_SID, objs(1, 2))
    hub.publish(PEER_SID, objs(1, 2, 3))
    wait_until(lambda: c.version == 2, what="two deltas on the long grant's connection")
    assert rec.closes == ["grant-expired"] and c.reconnects == 1 and c.running
    assert c.snapshots_received == 1  # the reconnect resumed with since


def test_a_renewed_grant_keeps_its_subscription_open_past_the_old_expiry() -> None:
    """A host that reports a fresher grant (``StreamHub.renew``, from its applied report) keeps
    its stream: no Close at the old expiry. Only its own subscribers under that grant's VPC
    are renewed, and only to a later expiry; another host's still ends at its own. The hub's
    clock moves 1 s per reading, so a heartbeat is always due and no writer ever sleeps."""
    ticks = itertools.count(1000)
    hub = StreamHub(clock=lambda: float(next(ticks)))
    hub.publish(PEER_SID, objs(1))

    def attach(holder: str) -> Any:
        return hub.wsgi_stream(
            PEER_SID, None, 0.05, expires_at=1010.0, tag="blue", host=holder, holder=holder
        )

    def kinds(writer: Any, n: int) -> list[str]:
        out = []
        for data in itertools.islice(writer, n):
            out += [json.loads(line)["type"] for line in data.splitlines()]
        return out

    mine, theirs = attach("host-1"), attach("host-2")
    assert hub.renew(PEER_SID, "host-1", "green", 5000.0) == 0  # another VPC's grant
    assert hub.renew(PEER_SID, "host-1", "blue", 1005.0) == 0  # not later than it had
    assert hub.renew(PEER_SID, "host-1", "blue", 2000.0) == 1
    got = kinds(theirs, 50)
    assert got[0] == "snapshot" and got[-1] == "close" and len(got) < 50  # ended at 1010
    got = kinds(mine, 50)  # the clock goes well past 1010 meanwhile
    assert got[0] == "snapshot" and set(got[1:]) == {"heartbeat"} and len(got) == 50


# --- sans-I/O HTTP pieces ---------------------------------------------------------------------


def test_chunked_decoder_any_split_extensions_trailers() -> None:
    wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n"
    dec = ChunkedDecoder()
    out = b"".join(dec.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"hello 0123456789" and dec.done
    for bad in (b"zz\r\n", b"5\r\nhelloXX", b"1" * 5000):
        with pytest.raises(TransportError):
            ChunkedDecoder().feed(bad)


def test_parse_head_and_body_framing() -> None:
    head = parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2")
    assert (head.status, head.reason, head.headers["x-a"]) == (404, "Not Found", "1, 2")
    body = body_for(head)
    assert body.feed(b"abcdef") == b"abc" and body.done
    for bad in (b"HTTP/2 200", b"HTTP/1.1 200 OK\r\nno colon"):
        with pytest.raises(TransportError):
            parse_head(bad)
    with pytest.raises(TransportError):
        body_for(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip"))


def test_client_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        StreamClient("ftp://x", DEST, "red")
    with pytest.raises(ValueError):
        StreamClient("http://x", DEST, "red", auth="bad token")
    with pytest.raises(ValueError):
        StreamClient("http://x", DEST, "-bad")
    with pytest.raises(ValueError, match="needs a host"):
        StreamClient("http://x", DEST, "red", policy="p-1", auth="token")
    StreamClient("http://x", DEST, "red", auth="shard-token")  # own-shard stream: a token alone


def test_stop_from_on_change_ends_the_thread(cleanup: list[Any]) -> None:
    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub)
    holder: list[StreamClient] = []
    c = client(cleanup, server.url, on_change=lambda replica, msg: holder[0].stop())
    holder.append(c)
    assert c.wait(2.0)
    assert c.version == 0 and not c.running and not c.connected and c.last_error is None


def test_gate_admits_one_connection_until_its_first_message(cleanup: list[Any]) -> None:
    from eventlet.semaphore import Semaphore

    hub = StreamHub()
    hub.publish(SID, objs(1))
    server = serve(cleanup, hub)
    head_only = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    silent = RawServer(head_only)  # answers, then never sends a message
    cleanup.append(silent)
    gate = Semaphore(1)
    now = [0.0]  # the stuck client's clock, driven by the test: it times out when told to
    stuck = client(
        cleanup, silent.url, heartbeat_timeout=0.2, backoff=(60.0, 60.0), gate=gate,
        clock=lambda: now[0],
    )  # fmt: skip
    wait_until(lambda: len(silent.requests) == 1, what="the first connection")
    waiting = client(cleanup, server.url, gate=gate)
    eventlet.sleep(0.05)  # a chance to misbehave; the stuck client cannot time out meanwhile
    assert waiting.version is None and waiting.last_status is None
    assert hub.stats()[SID].subscribers == 0
    now[0] += 0.5
    wait_until(lambda: waiting.version == 0, what="admission after the timeout")
    assert "nothing heard" in (stuck.last_error or "")
    # The admitted client streams without holding the gate (the stuck one waits in its long
    # backoff): the gate is free, and another client gets in.
    assert gate.balance == 1
    other = client(cleanup, server.url, gate=gate)
    wait_until(lambda: other.version == 0, what="a second admission")
    assert gate.balance == 1 and hub.stats()[SID].subscribers == 2
