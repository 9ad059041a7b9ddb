"""The host step, pure: the stream objects an OHC holds -> the view its compiler takes.

The app (``ohc/app.py``) calls it with its agent's replicas; the unit tests call it with what
the shards publish (tests/unit/test_ohc_compiler.py ``host_view``), so both build the compiler's
input the same way. Streams are keyed by ``Sub`` (ohc/subscriptions.py): the host's endpoint
stream, each local VPC's peering and own services, and each followed peer's services under its
export policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from meshpeer.protocol import ServiceName
from ohc.model import HostView, Offload, Skipped, StreamObjects, TakenIps, relay_view
from ohc.subscriptions import Sub

# The StreamObjects field each VPC-scoped service fills.
SERVICE_FIELDS = {
    ServiceName.DESTINATION: "destinations",
    ServiceName.FORWARDING: "forwarding",
    ServiceName.LOADBALANCER: "load_balancers",
}


def host_view(
    underlay_ip: str,
    objects: Mapping[Sub, Mapping[str, Any]],
    ofports: Mapping[tuple[str, str], int],
    tunnel_port: int | None,
    taken: TakenIps | None = None,
    bfd_ports: Mapping[str, int] | None = None,
    offload: Offload | None = None,
) -> tuple[HostView, tuple[Skipped, ...]]:
    """The view of a host whose switch numbers its VM ports ``ofports`` (VPC, endpoint name),
    its tunnel ``tunnel_port`` and its BFD ports toward the gateways ``bfd_ports`` (gateway
    underlay IP -> ofport), from the objects of the streams it follows (``taken``: see
    ``HostView.from_service_objects``); ``offload``: the on-demand sides' offloaded
    addresses and idle timeout (ohc/offload.py)."""
    endpoints: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {}
    peerings: dict[str, Any] = {}
    peer: dict[tuple[str, str], dict[str, Any]] = {}
    for sub, objs in objects.items():
        if sub.service == ServiceName.ENDPOINT:
            endpoints.update(objs)
        elif sub.service == ServiceName.PEERING:
            peerings[sub.key] = objs
        elif sub.policy is None:
            own.setdefault(sub.key, {})[SERVICE_FIELDS[sub.service]] = objs
        else:
            peer.setdefault((sub.key, sub.policy), {})[SERVICE_FIELDS[sub.service]] = objs
    view, skipped = HostView.from_service_objects(
        underlay_ip,
        endpoints,
        ofports,
        {k: StreamObjects(**v) for k, v in own.items()},
        peerings,
        {k: StreamObjects(**v) for k, v in peer.items()},
        tunnel_port,
        taken,
    )
    if bfd_ports:
        view = dataclasses.replace(view, bfd_ports=tuple(sorted(bfd_ports.items())))
    if offload is not None and (offload.spill or offload.affinity_s != view.affinity_s):
        spill = tuple(sorted(offload.spill.items()))
        view = dataclasses.replace(view, spill=spill, affinity_s=offload.affinity_s)
    if offload is not None and any(p.on_demand for p in view.peers):
        peers = tuple(
            dataclasses.replace(
                p,
                offloaded=offload.pairs.get((p.vpc, p.peer_vpc), frozenset()),
                offload_idle_s=offload.idle_s,
            )
            if p.on_demand
            else p
            for p in view.peers
        )
        view = dataclasses.replace(view, peers=peers)
    return view, skipped


def gateway_view(
    underlay_ip: str, objects: Mapping[Sub, Mapping[str, Any]], tunnel_port: int | None
) -> tuple[HostView, tuple[Skipped, ...]]:
    """The view of a gateway host (``ohc.model.relay_view``) from the streams it follows: the
    peering stream of each VPC it relays for and those peers' destination streams."""
    peerings = {
        sub.key: objs for sub, objs in objects.items() if sub.service == ServiceName.PEERING
    }
    dests = {
        (sub.key, sub.policy): StreamObjects(destinations=objs)
        for sub, objs in objects.items()
        if sub.service == ServiceName.DESTINATION and sub.policy is not None
    }
    return relay_view(underlay_ip, peerings, dests, tunnel_port)
