"""What the lab's supervisor does with one process: pure, no clock, no files, no signals.

The supervisor (meshpeer.lab.supervisor) owns every process the lab starts. For each it knows
what the lab wants (a ``Spec``, written by the lab's start and stop commands) and what it saw
(a ``Seen``); ``decide`` turns the two and the time into one action. A process that dies while
it is wanted is restarted at once; one that keeps dying right after its start is restarted
with a growing delay (capped), so a broken command line cannot spin a core.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

QUICK_EXIT = 1.0  # an exit this soon after its start counts towards the back-off
FIRST_DELAY = 0.25
MAX_DELAY = 5.0
# Copies of br-int for a warm restart of ovs-vswitchd (``copy_due``).
COPY_QUIET = 2.0  # after a burst of syncs, a copy once they paused this long
COPY_MAX_AGE = 10.0  # under syncs that never pause, a copy at least this often
COPY_HOLD = 10.0  # at most this long after its OHC starts, until that OHC's first sync


class Action(Enum):
    NONE = "none"  # running as wanted, stopped as wanted, or waiting out a back-off
    START = "start"  # a first start, or a start after the lab stopped it on purpose (cold)
    RESTART = "restart"  # it died while wanted: start it again (warm: restore its state)


@dataclass(frozen=True)
class Spec:
    """One supervised process, as the lab wants it. ``name`` is the host or controller."""

    name: str
    kind: str  # shard, ohc, ovsdb-server, ovs-vswitchd
    cmd: tuple[str, ...]
    output: str  # the process's stdout and stderr are appended here (its log)
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    wanted: bool = True

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "cmd": list(self.cmd),
            "output": self.output,
            "cwd": self.cwd,
            "env": dict(self.env),
            "wanted": self.wanted,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Spec:
        return Spec(
            name=str(d["name"]),
            kind=str(d["kind"]),
            cmd=tuple(str(a) for a in d["cmd"]),
            output=str(d["output"]),
            cwd=None if d.get("cwd") is None else str(d["cwd"]),
            env=tuple(sorted((str(k), str(v)) for k, v in (d.get("env") or {}).items())),
            wanted=bool(d.get("wanted", True)),
        )


@dataclass(frozen=True)
class Seen:
    """What the supervisor saw of one process."""

    running: bool = False
    started_at: float | None = None  # last start
    exited_at: float | None = None  # last exit
    crashed: bool = False  # the last exit happened while the process was wanted
    quick_exits: int = 0  # consecutive crashes within QUICK_EXIT of their start
    restarts: int = 0  # restarts after a crash, over the lab's life


def started(seen: Seen, now: float, restart: bool) -> Seen:
    return replace(
        seen, running=True, started_at=now, restarts=seen.restarts + (1 if restart else 0)
    )


def exited(seen: Seen, now: float, wanted: bool) -> Seen:
    """The process ended; ``wanted`` is what the lab wanted at that moment (read afresh)."""
    quick = wanted and seen.started_at is not None and now - seen.started_at < QUICK_EXIT
    return replace(
        seen,
        running=False,
        exited_at=now,
        crashed=wanted,
        quick_exits=seen.quick_exits + 1 if quick else 0,
    )


def restart_delay(quick_exits: int) -> float:
    """No delay for a process that ran a while; then 0.25 s, 0.5 s, ... up to MAX_DELAY."""
    if quick_exits <= 1:
        return 0.0
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** (quick_exits - 2)))


def decide(wanted: bool, seen: Seen, now: float) -> Action:
    if seen.running or not wanted:
        return Action.NONE  # stopping is the lab's own command: it ends the process by pid
    if not seen.crashed:
        return Action.START
    assert seen.exited_at is not None
    if now - seen.exited_at < restart_delay(seen.quick_exits):
        return Action.NONE
    return Action.RESTART


def copy_due(
    now: float,
    changed_at: float,
    copied: float | None,
    copied_at: float | None,
    ohc_started_at: float | None = None,
) -> bool:
    """Whether to copy a host's br-int now. ``changed_at``: when its OHC last synced (its
    status file's mtime); ``copied``: the sync the last copy followed, taken at ``copied_at``
    (both None before the first copy).

    A dump of 100k flows costs OVS and ovs-ofctl about a CPU second, too much after every
    sync of a burst: a copy follows a change once the syncs have paused for COPY_QUIET. But
    syncs that never pause (a steady stream of writes) must not starve it: without a copy, a
    kill -9 of ovs-vswitchd restores nothing (a cold restart, about a second of loss); with
    an old one, flows far older than the last sync. So the first change is copied at once and
    later ones at least every COPY_MAX_AGE. A copy older than the last sync is still safe: the
    OHC's reconnect sync after the restart changes what differs.

    ``ohc_started_at``: when the host's OHC (running now) last started. Until its first sync
    (a change after its start), and for COPY_HOLD at most, there is no copy: the OHC reads
    br-int back and compiles, and a copy then (OVS dumping 100k flows to ovs-ofctl, the
    supervisor parsing them, on the same 2 CPUs) made its restart at 50k peer endpoints
    0.5-1.1 s slower (docs/decisions.md). The switch holds what it held before the start
    until that sync, and the copy follows it."""
    if copied == changed_at:
        return False
    # started after the last sync, and that less than COPY_HOLD ago
    if ohc_started_at is not None and changed_at < ohc_started_at > now - COPY_HOLD:
        return False
    if copied_at is None or now - changed_at >= COPY_QUIET:
        return True
    return now - copied_at >= COPY_MAX_AGE
