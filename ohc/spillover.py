"""Overload shift (FIG. 8), pure: what share of an ILB's new connections goes to its spillover
backends in a peered VPC.

An ILB with ``spillover`` backends is compiled with connection affinity (docs/pipeline.md,
tables 36-39): a connection's first packet picks a backend in the select group and the switch
learns a flow that pins the rest of the connection to it; each backend has a flow in
``lb_deliver`` whose counters are the packets this host sends it. The OHC reads those
counters, of the local backends and of the spillover ones, every ``[ohc] spillover_interval``
seconds and calls ``decide``:

- the demand is the rate of the packets to all of the ILB's backends (local and spillover)
  per local backend: what each local backend would carry with no share. It is measured, not
  inferred from the share: connections pinned to their backend and a share not yet on the
  switch leave it as it is (an estimate ``local / (1 - share)`` ratcheted the share up to its
  cap under a steady load, docs/decisions.md);
- a demand above ``high_pps`` sets the share to what keeps each local backend at ``high_pps``
  (rounded up to ``step`` percent, at most ``max_share``);
- a demand under ``low_pps`` for ``hold_s`` seconds sets the share back to 0; between the two
  thresholds the share stays (hysteresis: it does not flap).

The share moves only NEW connections: the learned flows keep every existing one on its backend
(ohc/compiler.py). No clock, no switch: counters and ``now`` in, the new state out
(docs/gateways.md, "Overload shift").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ohc.offload import Reading  # an ILB's counter when last read; quiet_since: demand low

Key = int  # one ILB in its VPC context: its cookie (compiler.lb_cookie)


@dataclass(frozen=True)
class Thresholds:
    high_pps: float = 200.0  # per local backend: above this, shift a share to the peer
    low_pps: float = 100.0  # per local backend: under this for hold_s, shift back
    hold_s: float = 10.0
    step: int = 10  # the share moves in steps of this many percent
    max_share: int = 80  # percent: the local backends always keep the rest


@dataclass(frozen=True)
class Load:
    """The packet counters of one ILB's local backends, summed, how many local backends, and
    its spillover backends' counters, summed."""

    packets: int
    backends: int
    spilled: int = 0


@dataclass(frozen=True)
class State:
    shares: Mapping[Key, int] = field(default_factory=dict)  # percent, only ILBs above 0
    readings: Mapping[Key, Reading] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    state: State
    changed: frozenset[Key]  # ILBs whose share moved


OPTIONS = (  # the [ohc] options of the overload shift (meshpeer/options.py)
    "spillover_interval",
    "spillover_high_pps",
    "spillover_low_pps",
    "spillover_hold_s",
    "spillover_max_share",
    "spillover_affinity_s",
)


def thresholds(conf: Mapping[str, float]) -> Thresholds:
    """The thresholds from the ``[ohc]`` options (``OPTIONS``), each checked: ValueError
    naming the first out of range (a cap of 100 % leaves the local backends nothing, an
    affinity of 0 s makes every learned flow permanent, an interval of 0 a busy loop)."""

    def need(name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ValueError(f"[ohc] {name}: expected {expected}, got {conf[name]!r}")

    high, low = conf["spillover_high_pps"], conf["spillover_low_pps"]
    need("spillover_interval", conf["spillover_interval"] > 0, "more than 0 seconds")
    need("spillover_high_pps", high > 0, "more than 0")
    need("spillover_low_pps", 0 <= low < high, f"0 or more, under spillover_high_pps ({high})")
    need("spillover_hold_s", conf["spillover_hold_s"] >= 0, "0 seconds or more")
    need("spillover_max_share", 0 <= conf["spillover_max_share"] <= 99, "a percentage in 0..99")
    need("spillover_affinity_s", conf["spillover_affinity_s"] >= 1, "1 second or more")
    return Thresholds(
        high, low, conf["spillover_hold_s"], max_share=int(conf["spillover_max_share"])
    )


def wanted_share(demand: float, t: Thresholds) -> int:
    """The share (percent) that keeps each local backend at ``high_pps`` under ``demand``
    (packets/s per local backend if none went to the peer), in steps, at most ``max_share``."""
    if demand <= t.high_pps:
        return 0
    exact = 100.0 * (1.0 - t.high_pps / demand)
    return min(t.max_share, max(t.step, math.ceil(exact / t.step) * t.step))


def decide(state: State, loads: Mapping[Key, Load], now: float, t: Thresholds) -> Decision:
    """The next state from the ILBs' loads read at ``now`` (monotonic seconds). An ILB not in
    ``loads`` (gone, or no local backend left) loses its share."""
    shares: dict[Key, int] = {}
    readings: dict[Key, Reading] = {}
    for key, load in loads.items():
        share = state.shares.get(key, 0)
        prev = state.readings.get(key)
        total = load.packets + load.spilled
        if prev is None or total < prev.count or now <= prev.at or load.backends < 1:
            readings[key] = Reading(total, now)  # new or reset counters: a baseline
            if share:
                shares[key] = share
            continue
        demand = (total - prev.count) / (now - prev.at) / load.backends
        low_since = None
        if demand > t.high_pps:
            share = wanted_share(demand, t)
        elif demand < t.low_pps:
            low_since = prev.at if prev.quiet_since is None else prev.quiet_since
            if now - low_since >= t.hold_s:
                share = 0
        readings[key] = Reading(total, now, low_since)
        if share:
            shares[key] = share
    changed = frozenset(k for k in shares.keys() | state.shares.keys()
                        if shares.get(k, 0) != state.shares.get(k, 0))  # fmt: skip
    return Decision(State(shares, readings), changed)


def bucket_weights(
    local: tuple[int, ...], spill: tuple[int, ...], share: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Select-group weights that give the spillover backends ``share`` percent of the new
    connections and the local ones the rest, each side split by its own backends' weights.
    Share 0: the local weights unchanged and no spillover bucket (empty)."""
    if share <= 0 or not spill:
        return local, ()
    if not local:
        return (), spill
    lsum, ssum = sum(local), sum(spill)

    def scaled(ws: tuple[int, ...], total: int, part: int) -> tuple[int, ...]:
        return tuple(max(1, round(w * part * 100 / total)) for w in ws)

    return scaled(local, lsum, 100 - share), scaled(spill, ssum, share)
