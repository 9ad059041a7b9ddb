"""The host status report an OHC sends its own shards (``PUT /v1/hosts/{name}/status``).

Pure: the app hands in what the agent and the last sync say, and gets the report body, cut to
the protocol's bounds. An operator reads it back with ``GET /v1/hosts/{name}`` (and
``scripts/lab status`` prints one line per host from it), instead of the host's files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshpeer.protocol.messages import MAX_STATUS_SKIPPED, MAX_STATUS_STREAMS, MAX_STATUS_TEXT
from ohc.model import Skipped


def text(value: str) -> str:
    return value if len(value) <= MAX_STATUS_TEXT else value[: MAX_STATUS_TEXT - 3] + "..."


def report(
    streams: Sequence[Mapping[str, Any]],
    skipped: Iterable[Skipped],
    last_error: Mapping[str, Any] | None,
    last_sync: Mapping[str, Any],
) -> dict[str, Any]:
    """``streams``: the agent's ``stream_states()``; ``last_sync``: the app's record of its
    last completed sync (empty before the first)."""
    complete = all(s["state"] != "waiting" for s in streams)
    return {
        "complete": complete,
        "fail_static": not complete,
        "streams": [
            {**s, "detail": None if s["detail"] is None else text(s["detail"])}
            for s in streams[:MAX_STATUS_STREAMS]
        ],
        "skipped": [
            {"what": s.service, "name": s.key, "reason": text(s.reason)}
            for s in list(skipped)[:MAX_STATUS_SKIPPED]
        ],
        "last_error": None
        if last_error is None
        else {"at": last_error["at"], "what": text(last_error["what"])},
        "syncs": int(last_sync.get("n", 0)),
        "flows": int(last_sync.get("flows", 0)),
        "groups": int(last_sync.get("groups", 0)),
        "last_sync_at": last_sync.get("at"),
    }


def one_line(status: Mapping[str, Any] | None, now: float) -> str:
    """A host's health in one line, for ``scripts/lab status``."""
    if status is None:
        return "no status report yet (the OHC reports after its first sync)"
    waiting = [s["stream"] for s in status["streams"] if s["state"] == "waiting"]
    refused = [s["stream"] for s in status["streams"] if s["state"] == "refused"]
    head = f"FAIL-STATIC, waiting for {', '.join(waiting)}" if waiting else "ok"
    parts = [
        head,
        f"{len(status['streams'])} streams",
        f"{status['flows']} flows",
        f"sync {status['syncs']}",
        f"reported {now - status['reported_at']:.0f}s ago",
    ]
    if refused:
        parts.append(f"refused: {', '.join(refused)}")
    if status["skipped"]:
        parts.append(
            "skipped: "
            + "; ".join(f"{s['what']} {s['name']}: {s['reason']}" for s in status["skipped"])
        )
    if status["last_error"] is not None:
        err = status["last_error"]
        parts.append(f"last error {now - err['at']:.0f}s ago: {err['what']}")
    return ", ".join(parts)
