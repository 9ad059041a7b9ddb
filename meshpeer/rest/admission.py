"""Connection admission for the REST server (pure): who gets a connection slot, who is shed.

The server (:mod:`meshpeer.rest.server`) counts its open connections, in total and per client
address, and which of them are *idle*: waiting for the first byte of a request (a fresh
connection, or a keep-alive one between requests). For each accepted connection it asks
:func:`admit` and acts on the :class:`Verdict`:

- under both limits: admit;
- the client is at its own limit: close that client's oldest idle connection to make room, or,
  if all of its connections are busy (a request in progress, a streaming subscription), shed the
  new one (503);
- the server is at its total limit: close the oldest idle connection of anyone, or shed (503).

Idle connections are the cheapest to lose (an HTTP client expects a kept-alive connection to be
closed at any time and opens another one); busy ones are never closed to make room, so
subscriptions survive a flood of idle connections. See docs/decisions.md ("Connection limits").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# File descriptors kept out of the connection cap (at most; a quarter of a small fd table): the
# store, federation clients, log files, and connections being shed (each holds one until closed).
FD_RESERVE = 2048


class Verdict(enum.Enum):
    ADMIT = "admit"
    EVICT_CLIENT_IDLE = "evict the client's oldest idle connection, then admit"
    EVICT_IDLE = "evict the oldest idle connection, then admit"
    SHED_CLIENT = "shed: the client is at its limit with no idle connection"
    SHED_TOTAL = "shed: the server is at its limit with no idle connection"


@dataclass(frozen=True)
class Load:
    """The open connections when a new one arrives (not counting it)."""

    total: int
    idle: int
    client: int  # from the new connection's address
    client_idle: int


@dataclass(frozen=True)
class Limits:
    """The REST server's connection limits and timeouts (seconds); options in the
    ``[controller]`` section (meshpeer.options) give them."""

    max_connections: int = 16384
    max_connections_per_client: int = 256
    idle_timeout: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_client < 1:
            raise ValueError("connection limits must be at least 1")
        if min(self.idle_timeout, self.header_timeout, self.body_timeout) <= 0:
            raise ValueError("timeouts must be > 0")


def admit(load: Load, max_total: int, max_per_client: int) -> Verdict:
    """What to do with a new connection, given the load it arrives into."""
    if load.client >= max_per_client:
        return Verdict.EVICT_CLIENT_IDLE if load.client_idle > 0 else Verdict.SHED_CLIENT
    if load.total >= max_total:
        return Verdict.EVICT_IDLE if load.idle > 0 else Verdict.SHED_TOTAL
    return Verdict.ADMIT


def connection_cap(configured: int, fd_limit: int) -> int:
    """The total limit actually enforced: the configured one, lowered so that connections
    never use the process's last ``FD_RESERVE`` file descriptors (a quarter of a small fd
    table), and at least 1."""
    return max(1, min(configured, fd_limit - min(FD_RESERVE, fd_limit // 4)))


def accept_backoff(failures: int, first: float = 0.01, most: float = 1.0) -> float:
    """Seconds to wait after the ``failures``-th accept error in a row (1, 2, ...): doubling
    from ``first`` up to ``most``, so a full fd table is neither a busy loop nor a long stall."""
    if failures < 1:
        return 0.0
    return float(min(most, first * 2 ** min(failures - 1, 30)))
