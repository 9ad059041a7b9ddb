"""A valid ``peering`` stream object for OHC tests (the wire type validates every field)."""

from __future__ import annotations

from typing import Any

from meshpeer.protocol.peering import PeeringObject


def peering_object(vpc: str, url: str, policy: str, grant: str) -> dict[str, Any]:
    """What a shard publishes for one ACTIVE peering towards ``vpc`` at ``url``."""
    obj = PeeringObject(f"to-{vpc}", vpc, 1000, policy, url, grant, 4e9)
    return obj.to_json()
