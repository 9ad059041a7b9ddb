"""Scalable gateways (issue 14, the source patent's FIG. 8 / claim 10): the shared vocabulary.

A host has a ``role``: a ``hypervisor`` runs endpoints; a ``gateway`` runs none and forwards
Geneve between hypervisors for the peerings whose sides say ``forwarding: gateway``
(docs/gateways.md). These names are a contract between the topology files, the REST API, the
peering stream (docs/protocol.md) and ``scripts/lab status --json``; this module owns them.
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

C = TypeVar("C", bound=str)

HostRole = Literal["hypervisor", "gateway"]
HOST_ROLES: tuple[HostRole, ...] = get_args(HostRole)
DEFAULT_ROLE: HostRole = "hypervisor"

# How one side of a peering sends to the peer: straight to the peer endpoint's host (direct,
# as before), through the gateway pool (gateway), or through it until a pair carries traffic
# (on-demand: accepted, and for now the same as gateway; docs/gateways.md).
Forwarding = Literal["direct", "gateway", "on-demand"]
FORWARDING: tuple[Forwarding, ...] = get_args(Forwarding)
DEFAULT_FORWARDING: Forwarding = "direct"


def uses_gateways(forwarding: Forwarding) -> bool:
    """Does a side with this setting send through the gateways (on-demand starts there)?"""
    return forwarding != "direct"


def choice(value: object, choices: tuple[C, ...]) -> C | None:
    """``value`` if it is one of ``choices`` (a string), else None."""
    return next((c for c in choices if isinstance(value, str) and value == c), None)
