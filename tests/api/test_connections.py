"""Connection handling of a real shard (issue 17): timeouts, limits, shedding, fd exhaustion.

Over plain HTTP (``tls=False``): these tests hold hundreds of raw sockets and speak HTTP on
them byte by byte. The same limits over TLS, and the TLS handshake's own deadline, are in
tests/unit/test_rest_tls.py.

The shards here run with short timeouts and small limits (``[controller]`` options) so that each
test takes seconds. Tests wait for what they expect (a close, an answer) with generous
deadlines; no test asserts how long anything took.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.ctlkit import DEFAULT_LAYOUT, Cluster, Ctl, Stream, stream
from tests.support.wait import wait_for

ONE_SHARD = {"ctl1": DEFAULT_LAYOUT["ctl1"]}
SHORT = {
    "idle_timeout": 1.0,
    "header_timeout": 1.0,
    "body_timeout": 1.0,
    "max_connections_per_client": 3,
}
DEADLINE = 30.0  # for each close or answer we wait for; far above every timeout above


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctl]:
    cluster = Cluster.create(tmp_path_factory.mktemp("conn"), ONE_SHARD, options=SHORT, tls=False)
    cluster.start_all()
    try:
        cluster["ctl1"].vpc("blue", "10.1.0.0/24")  # for subscriptions to stream
        yield cluster["ctl1"]
    finally:
        cluster.stop_all()


def connect(ctl: Ctl, source: str = "127.0.0.1", timeout: float = DEADLINE) -> socket.socket:
    return socket.create_connection(("127.0.0.1", ctl.port), timeout, (source, 0))


def read_to_eof(s: socket.socket, deadline: float = DEADLINE) -> bytes:
    """Everything the server sends until it closes (fails if it has not within ``deadline``)."""
    s.settimeout(deadline)
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return out
        except TimeoutError:
            raise AssertionError(f"the server kept it open; got {out[:200]!r}") from None
        if not data:
            return out
        out += data


def parse(answer: bytes) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one HTTP answer with a Content-Length."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    size = int(headers["content-length"])
    return int(lines[0].split()[1]), headers, json.loads(body[:size]) if size else None


def get(
    ctl: Ctl, path: str, source: str = "127.0.0.1", timeout: float = DEADLINE
) -> tuple[int, dict[str, str], Any]:
    with connect(ctl, source, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return parse(read_to_eof(s, timeout))


def assert_error(answer: tuple[int, dict[str, str], Any], status: int, error: str) -> str:
    code, headers, body = answer
    assert code == status, answer
    assert headers["content-type"] == "application/json", headers
    assert set(body) == {"error", "field", "detail"} and body["error"] == error, body
    detail: str = body["detail"]
    return detail


def healthy(ctl: Ctl, source: str = "127.0.0.1") -> bool:
    """One try at GET /healthz (a few seconds at most): answered 200?"""
    try:
        return get(ctl, "/healthz", source, timeout=5.0)[0] == 200
    except (OSError, AssertionError, ValueError, KeyError):
        return False


# --- timeouts -----------------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_idle_timeout(ctl: Ctl) -> None:
    with connect(ctl) as s:  # never sends a byte
        assert read_to_eof(s) == b""
    with connect(ctl) as s:  # kept alive after one answer, then idle
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = parse(read_to_eof(s))
    assert status == 200 and body["status"] == "ok"
    assert headers.get("connection") != "close"  # it was kept alive, then closed as idle
    assert healthy(ctl)


def test_slowloris_headers_are_cut_off_after_the_header_timeout(ctl: Ctl) -> None:
    with connect(ctl) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:  # one more header line every 0.1 s, never the end
            readable, _, _ = select.select([s], [], [], 0.1)
            if readable:
                answer = read_to_eof(s)
                break
            try:
                s.sendall(b"X-Drip: 1\r\n")
            except OSError:  # closed under us: what is left to read is the answer
                answer = read_to_eof(s)
                break
        else:
            raise AssertionError("a slowloris connection was never cut off")
    detail = assert_error(parse(answer), 408, "request_timeout")
    assert "headers" in detail
    assert healthy(ctl)


def test_a_body_that_never_comes_is_a_408_and_the_connection_closes(ctl: Ctl) -> None:
    with connect(ctl) as s:
        s.sendall(
            b"POST /v1/vpcs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {ctl.token}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"name": '
        )
        detail = assert_error(parse(read_to_eof(s)), 408, "request_timeout")
    assert "body" in detail
    assert [v["name"] for v in ctl.get("/v1/vpcs")["vpcs"]] == ["blue"]  # nothing was created


def test_a_subscription_outlives_the_idle_timeout(ctl: Ctl) -> None:
    with stream(ctl, ctl.token, "destination", "blue") as sub:
        assert sub.status == 200
        sub.next()  # the snapshot
        sub.quiet(2 * SHORT["idle_timeout"])  # only heartbeats, and the stream is still open


def subscribe(ctl: Ctl) -> Stream:
    """A subscription, once the shard has room for it: one closed by an earlier test holds
    its slot until the shard's next write on it (a heartbeat) finds it gone."""

    def attempt() -> Stream | None:
        sub = stream(ctl, ctl.token, "destination", "blue")
        if sub.status == 200:
            return sub
        sub.close()
        return None

    return wait_for(attempt, DEADLINE, what="a subscription")


