"""Connection admission (pure) and the server's bookkeeping of open and idle connections."""

from __future__ import annotations

import pytest

from meshpeer.rest import admission
from meshpeer.rest.admission import Limits, Load, Verdict
from meshpeer.rest.server import ConnectionTable, _Conn, framing_problem


@pytest.mark.parametrize(
    ("load", "verdict"),
    [
        (Load(total=0, idle=0, client=0, client_idle=0), Verdict.ADMIT),
        (Load(total=9, idle=9, client=2, client_idle=2), Verdict.ADMIT),
        # The client is at its limit: its own idle connection makes room, else 503.
        (Load(total=5, idle=5, client=3, client_idle=1), Verdict.EVICT_CLIENT_IDLE),
        (Load(total=5, idle=2, client=3, client_idle=0), Verdict.SHED_CLIENT),
        # The server is full: anyone's idle connection makes room, else 503.
        (Load(total=10, idle=1, client=0, client_idle=0), Verdict.EVICT_IDLE),
        (Load(total=10, idle=0, client=2, client_idle=0), Verdict.SHED_TOTAL),
        # Both: the client's limit is checked first (its own idle one goes, not another's).
        (Load(total=10, idle=4, client=3, client_idle=1), Verdict.EVICT_CLIENT_IDLE),
        (Load(total=10, idle=4, client=3, client_idle=0), Verdict.SHED_CLIENT),
    ],
)
def test_admit(load: Load, verdict: Verdict) -> None:
    assert admission.admit(load, max_total=10, max_per_client=3) is verdict


def test_the_cap_keeps_fds_in_reserve() -> None:
    assert admission.connection_cap(4096, 20000) == 4096
    assert admission.connection_cap(65536, 20000) == 20000 - admission.FD_RESERVE
    assert admission.connection_cap(4096, 512) == 384  # a small table keeps a quarter
    assert admission.connection_cap(4096, 1) == 1


def test_accept_backoff_doubles_up_to_a_bound() -> None:
    delays = [admission.accept_backoff(n) for n in range(0, 12)]
    assert delays[0] == 0.0 and delays[1] == 0.01 and delays[2] == 0.02
    assert delays == sorted(delays) and max(delays) == 1.0
    assert admission.accept_backoff(10**6) == 1.0


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Limits(max_connections_per_client=0)
    with pytest.raises(ValueError, match="> 0"):
        Limits(idle_timeout=0)


def test_the_table_counts_per_client_and_orders_idle_connections() -> None:
    table = ConnectionTable()
    a1, a2, b1 = _Conn("a", None), _Conn("a", None), _Conn("b", None)
    for conn in (a1, a2, b1):
        table.add(conn)  # new connections are idle
    assert table.load("a") == Load(total=3, idle=3, client=2, client_idle=2)
    assert table.oldest_idle() is a1 and table.oldest_idle("b") is b1
    table.set_busy(a1)
    assert table.load("a") == Load(total=3, idle=2, client=2, client_idle=1)
    assert table.oldest_idle() is a2
    table.set_idle(a1)  # idle again: now the newest idle one
    assert table.oldest_idle("a") is a2
    table.remove(a2)
    table.remove(a2)  # twice (evicted, then its thread ends): counted once
    table.set_idle(a2)  # a closed connection never comes back as idle
    assert table.load("a") == Load(total=2, idle=2, client=1, client_idle=1)
    table.remove(a1)
    table.remove(b1)
    assert table.load("a") == Load(0, 0, 0, 0) and table.oldest_idle() is None


@pytest.mark.parametrize(
    ("length", "encoding", "problem"),
    [
        (None, None, None),
        ("12", None, None),
        (None, "chunked", None),
        ("-1", None, "non-negative integer"),
        ("1e3", None, "non-negative integer"),
        ("\u0661", None, "non-negative integer"),
        ("5", "chunked", "not allowed together"),
    ],
)
def test_framing_problem(length: str | None, encoding: str | None, problem: str | None) -> None:
    found = framing_problem(length, encoding)
    assert found is None if problem is None else problem in (found or "")
