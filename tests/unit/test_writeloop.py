"""The write loop's log and its check (tests/e2e/writeloop.py), on a scripted client: a resent
create answered 409 is counted once only if the endpoint there is the one sent, and the check
catches an acknowledged write missing, one present twice, one at another version, and one
present that the loop was never told about."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.client import Answer
from tests.e2e.writeloop import WriteLog, WriteLoop, check
from tests.support.wait import wait_for


class Scripted:
    """Answers ``request`` from a script: one (status, body, sends) per call, in order."""

    def __init__(self, script: list[tuple[int, Any, int]]) -> None:
        self.script: Iterator[tuple[int, Any, int]] = iter(script)
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        self.calls.append((method, path))
        status, answer, sends = next(self.script)
        return Answer(status, answer, sends, "http://a")


def written(script: list[tuple[int, Any, int]], n: int) -> tuple[WriteLoop, Scripted]:
    client = Scripted(script)
    loop = WriteLoop(client, "wl", "hv1", "10.50.0.0/16")
    for i in range(n):
        name = f"w{i}"
        body = {"name": name, "kind": "vm", "ip": f"10.50.0.{i + 2}", "host": "hv1"}
        loop.log.sent[name] = body
        loop._write(name, body)
    return loop, client


def ep(name: str, ip: str, version: int, host: str = "hv1") -> dict[str, Any]:
    return {"name": name, "kind": "vm", "ip": ip, "host": host, "version": version}


def test_a_resent_create_answered_409_counts_once_only_as_sent() -> None:
    loop, client = written(
        [
            (201, {"version": 7}, 1),  # w0: acknowledged
            (201, {"version": 9}, 4),  # w1: acknowledged after 3 resends
            (409, {"error": "conflict"}, 2),  # w2: its first send applied ...
            (200, ep("w2", "10.50.0.4", 8), 1),  # ... and it is the one sent
            (409, {"error": "conflict"}, 2),  # w3: a 409, but another endpoint is there
            (200, ep("w3", "10.50.0.5", 10, host="hv2"), 1),
            (409, {"error": "conflict"}, 1),  # w4: a 409 to a first send: a real conflict
        ],
        5,
    )
    log = loop.log
    assert log.acked == {"w0": 7, "w1": 9} and log.recognised == ["w2"]
    assert (log.retried, log.resends) == (3, 3 + 1 + 1)
    assert [name for name, _, _ in log.refused] == ["w3", "w4"]
    assert client.calls[3] == ("GET", "/v1/vpcs/wl/endpoints/w2")
    with pytest.raises(AssertionError, match="refused"):
        check(log, [ep("w0", "10.50.0.2", 7), ep("w1", "10.50.0.3", 9), ep("w2", "10.50.0.4", 8)])


def good_log() -> WriteLog:
    log = WriteLog()
    for i, v in enumerate((3, 4, 6)):
        log.sent[f"w{i}"] = {"name": f"w{i}", "kind": "vm", "ip": f"10.50.0.{i + 2}", "host": "hv1"}
        log.acked[f"w{i}"] = v
    log.sent["w3"] = {"name": "w3", "kind": "vm", "ip": "10.50.0.5", "host": "hv1"}
    log.recognised.append("w3")
    log.retried = 1
    return log


def test_the_check_catches_missing_doubled_moved_and_unknown_writes() -> None:
    present = [
        ep("w0", "10.50.0.2", 3),
        ep("w1", "10.50.0.3", 4),
        ep("w2", "10.50.0.4", 6),
        ep("w3", "10.50.0.5", 5),
        ep("b1", "10.1.0.11", 1),  # not the loop's: ignored
    ]
    counts = check(good_log(), present)
    assert (counts["writes_acknowledged"], counts["writes_recognised"]) == (3, 1)
    assert (counts["writes_present"], counts["writes_retried"]) == (4, 1)
    for listed, problem in [
        (present[1:], "absent: ['w0']"),
        ([*present, present[0]], "present twice: ['w0']"),
        ([ep("w0", "10.50.0.2", 5), *present[1:]], "at another version"),
        ([ep("w0", "10.50.0.9", 3), *present[1:]], "not as sent"),
    ]:
        with pytest.raises(AssertionError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            check(good_log(), listed)
    log = good_log()
    log.sent["w4"] = {"name": "w4", "kind": "vm", "ip": "10.50.0.6", "host": "hv1"}
    with pytest.raises(AssertionError, match="never acknowledged"):  # sent, no answer kept
        check(log, [*present, ep("w4", "10.50.0.6", 7)])


class Raising:
    """A client whose request raises, as ``Replicas.request`` does after ``retry_for`` with
    whatever the last send raised."""

    def __init__(self, exc: Exception, after: int = 0) -> None:
        self.exc = exc
        self.after = after  # answers 201 to this many requests first

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        if self.after:
            self.after -= 1
            return Answer(201, {"version": 100 - self.after}, 1, "http://a")
        raise self.exc


@pytest.mark.parametrize(
    "exc",
    [
        http.client.IncompleteRead(b""),
        http.client.BadStatusLine("x"),
        ValueError("not JSON"),
        ConnectionResetError(),
    ],
)
def test_a_write_that_got_no_answer_is_refused_and_the_check_says_so(exc: Exception) -> None:
    """Whatever the client raises, the write is logged refused (its outcome unknown: its
    first send may have applied), the loop goes on, and the check fails (review E3)."""
    loop = WriteLoop(Raising(exc, after=2), "wl", "hv1", "10.50.0.0/16", pace=0.0)
    with loop:
        wait_for(lambda: len(loop.log.refused) >= 3, what="writes refused")
    log = loop.log
    assert set(log.sent) == set(log.acked) | {n for n, _, _ in log.refused}
    with pytest.raises(AssertionError, match="refused"):
        check(log, [ep("w0", "10.50.0.2", 99), ep("w1", "10.50.0.3", 100)])


def test_a_write_sent_with_no_outcome_fails_the_check_and_a_dead_loop_fails_stop() -> None:
    log = good_log()
    log.sent["w4"] = {"name": "w4", "kind": "vm", "ip": "10.50.0.6", "host": "hv1"}
    listed = [ep(f"w{i}", f"10.50.0.{i + 2}", v) for i, v in enumerate((3, 4, 6, 5))]
    with pytest.raises(AssertionError, match=r"sent with no outcome.*\['w4'\]"):
        check(log, listed)  # w4 absent: its first send may or may not have applied

    class Broken:
        def request(self, method: str, path: str, body: Any = None) -> Answer:
            raise KeyboardInterrupt  # not an error the loop takes: its thread ends

    loop = WriteLoop(Broken(), "wl", "hv1", "10.50.0.0/16")
    loop.__enter__()
    wait_for(lambda: not loop._thread.is_alive(), what="the loop's thread to end")
    with pytest.raises(AssertionError, match="the write loop died: KeyboardInterrupt"):
        loop.stop()
