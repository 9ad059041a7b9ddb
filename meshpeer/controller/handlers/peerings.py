"""Peerings: each side's export policy, inbound rule, route import and forwarding."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshpeer.controller import intent as ops
from meshpeer.controller import responses as out
from meshpeer.controller.handlers.base import ITEM_P, NAME, VPC_P, WAIT_Q, Handlers
from meshpeer.controller.intent import PeerFacts
from meshpeer.controller.model import JsonObject
from meshpeer.controller.peering import ACTIVE, INACTIVE, VPC_OBJ, peer_ranges
from meshpeer.controller.shard import Delete
from meshpeer.protocol.gateways import DEFAULT_FORWARDING
from meshpeer.rest.errors import bad_request
from meshpeer.rest.router import RequestCtx, Route
from meshpeer.rest.schema import Bool, Obj, Schema
from policies.export import PolicyError, parse_export_policy, ranges_outside
from policies.routes import DEFAULT_PREFERENCE

EXPORT = Obj(
    {},
    out.EXPORT_FIELDS,
    name="ExportPolicy",
    description="What this VPC shows the peer; every restriction narrows it (docs/policies.md)",
)

# What either write of a peering side may set (all optional on create and update).
PEERING_SETTINGS: dict[str, Schema] = {
    "export": EXPORT,
    "import_custom_routes": Bool(),
    "inbound": out.INBOUND,
    "preference": out.PREFERENCE,
    "forwarding": out.FORWARDING,
}

PEERING_IN = Obj(
    {"name": NAME, "peer_vpc": NAME},
    PEERING_SETTINGS,
    name="PeeringCreate",
)


class PeeringHandlers(Handlers):
    def _peering_json(self, vpc: str, name: str) -> JsonObject:
        p = self.shard.intent.peerings[(vpc, name)]
        st = self.shard.peering_status(vpc, name)
        body = self._with_version("peering", f"{vpc}/{name}", p.to_json())
        body["state"] = st.state if st else INACTIVE
        body["state_details"] = st.details if st else "not evaluated yet"
        body["peer_export_policy_id"] = st.peer_policy_id if st else None
        return body

    def list_peerings(self, ctx: RequestCtx) -> tuple[int, object]:
        vpc = self._vpc(ctx.params["vpc"]).name
        return 200, {
            "peerings": [
                self._peering_json(vpc, p.name) for p in self.shard.intent.peerings_of(vpc)
            ]
        }

    def _peer_facts(self, peer_vpc: str, fetched: dict[str, Any]) -> PeerFacts | None:
        """Facts about the peer VPC: local, replicated, or asked of its shard right now (a
        view asked for is put in ``fetched``)."""
        view = self.shard.views().get(peer_vpc)
        owner = self.shard.directory.owner_of(peer_vpc)
        if view is None and owner != self.shard.name:
            view = self.fetch_view(peer_vpc)
            if view is not None:
                fetched[peer_vpc] = view
        elif view is None and owner == self.shard.name:
            return PeerFacts(False)
        if view is None:
            return None
        return PeerFacts(VPC_OBJ in view, peer_ranges(view))

    def create_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        b = ctx.body
        vpc = self._vpc(ctx.params["vpc"]).name
        try:
            export = parse_export_policy(b.get("export"), "export")
        except PolicyError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        fetched: dict[str, Any] = {}
        facts = self._peer_facts(b["peer_vpc"], fetched) if b["peer_vpc"] != vpc else None
        p = self._intent(
            ops.new_peering,
            self.shard.intent,
            vpc,
            b["name"],
            b["peer_vpc"],
            export,
            b.get("import_custom_routes", False),
            facts,
            b.get("inbound", "all"),
            b.get("preference", DEFAULT_PREFERENCE),
            b.get("forwarding", DEFAULT_FORWARDING),
        )
        # The peer's view just fetched decides the state now (ACTIVE at once when the peer
        # has configured its side), not when the federation stream first delivers it.
        for peer_vpc, view in fetched.items():
            self.shard.adopt_fetched_view(peer_vpc, view)
        self.shard.commit([p])
        warnings = self._export_warnings(vpc, b.get("export"))
        return 201, {**self._peering_programmed(ctx, vpc, p.name), "warnings": warnings}

    def _export_warnings(self, vpc: str, raw: object) -> list[JsonObject]:
        """Export ranges in a request that overlap nothing of ``vpc``: accepted, warned."""
        intent = self.shard.intent
        subnets = (s.cidr for s in intent.vpcs[vpc].subnets)
        routes = (r.prefix for r in intent.routes_of(vpc))
        found = ranges_outside(raw, "export", subnets, routes)
        return [{"field": w.field, "detail": w.detail} for w in found]

    def _peering_programmed(self, ctx: RequestCtx, vpc: str, name: str) -> JsonObject:
        """An INACTIVE peering has nothing programmed for it: ``programmed`` is false at once
        (its ``state_details`` say why); an ACTIVE one waits like any write."""
        body = self._peering_json(vpc, name)
        if body["state"] != ACTIVE:
            return {**body, "programmed": False, "pending_hosts": []}
        return self._programmed(ctx, "peering", f"{vpc}/{name}", body)

    def update_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        p = self._intent(
            ops.check_peering, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        b = ctx.body
        try:
            export = parse_export_policy(b["export"], "export") if "export" in b else p.export
        except PolicyError as exc:
            raise bad_request(exc.field, exc.detail) from exc
        updated = replace(
            p,
            export=export,
            import_custom_routes=b.get("import_custom_routes", p.import_custom_routes),
            inbound=b.get("inbound", p.inbound),
            preference=b.get("preference", p.preference),
            forwarding=b.get("forwarding", p.forwarding),
        )
        self.shard.commit([updated])
        warnings = self._export_warnings(p.vpc, b["export"]) if "export" in b else []
        return 200, {**self._peering_programmed(ctx, p.vpc, p.name), "warnings": warnings}

    def get_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        p = self._intent(
            ops.check_peering, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        return 200, self._peering_programmed(ctx, p.vpc, p.name)

    def delete_peering(self, ctx: RequestCtx) -> tuple[int, object]:
        p = self._intent(
            ops.check_peering, self.shard.intent, ctx.params["vpc"], ctx.params["name"]
        )
        key = f"{p.vpc}/{p.name}"
        version = self.shard.commit(deletes=[Delete("peering", key)])
        return 200, self._programmed(ctx, "peering", key, {"deleted": p.name, "version": version})

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/v1/vpcs/{vpc}/peerings",
                self.list_peerings,
                response=out.PEERINGS,
                params=VPC_P,
                summary="List peerings with their state",
            ),
            Route(
                "POST",
                "/v1/vpcs/{vpc}/peerings",
                self.create_peering,
                response=out.PEERING_WRITTEN,
                query=WAIT_Q,
                body=PEERING_IN,
                params=VPC_P,
                status=201,
                summary="Configure this VPC's side of a peering",
            ),
            Route(
                "GET",
                "/v1/vpcs/{vpc}/peerings/{name}",
                self.get_peering,
                query=WAIT_Q,
                response=out.PEERING_PROGRAMMED,
                params=ITEM_P,
                summary="Get a peering: state (ACTIVE/INACTIVE) and why",
            ),
            Route(
                "PUT",
                "/v1/vpcs/{vpc}/peerings/{name}",
                self.update_peering,
                query=WAIT_Q,
                response=out.PEERING_WRITTEN,
                body=Obj(
                    {},
                    PEERING_SETTINGS,
                    name="PeeringUpdate",
                ),
                params=ITEM_P,
                summary="Change a peering's export policy, route import, inbound, preference or forwarding",
            ),
            Route(
                "DELETE",
                "/v1/vpcs/{vpc}/peerings/{name}",
                self.delete_peering,
                response=out.DELETED_PROGRAMMED,
                query=WAIT_Q,
                params=ITEM_P,
                summary="Delete this VPC's side of a peering",
            ),
        ]
