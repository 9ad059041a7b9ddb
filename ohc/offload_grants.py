"""The grants for an on-demand host's busy pairs: the reports to its own shard, and what it
holds (a thin shim over ``ohc.offload.grant_asks``/``granted``; docs/protocol.md "Offload
grants").

The host reports each on-demand side's busy destinations (and an empty set when they went
idle) with ``PUT /v1/hosts/{host}/offload`` at its VPC's shard; the answer is a grant for
those destinations only, with which it follows the peer's destination stream narrowed to
them. A refused or unanswered report leaves the side's pairs on the gateways (the direct
flow needs the peer's object) and is sent again after ``offload.RETRY_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ohc import offload
from ohc.offload import HeldGrant, Side

log = logging.getLogger(__name__)


class OffloadGrants:
    def __init__(
        self,
        host: str,
        report: Callable[[str, Mapping[str, Any]], Any],
        vpc_url: Callable[[str], str | None],
    ) -> None:
        """``report(url, body)``: the PUT at a shard (``Reporter.offload``), its answer;
        ``vpc_url``: a VPC's own shard."""
        self.host = host
        self.report = report
        self.vpc_url = vpc_url
        self.held: dict[Side, HeldGrant] = {}
        self.tried: dict[Side, tuple[frozenset[str], float]] = {}

    def update(self, busy: Mapping[Side, frozenset[str]], now: float) -> bool:
        """Send the reports due at ``now`` (wall clock); True if a held grant changed."""
        changed = False
        for side, dst in offload.grant_asks(busy, self.held, self.tried, now).items():
            url = self.vpc_url(side[0])
            if url is None:
                continue
            self.tried[side] = (dst, now)
            body = {"vpc": side[0], "peer_vpc": side[1], "dst": sorted(dst)}
            t0 = time.monotonic()
            try:
                answer = self.report(url, body)
                token, expires_at = answer["grant"], answer["expires_at"]
            except Exception as exc:  # refused or unanswered: the pairs stay on the gateways
                log.info("ohc %s: offload report %s to %s failed: %s", self.host, body, url, exc)
                continue
            log.info("ohc %s: offload grant %s -> %s for %d destinations in %.1f ms",
                     self.host, *side, len(dst), (time.monotonic() - t0) * 1000)  # fmt: skip
            self.tried.pop(side, None)
            if token is None:
                changed |= self.held.pop(side, None) is not None
            else:
                renew_at = now + (float(expires_at) - now) / 2
                self.held[side] = HeldGrant(frozenset(answer["dst"]), str(token), renew_at)
                changed = True
        return changed

    def following(
        self, busy: Mapping[Side, frozenset[str]]
    ) -> dict[Side, tuple[frozenset[str], str]]:
        """What each side follows now, with which grant (``offload.granted``)."""
        return offload.granted(busy, self.held)
