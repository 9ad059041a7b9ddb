"""Static routes, the effective route table and the VPC's BGP sessions."""

from __future__ import annotations

import ipaddress

from meshpeer.controller import intent as ops
from meshpeer.controller import responses as out
from meshpeer.controller.handlers.base import ITEM_P, VPC_P, Handlers
from meshpeer.controller.shard import Delete
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Int, Obj, Str

# "effective" is taken by GET /v1/vpcs/{vpc}/routes/effective.
ROUTE_IN = Obj(
    {
        "name": Str(format="name", reserved=("effective",)),
        "prefix": Str(format="cidr"),
        "next_hop": Str(format="ip"),
    },
    {"priority": Int(0, 65535)},
    name="RouteCreate",
)


class RouteHandlers(Handlers):
    def list_routes(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        rs = self.shard.intent.routes_of(vpc)
        return 200, {
            "routes": [self._with_version("route", f"{vpc}/{r.name}", r.to_json()) for r in rs]
        }

    def create_route(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        r = self._intent(
            ops.new_route,
            self.shard.intent,
            ctx.params["vpc"],
            b["name"],
            ipaddress.ip_network(b["prefix"]),
            ipaddress.ip_address(b["next_hop"]),
            b.get("priority", 1000),
        )
        self.shard.commit([r])
        return 201, self._with_version("route", f"{r.vpc}/{r.name}", r.to_json())

    def get_route(self, ctx: RequestCtx) -> tuple[int, object]:
        r = self._intent(ops.check_route, self.shard.intent, ctx.params["vpc"], ctx.params["name"])
        return 200, self._with_version("route", f"{r.vpc}/{r.name}", r.to_json())

    def delete_route(self, ctx: RequestCtx) -> tuple[int, object]:
        r = self._intent(ops.check_route, self.shard.intent, ctx.params["vpc"], ctx.params["name"])
        version = self.shard.commit(deletes=[Delete("route", f"{r.vpc}/{r.name}")])
        return 200, {"deleted": r.name, "version": version}

    def bgp_status(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        return 200, {"vpc": vpc.name, "asn": vpc.asn, "sessions": self.shard.bgp_status(vpc.name)}

    def effective_routes(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        return 200, {"vpc": vpc, "routes": self.shard.effective_routes(vpc)}

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/v1/vpcs/{vpc}/routes",
                self.list_routes,
                response=out.ROUTES,
                params=VPC_P,
                summary="List static routes",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/routes",
                self.create_route,
                response=out.ROUTE,
                body=ROUTE_IN,
                params=VPC_P,
                status=201,
                summary="Create a static route via an endpoint",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/routes/effective",
                self.effective_routes,
                response=out.EFFECTIVE_ROUTES,
                params=VPC_P,
                summary="Every route the VPC sees, with origin and import decision",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/bgp",
                self.bgp_status,
                response=out.BGP_STATUS,
                params=VPC_P,
                summary="The VPC's BGP sessions: up or not, announced, learned (docs/routing.md)",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/routes/{name}",
                self.get_route,
                response=out.ROUTE,
                params=ITEM_P,
                summary="Get a static route",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/routes/{name}",
                self.delete_route,
                response=out.DELETED,
                params=ITEM_P,
                summary="Delete a static route",
            ),
        ]