# --- limits -------------------------------------------------------------------------------


def test_a_client_at_its_limit_gets_a_json_503_others_do_not_and_it_recovers(ctl: Ctl) -> None:
    limit = int(SHORT["max_connections_per_client"])
    subs = [subscribe(ctl) for _ in range(limit)]  # busy: streaming, never closed for room
    try:
        answer = get(ctl, "/healthz")
        headers = answer[1]
        detail = assert_error(answer, 503, "unavailable")
        assert "127.0.0.1" in detail and f"limit {limit}" in detail
        assert headers["retry-after"] == "1"
        assert healthy(ctl, source="127.0.0.2")  # another client is served
        subs.pop().close()
        wait_for(lambda: healthy(ctl), DEADLINE, what="the client to be served again")
    finally:
        for s in subs:
            s.close()


def test_idle_connections_make_room_for_a_new_one(ctl: Ctl) -> None:
    limit = int(SHORT["max_connections_per_client"])
    me = "127.0.0.3"  # an address no other test uses: nothing of theirs lingers on it
    held = [connect(ctl, me) for _ in range(limit)]  # idle: each is closed to make room
    try:
        assert get(ctl, "/healthz", me)[0] == 200  # else: a 503, the client is at its limit
        assert read_to_eof(held[0]) == b""  # the oldest one made room
    finally:
        for s in held:
            s.close()


# --- what the HTTP layer refuses, as JSON --------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(20))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/9.9\r\n\r\n", 505, "http_version_not_supported"),
        (b"POST /v1/vpcs HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad_request"),
    ],
    ids=["header-line", "header-block", "header-count", "request-line", "version", "length"],
)
def test_the_http_layer_refuses_with_the_json_error_body(
    ctl: Ctl, request_bytes: bytes, status: int, error: str
) -> None:
    # The shard may still count the cases before against this client's limit (3 here) for a
    # moment after closing them: a 503 then says "retry later", and the case does.
    deadline = time.monotonic() + DEADLINE
    while True:
        with connect(ctl) as s:
            s.sendall(request_bytes)
            answer = parse(read_to_eof(s))
        if answer[0] != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert_error(answer, status, error)


# --- file descriptors ---------------------------------------------------------------------


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def soft_nofile(pid: int) -> int:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


@pytest.fixture
def lone_shard(make_cluster: Callable[..., Cluster]) -> Callable[..., Ctl]:
    def make(**kw: Any) -> Ctl:
        return make_cluster(layout=ONE_SHARD, tls=False, **kw)["ctl1"]

    return make


def test_the_fd_limit_is_raised_and_idle_floods_cannot_exhaust_it(
    lone_shard: Callable[..., Ctl],
) -> None:
    """Issue 17: ~20,400 idle connections filled the fd table and the shard stopped accepting
    for good. Here the same at a small scale: 600 idle connections against 512 fds."""
    ctl = lone_shard(nofile=(256, 512))
    assert ctl.proc is not None
    assert soft_nofile(ctl.proc.pid) == 512  # raised to the hard limit at start
    held = [connect(ctl, f"127.0.1.{1 + i % 200}") for i in range(600)]
    try:
        wait_for(lambda: healthy(ctl), DEADLINE, what="/healthz during an idle flood")
        assert open_fds(ctl.proc.pid) < 512
    finally:
        for s in held:
            s.close()


def test_accept_errors_are_logged_and_survived(lone_shard: Callable[..., Ctl]) -> None:
    """The fd table filled by other means than connections (here: the limit lowered under the
    running process): accept fails with EMFILE, is logged, retried, and serving resumes once
    the idle connections have timed out."""
    ctl = lone_shard(options={"idle_timeout": 1.0})
    assert ctl.proc is not None
    pid = ctl.proc.pid
    room = open_fds(pid) + 20
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (room, soft_nofile(pid)))
    held = [connect(ctl, f"127.0.2.{1 + i % 200}") for i in range(40)]
    try:
        wait_for(
            lambda: "Too many open files" in ctl.log.read_text(encoding="utf-8", errors="replace"),
            DEADLINE,
            what="the EMFILE to be logged",
        )
        wait_for(lambda: healthy(ctl), DEADLINE, what="/healthz after fd exhaustion")
    finally:
        for s in held:
            s.close()
