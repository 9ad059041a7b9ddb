"""The host status report (ohc.status): what an operator reads in GET /v1/hosts/{name}."""

from __future__ import annotations

from typing import Any

from meshpeer.protocol.messages import MAX_STATUS_SKIPPED, MAX_STATUS_STREAMS, MAX_STATUS_TEXT
from ohc import status
from ohc.model import Skipped


def stream(name: str, state: str, detail: str | None = None) -> dict[str, Any]:
    version = 7 if state == "delivered" else None
    return {"stream": name, "shard": "http://c2", "state": state, "version": version,
            "detail": detail}  # fmt: skip


LAST = {"n": 4, "flows": 50, "groups": 1, "at": 100.0}


def test_a_stream_not_delivered_yet_is_fail_static_a_refused_one_is_not() -> None:
    ok = status.report(
        [stream("a", "delivered"), stream("b", "refused", "HTTP 403")], (), None, LAST
    )
    assert (ok["complete"], ok["fail_static"]) == (True, False)
    waiting = status.report([stream("a", "delivered"), stream("b", "waiting")], (), None, LAST)
    assert (waiting["complete"], waiting["fail_static"]) == (False, True)
    assert (waiting["syncs"], waiting["flows"], waiting["last_sync_at"]) == (4, 50, 100.0)
    first = status.report([], (), None, {})
    assert (first["syncs"], first["last_sync_at"], first["complete"]) == (0, None, True)


def test_the_report_keeps_to_the_protocols_bounds() -> None:
    streams = [stream(f"s{i}", "refused", "x" * 5000) for i in range(MAX_STATUS_STREAMS + 5)]
    skipped = [Skipped("port", f"p{i}", "y" * 5000) for i in range(MAX_STATUS_SKIPPED + 5)]
    err = {"at": 5.0, "what": "z" * 5000}
    r = status.report(streams, skipped, err, LAST)
    assert len(r["streams"]) == MAX_STATUS_STREAMS and len(r["skipped"]) == MAX_STATUS_SKIPPED
    texts = [r["last_error"]["what"], r["streams"][0]["detail"], r["skipped"][0]["reason"]]
    assert all(len(t) == MAX_STATUS_TEXT and t.endswith("...") for t in texts)
    assert r["skipped"][0] == {"what": "port", "name": "p0", "reason": texts[2]}


def test_one_line_says_what_is_wrong_first() -> None:
    assert "no status report yet" in status.one_line(None, 0.0)
    r = status.report(
        [stream("destination/red/p-1/", "waiting"), stream("peering/blue//hv1", "refused", "403")],
        [Skipped("port", "junk", "no vpc")],
        {"at": 90.0, "what": "sync failed: boom"},
        LAST,
    )
    line = status.one_line({**r, "reported_at": 95.0}, now=100.0)
    assert line.startswith("FAIL-STATIC, waiting for destination/red/p-1/")
    for part in ("reported 5s ago", "refused: peering/blue//hv1", "skipped: port junk: no vpc",
                 "last error 10s ago: sync failed: boom"):  # fmt: skip
        assert part in line, line
    healthy = status.report([stream("a", "delivered")], (), None, LAST)
    assert status.one_line({**healthy, "reported_at": 99.0}, 100.0).startswith("ok, 1 streams")
