"""A client that creates endpoints while its shard's leader fails over (issue 15), and the check
of its log against what the shard holds after.

The client (:class:`meshpeer.client.Replicas`) follows the leader and sends a create again,
under the same name, after a 503 or no answer. So a create can be sent twice: if its first
send applied (the answer was lost with the leader), the second gets 409. The loop then reads
the endpoint and counts it *recognised* if it is the one it sent (same fields), never as a
second write; anything else is *refused* (a failure for the check). :func:`check` compares the
log with the shard's list: every write sent has an outcome (acknowledged, recognised or
refused: whatever the client raises is a refusal, and anything else that ends the loop's thread
is raised by :meth:`WriteLoop.stop`); every acknowledged (201) and recognised write present, at
the version acknowledged; no version acknowledged twice; nothing of the loop present that it
was not told about. (A name is listed once by construction: the shard answers a second create
of it 409, which is what "none twice" rests on.)
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field
from typing import Any

from meshpeer.client import UNANSWERED, Requester, create

SAME = ("name", "kind", "ip", "host")  # what a create sets and a read must give back


@dataclass
class WriteLog:
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> body, in order
    acked: dict[str, int] = field(default_factory=dict)  # name -> version of its 201
    recognised: list[str] = field(default_factory=list)  # a resend's 409: its first send applied
    resends: int = 0  # sends after the first (503, no answer)
    retried: int = 0  # writes sent more than once
    refused: list[tuple[str, int, Any]] = field(default_factory=list)  # anything else


class WriteLoop:
    """Creates ``<prefix><n>`` in ``vpc`` on ``host``, addresses from ``network``, one every
    ``pace`` seconds at most, on a thread, until :meth:`stop` (which lets the write in hand
    finish: every name sent is then acknowledged, recognised or refused)."""

    def __init__(
        self,
        client: Requester,
        vpc: str,
        host: str,
        network: str,
        prefix: str = "w",
        pace: float = 0.05,
    ) -> None:
        self.client = client
        self.path = f"/v1/vpcs/{vpc}/endpoints"
        self.host = host
        self.addresses = ipaddress.ip_network(network).hosts()
        next(self.addresses)  # the subnet's gateway
        self.prefix = prefix
        self.pace = pace
        self.log = WriteLog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writeloop", daemon=True)
        self.died: BaseException | None = None  # what ended the thread early (re-raised by stop)

    def __enter__(self) -> WriteLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> WriteLog:
        """Stop, and return the log; raises what ended the loop's thread early, if anything."""
        self._stop.set()
        self._thread.join()
        if self.died is not None:
            raise AssertionError(f"the write loop died: {self.died!r}") from self.died
        return self.log

    @property
    def acknowledged(self) -> int:
        return len(self.log.acked)

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                name = f"{self.prefix}{n}"
                ip = str(next(self.addresses))
                body = {"name": name, "kind": "vm", "ip": ip, "host": self.host}
                self.log.sent[name] = body
                self._write(name, body)
                n += 1
                self._stop.wait(self.pace)
        except BaseException as exc:  # kept for stop(): the check must not pass without it
            self.died = exc
        finally:
            close = getattr(self.client, "close", None)  # this thread's connections
            if close is not None:
                close()

    def _write(self, name: str, body: dict[str, Any]) -> None:
        try:
            got, recognised = create(self.client, self.path, body, SAME)
        except UNANSWERED as exc:  # no replica answered within the client's retry_for
            self.log.refused.append((name, 0, repr(exc)))
            return
        self.log.resends += got.sends - 1
        self.log.retried += got.sends > 1
        if got.status == 201 and isinstance(got.body, dict) and "version" in got.body:
            self.log.acked[name] = int(got.body["version"])
        elif recognised:
            self.log.recognised.append(name)
        else:
            self.log.refused.append((name, got.status, got.body))


def check(log: WriteLog, listed: list[dict[str, Any]]) -> dict[str, int]:
    """Assert the shard's endpoint list agrees with the loop's log; return the counts."""
    ours = [e for e in listed if e["name"] in log.sent]
    names = [e["name"] for e in ours]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"present twice: {twice}"
    present = {e["name"]: e for e in ours}
    expected = set(log.acked) | set(log.recognised)
    missing = sorted(expected - set(present))
    assert not missing, f"acknowledged or recognised but absent: {missing}"
    unknown = sorted(set(present) - expected)
    assert not unknown, f"present but never acknowledged nor recognised: {unknown}"
    moved = {
        n: (v, present[n]["version"]) for n, v in log.acked.items() if present[n]["version"] != v
    }
    assert not moved, f"at another version than acknowledged: {moved}"
    changed = [n for n in present if any(present[n].get(k) != log.sent[n][k] for k in SAME)]
    assert not changed, f"not as sent: {changed}"
    refused = {name for name, _, _ in log.refused}
    unaccounted = sorted(set(log.sent) - set(log.acked) - set(log.recognised) - refused)
    assert not unaccounted, (
        f"sent with no outcome (acknowledged, recognised or refused): {unaccounted}"
    )
    versions = list(log.acked.values())
    assert len(set(versions)) == len(versions), "a version acknowledged twice"
    assert not log.refused, f"refused: {log.refused[:5]}"
    return {
        "writes_sent": len(log.sent),
        "writes_acknowledged": len(log.acked),
        "writes_recognised": len(log.recognised),
        "writes_retried": log.retried,
        "writes_resends": log.resends,
        "writes_present": len(present),
    }
