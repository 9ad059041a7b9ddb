"""The objects of the ``peering`` service: one wire contract for its writer and its readers.

The shard writes them (``meshpeer/controller/mux.py``: ``PeeringObject(...).to_json()``); the OHC
reads them (``ohc/model.py`` for the flow compiler, ``ohc/subscriptions.py`` for what to follow)
with ``PeeringObject.parse``, which validates every field of what is untrusted input on the OHC
side. One object per ACTIVE peering of a VPC, keyed by the peer VPC's name (docs/protocol.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from meshpeer.protocol.gateways import (
    DEFAULT_FORWARDING,
    FORWARDING,
    Forwarding,
    GatewayHop,
    choice,
    parse_gateways,
)
from meshpeer.protocol.messages import GRANT_RE, JsonObject, ProtocolError, check_name
from meshpeer.protocol.objects import parse_int, parse_vni
from policies.routes import DEFAULT_PREFERENCE, MAX_PREFERENCE, MIN_PREFERENCE

MAX_URL = 2048
# What one side of a peering lets in from the peer: everything, or only replies to
# connections its own endpoints opened (docs/policies.md, "One-way peering").
Inbound = Literal["all", "replies"]
INBOUND: tuple[Inbound, ...] = get_args(Inbound)


@dataclass(frozen=True)
class PeeringObject:
    """Which peer a host of VPC ``vpc`` follows, where, with which grant, and what it imports.

    ``import_custom_routes`` and ``preference`` are the local side's settings: the peer's
    service set is shared by every peer under one export policy, so the peer's stream cannot
    say them; the host applies them with ``policies.routes.decide_routes``, the same decision
    the API's effective routes make.
    """

    peering: str  # the local peering's name
    peer_vpc: str
    peer_vni: int
    policy_id: str  # the peer's export policy toward this VPC: the service set to follow
    controller: str  # the peer VPC's shard URL
    grant: str
    expires_at: float
    import_custom_routes: bool = False
    inbound: Inbound = "all"  # the local side's setting: what this VPC's hosts let in
    preference: int = DEFAULT_PREFERENCE  # the local side's: higher wins a route conflict
    # the local side's: how its hosts send to the peer (docs/gateways.md)
    forwarding: Forwarding = DEFAULT_FORWARDING
    # the gateway hosts this shard counts live: where a side with forwarding gateway sends,
    # and from where either side accepts the peer's packets (docs/gateways.md)
    gateways: tuple[GatewayHop, ...] = ()

    def to_json(self) -> JsonObject:
        return {
            "peering": self.peering,
            "peer_vpc": self.peer_vpc,
            "peer_vni": self.peer_vni,
            "policy_id": self.policy_id,
            "controller": self.controller,
            "grant": self.grant,
            "expires_at": self.expires_at,
            "import_custom_routes": self.import_custom_routes,
            "inbound": self.inbound,
            "preference": self.preference,
            "forwarding": self.forwarding,
            "gateways": [g.to_json() for g in self.gateways],
        }

    @staticmethod
    def parse(obj: object) -> PeeringObject:
        """Validate one object from the wire; raises ProtocolError naming the bad field.

        A missing ``import_custom_routes`` (a shard older than the field) is false: import
        nothing rather than what the user did not ask for. A missing ``inbound`` is ``all``,
        a missing ``preference`` is ``DEFAULT_PREFERENCE``, and a missing ``forwarding`` is
        ``direct`` (and missing ``gateways`` none): what every peering was before the field existed."""
        if not isinstance(obj, Mapping):
            raise ProtocolError("peering", f"expected an object, got {type(obj).__name__}")
        return PeeringObject(
            peering=check_name("peering", obj.get("peering")),
            peer_vpc=check_name("peer_vpc", obj.get("peer_vpc")),
            peer_vni=parse_vni(obj.get("peer_vni"), "peer_vni"),
            policy_id=check_name("policy_id", obj.get("policy_id")),
            controller=_url(obj.get("controller")),
            grant=_grant(obj.get("grant")),
            expires_at=_time(obj.get("expires_at")),
            import_custom_routes=_bool(obj, "import_custom_routes"),
            inbound=_inbound(obj.get("inbound", "all")),
            preference=parse_int(
                obj.get("preference", DEFAULT_PREFERENCE),
                "preference",
                MIN_PREFERENCE,
                MAX_PREFERENCE,
            ),
            forwarding=_forwarding(obj.get("forwarding", DEFAULT_FORWARDING)),
            gateways=parse_gateways(obj.get("gateways", [])),
        )


def _url(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith(("http://", "https://"))
        or len(value) > MAX_URL
        or any(c.isspace() for c in value)
    ):
        raise ProtocolError("controller", f"expected an http(s) URL, got {value!r}")
    return value


def _grant(value: object) -> str:
    if not isinstance(value, str) or not GRANT_RE.fullmatch(value):
        raise ProtocolError("grant", "expected a grant token")
    return value


def _time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError("expires_at", f"expected a number of seconds, got {value!r}")
    return float(value)


def _inbound(value: object) -> Inbound:
    found = choice(value, INBOUND)
    if found is None:
        raise ProtocolError("inbound", f"expected one of {', '.join(INBOUND)}, got {value!r}")
    return found


def _forwarding(value: object) -> Forwarding:
    found = choice(value, FORWARDING)
    if found is None:
        raise ProtocolError("forwarding", f"expected one of {', '.join(FORWARDING)}, got {value!r}")
    return found


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(name, f"expected true or false, got {value!r}")
    return value
