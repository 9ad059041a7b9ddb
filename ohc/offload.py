"""On-demand offload, pure: which (VPC, peer, destination) pairs go direct, which go back.

A side that says ``forwarding: on-demand`` starts as ``gateway``: its host sends the peer's
subnets to the select group over the gateways and keeps no flow per peer endpoint. The switch
counts what the host sends, per pair: the peer's subnet flow resubmits each packet to table
``offload_count``, where a flow learned on the pair's first packet counts it (idle timeout
``[ohc] offload_idle_s``; the direct flow of an offloaded pair resubmits there too, so a pair
is counted on either path). The OHC reads those counters every ``[ohc] offload_interval``
seconds and calls ``decide``:

- a pair whose rate since the last reading is at least ``offload_pps`` packets/s goes direct
  (the engine then compiles its destination's flow, above the subnet flow);
- an offloaded pair goes back to the gateways once its rate stayed under ``idle_pps`` for
  ``idle_s`` seconds, or its counter is gone (the switch idled it out).

No clock, no switch: counters and ``now`` in, the new state out (docs/gateways.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshpeer.protocol.messages import MAX_DST
from ohc.model import Address

Pair = tuple[str, str, str]  # (local VPC, peer VPC, destination address)


@dataclass(frozen=True)
class Thresholds:
    hot_pps: float = 50.0  # a pair at this rate or more goes direct
    idle_pps: float = 1.0  # under this rate a direct pair is quiet
    idle_s: float = 10.0  # quiet (or uncounted) this long: back to the gateways


@dataclass(frozen=True)
class Reading:
    """A pair's counter when last read, and since when it has been quiet (None: it is not)."""

    count: int
    at: float
    quiet_since: float | None = None


@dataclass(frozen=True)
class State:
    offloaded: frozenset[Pair] = frozenset()
    readings: Mapping[Pair, Reading] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    state: State
    moved: frozenset[Pair]  # newly direct
    returned: frozenset[Pair]  # back to the gateways


def decide(state: State, counts: Mapping[Pair, int], now: float, t: Thresholds) -> Decision:
    """The next state from the pair counters read at ``now`` (monotonic seconds)."""
    readings: dict[Pair, Reading] = {}
    hot: set[Pair] = set()
    for pair, count in counts.items():
        prev = state.readings.get(pair)
        if prev is None or count < prev.count or now <= prev.at:
            readings[pair] = Reading(count, now)  # new (or relearned) counter: a baseline
            continue
        rate = (count - prev.count) / (now - prev.at)
        since = prev.at if prev.quiet_since is None else prev.quiet_since
        quiet = None if rate >= t.idle_pps else since
        readings[pair] = Reading(count, now, quiet)
        if rate >= t.hot_pps:
            hot.add(pair)
    returned = {
        pair
        for pair in state.offloaded
        if pair not in readings
        or (
            (quiet := readings[pair].quiet_since) is not None
            and now - quiet >= t.idle_s
            and pair not in hot
        )
    }
    offloaded = (state.offloaded - returned) | hot
    return Decision(
        State(frozenset(offloaded), readings),
        frozenset(hot - state.offloaded),
        frozenset(returned),
    )


def by_side(offloaded: frozenset[Pair]) -> dict[tuple[str, str], frozenset[Address]]:
    """The offloaded addresses per (local VPC, peer VPC), as ``ohc.model.Offload`` takes them."""
    out: dict[tuple[str, str], set[Address]] = {}
    for vpc, peer, ip in offloaded:
        out.setdefault((vpc, peer), set()).add(ipaddress.ip_address(ip))
    return {k: frozenset(v) for k, v in out.items()}


# The grants for the busy pairs. A host follows a peer's destinations of its busy pairs with
# a grant its own shard mints for those addresses only (PUT /v1/hosts/{host}/offload,
# docs/protocol.md "Offload grants"): it asks when a side's busy set changes (an empty set:
# the pairs went idle) and again halfway through the grant's life.

Side = tuple[str, str]  # (local VPC, peer VPC)
RETRY_S = 5.0  # a refused or unanswered report of the same set is sent again after this


@dataclass(frozen=True)
class HeldGrant:
    """A side's grant: the addresses it names, the token, and when to ask for a fresh one
    (wall-clock seconds, halfway to its expiry)."""

    dst: frozenset[str]
    token: str
    renew_at: float


def busy_sides(offloaded: frozenset[Pair]) -> dict[Side, frozenset[str]]:
    """The busy addresses (text) per side, at most MAX_DST of them (the first in address
    order): a grant and a destination filter name no more (review gw2, G1); the other busy
    pairs of that side stay on the gateways."""
    return {
        side: frozenset(str(ip) for ip in sorted(ips)[:MAX_DST])
        for side, ips in by_side(offloaded).items()
    }


def grant_asks(
    busy: Mapping[Side, frozenset[str]],
    held: Mapping[Side, HeldGrant],
    tried: Mapping[Side, tuple[frozenset[str], float]],
    now: float,
) -> dict[Side, frozenset[str]]:
    """The reports to send at ``now`` (wall clock): each side whose busy set differs from its
    grant's, or whose grant is due for renewal; an empty set for a side with a grant and no
    busy pair left. A set tried (and not granted) less than RETRY_S ago waits."""
    out: dict[Side, frozenset[str]] = {}
    for side in sorted(set(busy) | set(held)):
        want = busy.get(side, frozenset())
        have = held.get(side)
        if have is None and not want:
            continue
        if have is not None and have.dst == want and now < have.renew_at:
            continue
        last = tried.get(side)
        if last is not None and last[0] == want and now - last[1] < RETRY_S:
            continue
        out[side] = want
    return out


def granted(
    busy: Mapping[Side, frozenset[str]], held: Mapping[Side, HeldGrant]
) -> dict[Side, tuple[frozenset[str], str]]:
    """What each side follows now: its busy addresses that its grant names, with the grant
    (a pair whose grant has not come yet stays on the gateways; one that went idle leaves the
    filter at once, its old grant covers the rest)."""
    out: dict[Side, tuple[frozenset[str], str]] = {}
    for side, want in busy.items():
        have = held.get(side)
        if have is not None and want & have.dst:
            out[side] = (want & have.dst, have.token)
    return out
