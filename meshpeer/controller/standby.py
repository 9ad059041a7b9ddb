"""What a standby replica answers: every request, 503 naming the leader (docs/store.md).

A standby has no intent loaded (it loads the store when it is elected, so it takes over at the
store's versions); it serves nothing but this, so a client or a load balancer that reaches it
learns where to go. ``GET /healthz`` is 503 too: a health check sends traffic to the leader only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from meshpeer.store.election import Leader

RETRY_AFTER_S = 1


def answer(shard: str, me: str, leader: Leader | None) -> dict[str, Any]:
    where = f"the leader is {leader.replica} at {leader.url}" if leader else "no leader yet"
    return {
        "error": "unavailable",
        "field": None,
        "detail": f"replica {me!r} of shard {shard!r} is a standby; {where}",
        "leader": None if leader is None else {"replica": leader.replica, "url": leader.url},
    }


def app(shard: str, me: str, leader: Callable[[], Leader | None]) -> Callable[..., Iterable[bytes]]:
    """The standby's WSGI app; ``leader()``: the leader as last seen."""

    def respond(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = json.dumps(answer(shard, me, leader())).encode()
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Retry-After", str(RETRY_AFTER_S)),
            ],
        )
        return [body]

    return respond
