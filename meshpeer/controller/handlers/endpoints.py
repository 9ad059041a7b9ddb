"""Endpoints (VMs, load balancers, routers, VPN and interconnect attachments) and their BGP peers."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from meshpeer.controller import intent as ops
from meshpeer.controller import responses as out
from meshpeer.controller.handlers.base import ITEM_P, NAME, VPC_P, WAIT_Q, Handlers
from meshpeer.controller.model import Backend, BgpPeer, Spillover
from meshpeer.controller.shard import Delete
from meshpeer.rest.errors import ApiError, bad_request, not_found
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Arr, Int, Obj, Str

BGP_IN = Obj(
    {
        "peer_asn": Int(
            1,
            65535,
            description="the on-prem router's AS number (eBGP; 23456 and 65535 are reserved: 400)",
        ),
        "peer_ip": Str(format="ip", description="the router's link-local IPv4 address"),
        "local_ip": Str(format="ip", description="the shard's link-local IPv4 address"),
    },
    {},
    name="BgpPeer",
    description="A BGP session to an on-prem router (router, vpn, interconnect endpoints;"
    " docs/routing.md)",
)

BACKEND = Obj({"endpoint": NAME}, {"weight": Int(1, 65535)}, name="Backend")
SPILLOVER = Obj(
    {"vpc": NAME, "endpoint": NAME},
    {"weight": Int(1, 65535)},
    name="Spillover",
    description="an ILB's backend in a VPC its own peers with: it takes a share of the new "
    "connections while the local backends are overloaded (docs/gateways.md, overload shift). "
    "IPv4 VIPs only; the VPC (of this shard) peers back and its side exports the endpoint, an "
    "IPv4 endpoint that is not an ILB: else 400 naming spillover[i].vpc or .endpoint",
)

ENDPOINT_IN = Obj(
    {"name": NAME, "ip": Str(format="ip")},
    {
        "kind": Str(enum=("vm", "ilb", "router", "vpn", "interconnect")),
        "mac": Str(format="mac"),
        "host": NAME,
        "backends": Arr(BACKEND, max_items=256),
        "spillover": Arr(SPILLOVER, max_items=256),
        "bgp": BGP_IN,
    },
    name="EndpointCreate",
)


MAX_BATCH = 5000  # endpoints per batch create (about 0.6 MiB of JSON: under the body limit)
ENDPOINTS_IN = Obj(
    {"endpoints": Arr(ENDPOINT_IN, min_items=1, max_items=MAX_BATCH)},
    name="EndpointBatchCreate",
)


class EndpointHandlers(Handlers):
    def list_endpoints(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        eps = self.shard.intent.endpoints_of(vpc)
        return 200, {
            "endpoints": [
                self._with_version("endpoint", f"{vpc}/{e.name}", e.to_json()) for e in eps
            ]
        }

    def create_endpoint(self, ctx: RequestCtx) -> tuple[int, object]:
        ep = self._intent(_new(ctx.body).check, self.shard.intent, ctx.params["vpc"])
        self.shard.commit([ep])
        key = f"{ep.vpc}/{ep.name}"
        body = self._with_version("endpoint", key, ep.to_json())
        return 201, self._programmed(ctx, "endpoint", key, body)

    def create_endpoints(self, ctx: RequestCtx) -> tuple[int, object]:
        """Many endpoints in one transaction and one version (bulk imports)."""
        vpc = self._vpc(ctx.params["vpc"]).name
        items = []
        for i, raw in enumerate(ctx.body["endpoints"]):
            try:
                items.append(_new(raw))
            except ApiError as exc:
                raise bad_request(f"endpoints[{i}].{exc.field}", exc.detail) from None
        eps = self._intent(ops.new_endpoints, self.shard.intent, vpc, items)
        version = self.shard.commit(eps)
        keys = [f"{vpc}/{ep.name}" for ep in eps]
        views = [{**ep.to_json(), "version": version} for ep in eps]
        body = {"endpoints": views, "version": version}
        return 201, self._programmed(ctx, "endpoint", keys, body)

    def get_endpoint(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        ep = self.shard.intent.endpoints.get((vpc, ctx.params["name"]))
        if ep is None:
            raise not_found("endpoint", f"no endpoint {ctx.params['name']!r} in VPC {vpc!r}")
        key = f"{vpc}/{ep.name}"
        body = self._with_version("endpoint", key, ep.to_json())
        return 200, self._programmed(ctx, "endpoint", key, body)

    def put_endpoint_bgp(self, ctx: RequestCtx) -> tuple[int, object]:
        return self._write_bgp(ctx, _bgp_peer(ctx.body))

    def delete_endpoint_bgp(self, ctx: RequestCtx) -> tuple[int, object]:
        return self._write_bgp(ctx, None)

    def _write_bgp(self, ctx: RequestCtx, bgp: BgpPeer | None) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        ep = self.shard.intent.endpoints.get((vpc, ctx.params["name"]))
        if ep is None:
            raise not_found("endpoint", f"no endpoint {ctx.params['name']!r} in VPC {vpc!r}")
        updated = self._intent(ops.set_bgp, self.shard.intent, ep, bgp)
        if updated != ep:
            self.shard.commit([updated])
        else:  # unchanged, maybe by a staged write: answered after that write's sync
            self.shard.settled()
        key = f"{vpc}/{ep.name}"
        return 200, self._with_version("endpoint", key, updated.to_json())

    def delete_endpoint(self, ctx: RequestCtx) -> tuple[int, object]:
        ep = self._intent(
            ops.check_endpoint_delete, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        key = f"{ep.vpc}/{ep.name}"
        version = self.shard.commit(deletes=[Delete("endpoint", key)])
        return 200, self._programmed(ctx, "endpoint", key, {"deleted": ep.name, "version": version})

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/v1/vpcs/{vpc}/endpoints",
                self.list_endpoints,
                response=out.ENDPOINTS,
                params=VPC_P,
                summary="List endpoints",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/endpoints",
                self.create_endpoint,
                response=out.ENDPOINT_PROGRAMMED,
                query=WAIT_Q,
                body=ENDPOINT_IN,
                params=VPC_P,
                status=201,
                summary="Create an endpoint",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/endpoints:batchCreate",
                self.create_endpoints,
                response=out.ENDPOINT_BATCH,
                query=WAIT_Q,
                body=ENDPOINTS_IN,
                params=VPC_P,
                status=201,
                summary=f"Create up to {MAX_BATCH} endpoints at once: all or none, one version",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/endpoints/{name}",
                self.get_endpoint,
                response=out.ENDPOINT_PROGRAMMED,
                query=WAIT_Q,
                params=ITEM_P,
                summary="Get an endpoint",
            ),
            Route(
                "PUT",
                "/v1/vpcs/{vpc}/endpoints/{name}/bgp",
                self.put_endpoint_bgp,
                response=out.ENDPOINT,
                body=BGP_IN,
                params=ITEM_P,
                summary="Set the endpoint's BGP session to an on-prem router (docs/routing.md)",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/endpoints/{name}/bgp",
                self.delete_endpoint_bgp,
                response=out.ENDPOINT,
                params=ITEM_P,
                summary="Remove the endpoint's BGP session: its learned routes go with it",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/endpoints/{name}",
                self.delete_endpoint,
                response=out.DELETED_PROGRAMMED,
                query=WAIT_Q,
                params=ITEM_P,
                summary="Delete an endpoint (409 while an ILB lists it as a backend or a "
                "spillover backend, or a route uses it as next hop)",
            ),
        ]


def _new(b: Mapping[str, Any]) -> ops.NewEndpoint:
    """An endpoint-create body (the schema checked its types) as a batch item."""
    return ops.NewEndpoint(
        b["name"],
        b.get("kind", "vm"),
        ipaddress.ip_address(b["ip"]),
        b.get("mac"),
        b.get("host"),
        tuple(Backend(x["endpoint"], x.get("weight", 1)) for x in b.get("backends", [])),
        _bgp_peer(b.get("bgp")),
        tuple(
            Spillover(x["vpc"], x["endpoint"], x.get("weight", 1)) for x in b.get("spillover", [])
        ),
    )


def _bgp_peer(raw: Mapping[str, Any] | None) -> BgpPeer | None:
    """A validated ``BgpPeer`` body (the schema checked types); an IPv6 address is a 400."""
    if raw is None:
        return None
    ips = {}
    for field in ("peer_ip", "local_ip"):
        ip = ipaddress.ip_address(raw[field])
        if not isinstance(ip, ipaddress.IPv4Address):
            raise bad_request(f"bgp.{field}", f"{ip}: BGP sessions are IPv4 only")
        ips[field] = ip
    return BgpPeer(raw["peer_asn"], ips["peer_ip"], ips["local_ip"])
