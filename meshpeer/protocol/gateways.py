"""Scalable gateways (issue 14, the source patent's FIG. 8 / claim 10): the shared vocabulary.

A host has a ``role``: a ``hypervisor`` runs endpoints; a ``gateway`` runs none and forwards
Geneve between hypervisors for the peerings whose sides say ``forwarding: gateway``
(docs/gateways.md). These names are a contract between the topology files, the REST API, the
peering stream (docs/protocol.md) and ``scripts/lab status --json``; this module owns them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

from meshpeer.protocol.messages import JsonObject, ProtocolError, check_name

C = TypeVar("C", bound=str)

HostRole = Literal["hypervisor", "gateway"]
HOST_ROLES: tuple[HostRole, ...] = get_args(HostRole)
DEFAULT_ROLE: HostRole = "hypervisor"

# How one side of a peering sends to the peer: straight to the peer endpoint's host (direct,
# as before), through the gateway pool (gateway), or through it until a pair carries traffic
# (on-demand: through it, and straight to the peer for the pairs that carry traffic;
# docs/gateways.md).
Forwarding = Literal["direct", "gateway", "on-demand"]
FORWARDING: tuple[Forwarding, ...] = get_args(Forwarding)
DEFAULT_FORWARDING: Forwarding = "direct"


def uses_gateways(forwarding: Forwarding) -> bool:
    """Does a side with this setting send through the gateways (on-demand starts there)?"""
    return forwarding != "direct"


def follows_peer_destinations(forwarding: Forwarding) -> bool:
    """Does a hypervisor of a side with this setting follow the peer's destination stream?
    Not through the gateways only; on-demand takes the destinations of its busy pairs."""
    return forwarding != "gateway"


def choice(value: object, choices: tuple[C, ...]) -> C | None:
    """``value`` if it is one of ``choices`` (a string), else None."""
    return next((c for c in choices if isinstance(value, str) and value == c), None)


MAX_GATEWAYS = 64  # gateway hosts one peering object lists (a select group's buckets)
MAX_GATEWAY_WEIGHT = 0xFFFF  # an OpenFlow bucket weight is 16 bits


@dataclass(frozen=True, order=True)
class GatewayHop:
    """A live gateway host as the peering stream lists it: its name, its underlay (tunnel
    endpoint) address and its share of the traffic (a select-group bucket weight)."""

    host: str
    underlay_ip: str  # IPv4 text, as ``ipaddress`` prints it
    weight: int = 1

    def to_json(self) -> JsonObject:
        return {"host": self.host, "underlay_ip": self.underlay_ip, "weight": self.weight}

    @staticmethod
    def parse(obj: object, where: str) -> GatewayHop:
        if not isinstance(obj, Mapping):
            raise ProtocolError(where, f"expected an object, got {type(obj).__name__}")
        host = check_name(f"{where}.host", obj.get("host"))
        raw = obj.get("underlay_ip")
        try:
            ip = ipaddress.IPv4Address(raw) if isinstance(raw, str) else None
        except ValueError:
            ip = None
        if ip is None or ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise ProtocolError(f"{where}.underlay_ip", f"expected an IPv4 address, got {raw!r}")
        weight = obj.get("weight", 1)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int)
            or not 1 <= weight <= MAX_GATEWAY_WEIGHT
        ):
            raise ProtocolError(
                f"{where}.weight", f"expected an integer in 1..{MAX_GATEWAY_WEIGHT}, got {weight!r}"
            )
        return GatewayHop(host, str(ip), weight)


def parse_gateways(value: object) -> tuple[GatewayHop, ...]:
    """The ``gateways`` list of a peering object: at most MAX_GATEWAYS, one per host and
    address, sorted (so equal lists compare equal)."""
    if not isinstance(value, list) or len(value) > MAX_GATEWAYS:
        raise ProtocolError("gateways", f"expected a list of at most {MAX_GATEWAYS} gateways")
    hops = [GatewayHop.parse(v, f"gateways[{i}]") for i, v in enumerate(value)]
    if len({h.host for h in hops}) != len(hops) or len({h.underlay_ip for h in hops}) != len(hops):
        raise ProtocolError("gateways", "a gateway host or address is listed twice")
    return tuple(sorted(hops))


RELAY_KEY = "relay/"  # + VPC: the key of a relay object (no endpoint key has a "/")


def relay_object(vpc: str) -> JsonObject:
    """The object a shard puts in a gateway's endpoint stream for a VPC it relays for: its
    OHC then follows that VPC's peering stream (docs/gateways.md)."""
    return {"vpc": vpc, "relay": True}


def relayed_vpc(obj: Mapping[str, object]) -> str | None:
    """The VPC a relay object names; None for anything else (an endpoint, a bad object)."""
    if obj.get("relay") is not True:
        return None
    try:
        return check_name("vpc", obj.get("vpc"))
    except ProtocolError:
        return None
