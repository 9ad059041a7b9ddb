"""The stream client an OHC (or a simulated host) uses for one subscription."""

from __future__ import annotations

from typing import Any

from meshpeer.streaming.subscriber import Gate, StreamClient
from ohc.subscriptions import Sub


def stream_client(
    sub: Sub,
    auth: str,
    on_change: Any,
    on_close: Any,
    on_http_error: Any = None,
    heartbeat_timeout: float = 15.0,
    gate: Gate | None = None,
    credential: str | None = None,
    ca_file: str | None = None,
) -> StreamClient:
    """``gate``: shared by the clients of a process that starts many streams at once (the
    scale simulation), to bound its connection attempts in flight. ``credential``: the host's
    own, presented with a peer stream's grant (``auth``) so the grant is checked against it.
    ``ca_file``: verifies the shards' certificates (https:// URLs)."""
    return StreamClient(
        sub.url,
        sub.service,
        sub.key,
        policy=sub.policy,
        host=sub.host,
        auth=auth,
        credential=credential,
        on_change=on_change,
        on_close=on_close,
        on_http_error=on_http_error,
        heartbeat_timeout=heartbeat_timeout,
        gate=gate,
        ca_file=ca_file,
    )
