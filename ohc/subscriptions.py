"""Which streams an OHC follows: a pure function of what it has already received.

The OHC always follows its shards' endpoint meta-service for its host. For every VPC with an
endpoint on this host it follows that VPC's own services and its peering service; for every
ACTIVE peer listed there it follows the peer VPC's destination, forwarding and load-balancer
services directly at the peer's shard, under the peer's export policy, with the grant its own
shard minted. Nothing else: a VPC peered only with other VPCs, or a peer of a VPC with no
endpoint here, is never asked for (the patent's limited connectivity information). A side
that sends through the gateways needs no peer destination stream; a gateway host follows, for
each VPC its shard says it relays for, that VPC's peering stream and the listed peers'
destination streams only (docs/gateways.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import follows_peer_destinations, relayed_vpc, uses_gateways
from meshpeer.protocol.messages import MAX_DST, PEER_SERVICES, ProtocolError
from meshpeer.protocol.peering import PeeringObject


@dataclass(frozen=True)
class Sub:
    """One stream to follow. ``auth`` is not part of its identity: a re-minted grant is the
    same subscription with a fresh credential. Nor is ``only`` (a peer destination stream
    narrowed to an on-demand host's busy pairs, docs/protocol.md "Destination filter"): a
    pair that goes direct narrows the same subscription differently."""

    url: str
    service: ServiceName
    key: str
    policy: str | None = None
    host: str | None = None
    only: frozenset[str] | None = field(default=None, compare=False)

    @property
    def is_peer(self) -> bool:
        return self.policy is not None

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.url, self.service, self.key, self.policy or "", self.host or "")


Objects = Mapping[str, Mapping[str, Any]]
# A peering stream's object as the OHC holds it: parsed once, as it arrived (``parsed``), the
# error in place of one that does not parse; or JSON still (tests, tools: parsed where read).
HeldPeering = PeeringObject | ProtocolError | Mapping[str, Any]


def parsed(
    objects: Mapping[str, Any],
    held: Mapping[str, HeldPeering] | None = None,
    changed: Iterable[str] | None = None,
) -> dict[str, HeldPeering]:
    """A peering stream's ``objects`` as the OHC keeps them: each parsed once per change.
    ``held``: what was kept before the keys ``changed`` (by a delta; None: all) came in."""
    if held is None or changed is None:
        return {k: _parse(v) for k, v in objects.items()}
    fresh = set(changed)
    return {k: held[k] if k in held and k not in fresh else _parse(v) for k, v in objects.items()}


def _parse(raw: object) -> PeeringObject | ProtocolError:
    try:
        return PeeringObject.parse(raw)
    except ProtocolError as e:
        return ProtocolError(e.field, e.detail)  # kept without the frames the raised one holds


def peering_of(value: HeldPeering) -> PeeringObject:
    """The peering object a held value stands for; raises ProtocolError if it has none."""
    if isinstance(value, PeeringObject):
        return value
    if isinstance(value, ProtocolError):
        raise ProtocolError(value.field, value.detail)
    return PeeringObject.parse(value)


def same_url(url: str) -> str:
    """A URL as it is (no shard with replicas to fold it into)."""
    return url


def peer_subs(
    peer: PeeringObject, host: str | None, canonical: Callable[[str], str] = same_url
) -> dict[ServiceName, Sub]:
    """The peer's streams a peering object lists, at its shard under the name the host knows
    it by (``canonical``: a peering names where the peer's shard leads now, which moves with
    its leader; the host follows it under the directory's URL and its channel finds the leader,
    docs/decisions.md)."""
    url = canonical(peer.controller)
    return {s: Sub(url, s, peer.peer_vpc, peer.policy_id, host) for s in PEER_SERVICES}


def local_vpcs(endpoint_streams: Iterable[Objects]) -> set[str]:
    """VPCs with at least one endpoint on this host, from every shard's endpoint stream."""
    return {
        str(o["vpc"])
        for objs in endpoint_streams
        for o in objs.values()
        if "vpc" in o and o.get("relay") is not True  # relay objects: ``relayed_vpcs``
    }


def wanted(
    host: str,
    shard_urls: Iterable[str],
    vpc_url: Mapping[str, str],
    endpoint_streams: Iterable[Objects],
    peering_streams: Mapping[str, Mapping[str, HeldPeering]],
    api_token: str,
    canonical: Callable[[str], str] = same_url,
    offloaded: Mapping[tuple[str, str], tuple[Iterable[object], str]] | None = None,
) -> dict[Sub, str]:
    """Every stream to follow, with the credential to present.

    ``vpc_url`` maps a VPC to its owning shard's URL (the shard directory);
    ``peering_streams`` maps a local VPC to the objects of its peering stream so far, as
    ``parsed`` holds them; ``canonical`` a peer shard's URL to the directory's
    (:func:`peer_subs`); ``offloaded`` the addresses each on-demand side (local VPC, peer
    VPC) sends to directly and its own shard's grant for them (``ohc.offload.granted``): its
    peer destination stream narrowed to them with that grant, none while there is none (the
    peering's grant does not let an on-demand host follow the peer's destinations).
    """
    out: dict[Sub, str] = {}
    for url in sorted(set(shard_urls)):
        out[Sub(url, ServiceName.ENDPOINT, host)] = api_token
    endpoint_streams = list(endpoint_streams)
    relayed = relayed_vpcs(endpoint_streams)
    direct: dict[Sub, str] = {}  # peer destination streams some local side sends to directly
    narrow: dict[Sub, tuple[set[str], str]] = {}  # on-demand sides': busy addresses, grant
    for vpc in sorted(local_vpcs(endpoint_streams) | relayed):
        own = vpc_url.get(vpc)
        if own is None:
            continue
        out[Sub(own, ServiceName.PEERING, vpc, None, host)] = api_token
        if vpc not in relayed:
            for service in PEER_SERVICES:
                # The host names who follows the stream, so the shard can tell when it is applied.
                out[Sub(own, service, vpc, None, host)] = api_token
        for held in (peering_streams.get(vpc) or {}).values():
            try:
                peer = peering_of(held)
            except ProtocolError:
                continue  # malformed entry from the wire: skipped (and reported by ohc.model)
            for service, sub in peer_subs(peer, host, canonical).items():
                if service != ServiceName.DESTINATION:
                    if vpc not in relayed:  # a gateway relays by destination only
                        out[sub] = peer.grant
                elif vpc in relayed or not uses_gateways(peer.forwarding):
                    direct[sub] = peer.grant
                elif follows_peer_destinations(peer.forwarding):  # on-demand
                    busy, grant = (offloaded or {}).get((vpc, peer.peer_vpc), ((), ""))
                    if busy and sub not in narrow:  # a grant is for one local VPC's pairs
                        # no more than a filter names (review gw2, G1: a longer one was a
                        # 400 for every subscription of its channel request)
                        narrow[sub] = (set(sorted(map(str, busy))[:MAX_DST]), grant)
    # A side through the gateways needs no peer destination (docs/gateways.md), an on-demand
    # one those of its busy pairs only, unless another local side follows the same service
    # set directly.
    for sub, (addrs, grant) in narrow.items():
        if sub not in direct:
            out[replace(sub, only=frozenset(addrs))] = grant
    out.update(direct)
    return out


def relayed_vpcs(endpoint_streams: Iterable[Objects]) -> set[str]:
    """VPCs a gateway host relays for: the shard lists them in its endpoint stream."""
    found = (relayed_vpc(o) for objs in endpoint_streams for o in objs.values())
    return {vpc for vpc in found if vpc is not None}
