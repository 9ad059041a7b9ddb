"""On-demand direct subscriptions, pure: the grants for an on-demand host's busy pairs.

A side that says ``forwarding: on-demand`` sends the peer's traffic through the gateways; its
host reports the pairs it finds busy (``PUT /v1/hosts/{host}/offload``) to its own shard,
which answers with a grant scoped to those destinations (``meshpeer.protocol.grants``,
``dst``). The peer's shard lets such a host follow the peer's destination stream narrowed
to what its grant names only (:func:`check_subscription`). Inputs in, a grant or a refusal
out: no clock, no store (docs/gateways.md, docs/protocol.md "Offload grants").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from meshpeer.controller.model import Peering
from meshpeer.controller.peering import Status
from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import Forwarding
from meshpeer.protocol.grants import Grant, GrantError, Rejection, covers

ON_DEMAND: Forwarding = "on-demand"


@dataclass(frozen=True)
class OffloadAsk:
    """A host's report: the destinations of ``peer_vpc`` its ``vpc`` sends to directly now
    (canonical text; empty: none is busy any more)."""

    host: str
    vpc: str
    peer_vpc: str
    dst: frozenset[str]


class Refused(Exception):
    """The report cannot have a grant: an HTTP status, the field it is about and why."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.status, self.field, self.detail = status, field, detail


def offload_grant(
    ask: OffloadAsk,
    *,
    placed: bool,
    revoked: bool,
    side: Peering | None,
    status: Status | None,
    exported: Iterable[str] | None,
    key_id: str,
    expires_at: float,
) -> Grant | None:
    """The grant for ``ask`` (None for an empty set: nothing to follow), or :class:`Refused`.

    ``placed``: the host has an endpoint in ``ask.vpc``; ``side``: ``ask.vpc``'s peering
    toward ``ask.peer_vpc``, ``status`` its state; ``exported``: the subnets the peer exports
    to ``ask.vpc`` (its federation view; None: not heard from yet). Each destination must be
    in one of them: whether an endpoint has that address is the peer shard's to know, and the
    narrowed stream simply holds no object for one that has none.
    """
    if revoked:
        raise Refused(403, "name", f"host {ask.host!r} is revoked: it is minted no grant")
    if not placed:
        raise Refused(403, "vpc", f"host {ask.host!r} has no endpoint in VPC {ask.vpc!r}")
    if side is None:
        raise Refused(404, "peer_vpc", f"VPC {ask.vpc!r} has no peering with {ask.peer_vpc!r}")
    if side.forwarding != ON_DEMAND:
        raise Refused(
            409, "peer_vpc", f"{ask.vpc!r}'s side toward {ask.peer_vpc!r} is {side.forwarding}"
        )
    if status is None or not status.active or status.peer_policy_id is None:
        raise Refused(409, "peer_vpc", f"peering {side.name!r} is not ACTIVE")
    if not ask.dst:
        return None
    if exported is None:
        raise Refused(503, "peer_vpc", f"VPC {ask.peer_vpc!r} not heard from yet")
    nets = [ipaddress.ip_network(s) for s in exported]
    for ip in sorted(ask.dst):
        addr = ipaddress.ip_address(ip)
        if not any(addr.version == n.version and addr in n for n in nets):
            raise Refused(
                403, "dst", f"{ip} is not in a subnet {ask.peer_vpc!r} exports to {ask.vpc!r}"
            )
    return Grant(
        ask.vpc, ask.peer_vpc, status.peer_policy_id, ask.host, expires_at, key_id, ask.dst
    )


def check_subscription(
    grant: Grant,
    service: ServiceName,
    only: frozenset[str] | None,
    forwarding: str | None,
    relay: bool,
) -> None:
    """At the peer's shard: may ``grant`` subscribe to ``service`` narrowed to ``only``?

    A grant scoped to destinations allows a destination filter within that scope only. A host
    of a side that says on-demand (``forwarding``, the subscriber's side as this shard knows
    it) follows the peer's destinations with such a grant only, never with the peering's
    grant for the whole stream; a gateway relaying for it (``relay``) does. Raises
    :class:`GrantError` (WRONG_SCOPE) otherwise.
    """
    if grant.dst is not None and service != ServiceName.DESTINATION:
        raise GrantError(Rejection.WRONG_SCOPE, "grant is for destinations only")
    covers(grant, only)
    if (
        service == ServiceName.DESTINATION
        and grant.dst is None
        and forwarding == ON_DEMAND
        and not relay
    ):
        raise GrantError(
            Rejection.WRONG_SCOPE,
            "an on-demand side follows the peer's destinations with a grant for them"
            " (PUT /v1/hosts/{host}/offload at its own shard)",
        )
