"""VPCs and their subnets, and which shard owns a VPC name."""

from __future__ import annotations

import ipaddress
from typing import Any

from meshpeer.controller import intent as ops
from meshpeer.controller import responses as out
from meshpeer.controller.handlers.base import ITEM_P, NAME, VPC_P, Handlers
from meshpeer.controller.model import Subnet
from meshpeer.controller.peering import peer_ranges
from meshpeer.controller.shard import Delete
from meshpeer.rest.errors import not_found
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Arr, Int, Obj, Str

SUBNET_CIDR = Str(
    format="cidr",
    description="at least 4 addresses; not a /0 (a default route), and overlapping no"
    " unspecified, loopback, multicast or broadcast address (0.0.0.0, 127.0.0.0/8, 224.0.0.0/4,"
    " 255.255.255.255, ::, ::1, ff00::/8), which no host programs for an endpoint",
)

SUBNET_IN = Obj({"cidr": SUBNET_CIDR}, {"name": NAME}, name="SubnetCreate")

VPC_IN = Obj(
    {"name": NAME},
    {
        "subnets": Arr(SUBNET_IN),
        "vni": Int(1, (1 << 24) - 1),
        "asn": Int(
            1,
            65535,
            description="BGP AS number toward on-prem routers (default 64512; 23456 and 65535 are"
            " reserved: 400)",
        ),
    },
    name="VpcCreate",
)


class VpcHandlers(Handlers):
    def list_vpcs(self, ctx: RequestCtx) -> tuple[int, object]:
        vpcs = sorted(self.shard.intent.vpcs.values(), key=lambda v: v.name)
        return 200, {"vpcs": [self._with_version("vpc", v.name, v.to_json()) for v in vpcs]}

    def create_vpc(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        subnets = [
            Subnet(s.get("name", f"s{i}"), ipaddress.ip_network(s["cidr"]))
            for i, s in enumerate(b.get("subnets", []))
        ]
        vpc = self._intent(
            ops.new_vpc,
            self.shard.intent,
            self.shard.directory,
            self.shard.name,
            b["name"],
            subnets,
            b.get("vni"),
            b.get("asn"),
        )
        owner = self.shard.claim_vpc(vpc.name)
        self._intent(ops.check_claim, self.shard.directory, vpc.name, owner, self.shard.name)
        self.shard.commit([vpc])
        return 201, self._with_version("vpc", vpc.name, vpc.to_json())

    def placement(self, ctx: RequestCtx) -> tuple[int, object]:
        """Which shard owns (or would own) a VPC name: where to create and manage it."""
        name = ctx.params["vpc"]
        d = self.shard.directory
        owner = d.owner_of(name)
        pinned = name in d.shards[owner].vpcs
        return 200, {"vpc": name, "shard": owner, "url": d.shards[owner].url, "pinned": pinned}

    def get_vpc(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        return 200, self._with_version("vpc", vpc.name, vpc.to_json())

    def delete_vpc(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._intent(ops.check_vpc_delete, self.shard.intent, ctx.params["vpc"])
        version = self.shard.commit(deletes=[Delete("vpc", vpc.name)])
        self.shard.release_vpc(vpc.name)
        return 200, {"deleted": vpc.name, "version": version}

    def list_subnets(self, ctx: RequestCtx) -> tuple[int, object]:
        return 200, {"subnets": [s.to_json() for s in self._vpc(ctx.params["vpc"]).subnets]}

    def create_subnet(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        name = ctx.body.get("name", f"s{len(vpc.subnets)}")
        subnet = Subnet(name, ipaddress.ip_network(ctx.body["cidr"]))
        peers = self._peer_ranges(vpc.name)
        updated = self._intent(ops.add_subnet, self.shard.intent, vpc, subnet, peers)
        version = self.shard.commit([updated])
        return 201, {**subnet.to_json(), "version": version}

    def get_subnet(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        found = next((s for s in vpc.subnets if s.name == ctx.params["name"]), None)
        if found is None:
            raise not_found("subnet", f"no subnet {ctx.params['name']!r} in VPC {vpc.name!r}")
        return 200, found.to_json()

    def delete_subnet(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"])
        updated = self._intent(ops.remove_subnet, self.shard.intent, vpc, ctx.params["name"])
        version = self.shard.commit([updated])
        return 200, {"deleted": ctx.params["name"], "version": version}

    def _peer_ranges(self, vpc: str) -> dict[str, list[Any]]:
        views = self.shard.views()
        return {
            p.peer_vpc: list(peer_ranges(views.get(p.peer_vpc)))
            for p in self.shard.intent.peerings_of(vpc)
        }

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/v1/vpcs",
                self.list_vpcs,
                response=out.VPCS,
                summary="List VPCs of this shard",
            ),
            Route(
                "POST",
                "/v1/vpcs",
                self.create_vpc,
                response=out.VPC,
                body=VPC_IN,
                status=201,
                summary="Create a VPC (VNI allocated from the shard's range)",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}",
                self.get_vpc,
                response=out.VPC,
                params=VPC_P,
                summary="Get a VPC",
            ),
            Route(
                "GET",
                "/v1/placement/{vpc}",
                self.placement,
                response=out.PLACEMENT,
                params=VPC_P,
                summary="Which shard owns a VPC name (pinned in the directory, else by hash)",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}",
                self.delete_vpc,
                response=out.DELETED,
                params=VPC_P,
                summary="Delete a VPC with no peerings, endpoints or routes",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/subnets",
                self.list_subnets,
                response=out.SUBNETS,
                params=VPC_P,
                summary="List subnets",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/subnets",
                self.create_subnet,
                response=out.SUBNET_CREATED,
                body=SUBNET_IN,
                params=VPC_P,
                status=201,
                summary="Add a subnet",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/subnets/{name}",
                self.get_subnet,
                response=out.SUBNET,
                params=ITEM_P,
                summary="Get a subnet",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/subnets/{name}",
                self.delete_subnet,
                response=out.DELETED,
                params=ITEM_P,
                summary="Delete an empty subnet",
            ),
        ]
