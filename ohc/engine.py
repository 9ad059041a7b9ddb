"""The OHC's incremental flow engine: stream changes in, changed flow keys out, O(change).

OVN's incremental-processing engine in miniature. ``compile_host`` (``ohc.compiler``) stays
the reference: a pure function of the whole view. The engine keeps what a full compile would
produce, split into *units*, each the flows one input owns:

- ``infra``: the fixed flows (table misses);
- ``("ctx", vpc)``: one local VPC's own flows (tunnel classifier, gateways, local ports, load
  balancers, routes): small, recompiled whenever anything but a destination changes;
- ``("dest", vpc, peer, ip)``: the flows one destination address owns in one VPC context
  (the bulk: one per peer endpoint), recompiled only when that destination changes, its
  local port changes, or its context (``compiler.dest_context``: routes, peering policy,
  one-way flags, tunnel port) changes.

A flow key claimed by several units goes to the one a full compile would have emitted first
(``Rank``: the compile order), so ``FlowEngine.state()`` equals the canonical full compile of
the same view, flow for flow and group for group (tests/unit/test_ohc_engine.py checks it over
random sequences of deltas, snapshots and port changes). ``update`` returns which flow keys and
group ids changed: the syncer plans only those (``syncer.plan_keys``).

Destinations are validated as ``VpcServices.from_service_objects`` does (bad objects and other
VNIs skipped, the first key in sorted order wins an address), per (VPC, export policy, VNI)
in a ``DestIndex``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshpeer.protocol import ServiceName
from ohc import host
from ohc.compiler import (
    Ctx,
    Recorder,
    SharedPairs,
    assign_groups,
    contexts,
    dest_context,
    dest_flows,
    infra_flows,
    lb_flows,
    port_flows,
    route_flows,
    vpc_flows,
)
from ohc.flows import Flow, Group
from ohc.model import (
    Address,
    BadObject,
    Destination,
    LocalPort,
    PeerView,
    Skipped,
    ip_key,
)
from ohc.subscriptions import Sub
from ohc.syncer import CANARY, FlowKey, SwitchState

IpKey = tuple[int, int]
Rank = tuple[Any, ...]  # a flow's place in compile order: the first emitted wins a key
IndexKey = tuple[str, str | None, int]  # (VPC, export policy or None, VNI)
RoleKey = tuple[str, str | None]  # (local VPC, peer VPC or None for its own destinations)
UnitId = tuple[Hashable, ...]
Candidate = tuple[Rank, int, Flow]  # (its unit's rank, its place in the unit, the flow)
Candidates = list[Candidate]

DELETED: Any = object()  # in a partial StreamChange: the object was deleted
MAX_SHARED = 100_000  # shared match pairs kept before the table starts afresh


@dataclass(frozen=True)
class StreamChange:
    """What changed in one stream since the last update.

    ``objects`` None: the stream is gone (unfollowed, refused). ``partial``: ``objects`` holds
    only the changed keys, a deleted one as ``DELETED``; otherwise every object the stream
    has (a snapshot: compared with what the engine held, object by object)."""

    objects: Mapping[str, Any] | None
    partial: bool = False


@dataclass(frozen=True)
class Update:
    """What one ``FlowEngine.update`` changed, for the syncer and the OHC's status."""

    flow_keys: frozenset[FlowKey]
    group_ids: frozenset[int]
    units: int  # units compiled
    skeleton: bool  # the VPC contexts were rebuilt (something but a destination changed)
    # the flow each changed key had before (None: none): a model of the switch kept relative
    # to the engine's table takes them (``syncer.SwitchModel.absorb``)
    old: Mapping[FlowKey, Flow | None]


class DestIndex:
    """The destinations of one (VPC, policy, VNI): parsed once per object, and which key wins
    each address (the first valid one in sorted key order, as ``VpcServices`` decides)."""

    def __init__(self, vpc: str, vni: int) -> None:
        self.vpc = vpc
        self.vni = vni
        self.dests: dict[str, Destination] = {}  # valid ones, by object key
        self.errors: dict[str, str] = {}  # invalid ones: why
        self.claims: dict[IpKey, list[str]] = {}  # address -> keys claiming it, sorted
        self.contested: set[IpKey] = set()  # addresses more than one key claims
        self.hosts: dict[str, ipaddress.IPv4Address] = {}  # shared underlay addresses

    def set(self, key: str, raw: Any) -> tuple[IpKey, ...]:
        """Put (or, with DELETED, remove) one object; returns the addresses whose winner may
        have changed."""
        touched: tuple[IpKey, ...] = ()
        old = self.dests.pop(key, None)
        self.errors.pop(key, None)
        if old is not None:
            k = ip_key(old.ip)
            keys = self.claims[k]
            keys.remove(key)
            if not keys:
                del self.claims[k]
            if len(keys) < 2:
                self.contested.discard(k)
            touched = (k,)
        if raw is DELETED:
            return touched
        try:
            if not isinstance(raw, Mapping):
                raise BadObject(f"expected an object, got {type(raw).__name__}")
            d = Destination.from_service_objects(self.vpc, key, raw, self.hosts)
            if d.vni != self.vni:
                raise BadObject(f"vni {d.vni} is not the VPC's VNI {self.vni}")
        except BadObject as e:
            self.errors[key] = str(e)
            return touched
        self.dests[key] = d
        k = ip_key(d.ip)
        keys = self.claims.setdefault(k, [])
        bisect.insort(keys, key)
        if len(keys) > 1:
            self.contested.add(k)
        return (*touched, k) if touched != (k,) else touched

    def winner(self, k: IpKey) -> Destination | None:
        keys = self.claims.get(k)
        return self.dests[keys[0]] if keys else None

    def skipped(self) -> Iterable[Skipped]:
        for key, why in self.errors.items():
            yield Skipped("destination", f"{self.vpc}/{key}", why)
        for k in self.contested:
            keys = self.claims[k]
            first = self.dests[keys[0]]
            for key in keys[1:]:
                why = f"ip {first.ip} already belongs to {first.name}"
                yield Skipped("destination", f"{self.vpc}/{key}", why)


@dataclass(frozen=True)
class _Role:
    """One set of destination units: a local VPC's own destinations, or one peer's."""

    ctx: Ctx
    peer: PeerView | None
    index: IndexKey
    rank: Rank
    context: tuple[Hashable, ...]  # what its units depend on besides each destination

    @property
    def source(self) -> str:
        """The VPC its destinations belong to."""
        return self.ctx.vpc if self.peer is None else self.peer.peer_vpc


class FlowEngine:
    """The desired flows and groups of one host, kept up to date unit by unit."""

    def __init__(self, underlay_ip: str) -> None:
        self.underlay_ip = underlay_ip
        self.streams: dict[Sub, dict[str, Any]] = {}
        self.ofports: Mapping[tuple[str, str], int] | None = None
        self.tunnel_port: int | None = None
        self.indexes: dict[IndexKey, DestIndex] = {}
        self.roles: dict[RoleKey, _Role] = {}
        self.role_units: dict[RoleKey, set[IpKey]] = {}
        self.local: dict[tuple[str, Address], LocalPort] = {}
        # VIPs the load-balancer streams claim, valid or not, per (VPC, policy): a destination
        # taking or freeing one decides whether that load balancer is valid (``_rebuild``)
        self.vips: dict[tuple[str, str | None], set[IpKey]] = {}
        self.view_skipped: tuple[Skipped, ...] = ()
        self.units: dict[UnitId, Candidates] = {}
        self.unit_groups: dict[UnitId, dict[int, Group]] = {}
        self.table: dict[FlowKey, Candidate] = {}  # the winner of each key
        self.more: dict[FlowKey, Candidates] = {}  # every candidate, for contested keys only
        self.groups: dict[int, Group] = {}
        self._keys: set[FlowKey] = set()
        self._old: dict[FlowKey, Flow | None] = {}
        self._gids: set[int] = set()
        self._compiled = 0
        self.shared: SharedPairs = {}  # match pairs many flows hold (compiler._Out)
        self._set_unit(("infra",), self._events((0,), infra_flows), {})

    # --- reading -----------------------------------------------------------------------

    def flow(self, key: FlowKey) -> Flow | None:
        have = self.table.get(key)
        if have is None:
            return CANARY if key == CANARY.key else None  # as ``state`` has it
        return have[2]

    def state(self) -> SwitchState:
        """Every desired flow (with the canary) and group: what a full sync diffs against."""
        flows = frozenset(itertools.chain((c[2] for c in self.table.values()), (CANARY,)))
        return SwitchState(flows, frozenset(self.groups.values()))

    def skipped(self) -> tuple[Skipped, ...]:
        """What the view leaves out, and why (as ``host.host_view`` reports it)."""
        out = set(self.view_skipped)
        for k in self.roles.values():
            out.update(self.indexes[k.index].skipped())
        return tuple(sorted(out))

    # --- updating ----------------------------------------------------------------------

    def update(
        self,
        changes: Mapping[Sub, StreamChange],
        ofports: Mapping[tuple[str, str], int],
        tunnel_port: int | None,
    ) -> Update:
        self._keys, self._gids, self._old, self._compiled = set(), set(), {}, 0
        rebuild = self.ofports != ofports or self.tunnel_port != tunnel_port or not self.roles
        self.ofports, self.tunnel_port = dict(ofports), tunnel_port
        touched: dict[IndexKey, set[IpKey]] = {}
        for sub, change in changes.items():
            keys = self._apply(sub, change)
            if sub.service != ServiceName.DESTINATION:
                rebuild = True
                continue
            for ik, index in self.indexes.items():
                if (ik[0], ik[1]) == (sub.key, sub.policy):
                    objs = self.streams.get(sub, {})
                    hit = touched.setdefault(ik, set())
                    for k in keys:
                        hit.update(index.set(k, objs.get(k, DELETED)))
        if any(ips & self.vips.get(ik[:2], set()) for ik, ips in touched.items()):
            rebuild = True  # a destination took or freed a load balancer's VIP
        redo: dict[RoleKey, set[IpKey]] = {}
        if rebuild:
            redo = self._rebuild()  # the only step whose units have groups
            self._merge_groups()
        for rk, role in self.roles.items():
            ips = touched.get(role.index)
            if ips and redo.get(rk) is not _ALL:
                redo.setdefault(rk, set()).update(ips)
        for rk, ips in redo.items():
            role = self.roles[rk]
            if ips is _ALL:
                ips = set(self.indexes[role.index].claims) | self.role_units.get(rk, set())
            for ip in ips:
                self._compile_dest(rk, role, ip)
        changed = frozenset(self._keys)
        return Update(changed, frozenset(self._gids), self._compiled, rebuild, self._old)

    def _apply(self, sub: Sub, change: StreamChange) -> Iterable[str]:
        """Take ``change`` into the engine's copy of the stream; the keys it changed."""
        old = self.streams.get(sub, {})
        if change.objects is None:
            self.streams.pop(sub, None)
            return list(old)
        if change.partial:
            for k, v in change.objects.items():
                if v is DELETED:
                    old.pop(k, None)
                else:
                    old[k] = v
            self.streams[sub] = old
            return list(change.objects)
        new = dict(change.objects)
        self.streams[sub] = new
        return [
            k for k in old.keys() | new.keys() if old.get(k, DELETED) is not new.get(k, DELETED)
        ]

    def _index(self, vpc: str, policy: str | None, vni: int) -> DestIndex:
        """The destinations of a service set, built from its stream when first asked for."""
        ik = (vpc, policy, vni)
        index = self.indexes.get(ik)
        if index is None:
            index = self.indexes[ik] = DestIndex(vpc, vni)
            for sub, objs in self.streams.items():
                if sub.service == ServiceName.DESTINATION and (sub.key, sub.policy) == (
                    vpc,
                    policy,
                ):
                    for k, v in objs.items():
                        index.set(k, v)
        return index

    def _rebuild(self) -> dict[RoleKey, set[IpKey]]:
        """Rebuild the VPC contexts from every stream but the destinations (kept apart, in
        ``DestIndex``es); recompile each context unit; return the destination units to
        recompile: all of a role whose context changed, else those whose local port did."""
        assert self.ofports is not None
        if len(self.shared) > MAX_SHARED:  # pairs of ports and hosts long gone: start afresh
            self.shared = {}
        small = {s: o for s, o in self.streams.items() if s.service != ServiceName.DESTINATION}
        view, self.view_skipped = host.host_view(
            self.underlay_ip,
            small,
            self.ofports,
            self.tunnel_port,
            taken=lambda vpc, policy, vni: self._index(vpc, policy, vni).claims,
        )
        groups = assign_groups(view, view.vpc_vni())
        roles: dict[RoleKey, _Role] = {}
        ctx_units = set()
        for ctx in contexts(view):
            ctx_units.add(("ctx", ctx.vpc))
            self._compile_ctx(ctx, groups)
            own: IndexKey = (ctx.vpc, None, ctx.vni)
            roles[(ctx.vpc, None)] = _Role(ctx, None, own, (1, ctx.vpc, 2), dest_context(ctx, None))
            for pos, peer in enumerate(ctx.peers):
                ik: IndexKey = (peer.peer_vpc, peer.policy_id, peer.peer_vni)
                context = (*dest_context(ctx, peer), pos)
                rank = (1, ctx.vpc, 4, pos, 0)
                roles[(ctx.vpc, peer.peer_vpc)] = _Role(ctx, peer, ik, rank, context)
        for uid in [u for u in self.units if u[0] == "ctx" and u not in ctx_units]:
            self._set_unit(uid, [], {})
        local = {(p.vpc, p.ip): p for p in view.local_ports}
        moved = {k for k in local.keys() | self.local.keys() if local.get(k) != self.local.get(k)}
        redo: dict[RoleKey, set[IpKey]] = {}
        for rk in set(self.roles) - set(roles):  # a peering or the VPC's last port went
            for k in self.role_units.pop(rk, set()):
                self._set_unit(("dest", *rk, k), [], {})
        for rk, role in roles.items():
            old = self.roles.get(rk)
            if old is None or old.context != role.context or old.index != role.index:
                redo[rk] = _ALL
            else:
                redo[rk] = {ip_key(ip) for vpc, ip in moved if vpc == role.source}
        self.roles, self.local, self.vips = roles, local, _claimed_vips(small)
        used = {r.index for r in roles.values()}
        for ik in set(self.indexes) - used:
            del self.indexes[ik]
        return redo

    def _compile_ctx(self, ctx: Ctx, groups: dict[str, int]) -> None:
        """One VPC's flows besides its destinations, in compile order (``compiler._compile``)."""
        vpc = ctx.vpc
        out: Candidates = []
        got: dict[int, Group] = {}
        out += self._events((1, vpc, 0), vpc_flows, ctx)
        for p in ctx.ports:
            out += self._events((1, vpc, 1, p.name), port_flows, ctx, p)
        for lb in ctx.own.load_balancers:
            out += self._events(
                (1, vpc, 3, ip_key(lb.vip)), lb_flows, ctx, lb, None, groups, got=got
            )
        for pos, peer in enumerate(ctx.peers):
            for lb in peer.services.load_balancers:
                rank = (1, vpc, 4, pos, 1, ip_key(lb.vip))
                out += self._events(rank, lb_flows, ctx, lb, peer, groups, got=got)
        out += self._events((1, vpc, 5), route_flows, ctx)
        self._set_unit(("ctx", vpc), out, got)

    def _compile_dest(self, rk: RoleKey, role: _Role, k: IpKey) -> None:
        d = self.indexes[role.index].winner(k)
        units = self.role_units.setdefault(rk, set())
        if d is None:
            units.discard(k)
            self._set_unit(("dest", *rk, k), [], {})
            return
        units.add(k)
        events = self._events((*role.rank, k), dest_flows, role.ctx, d, role.peer)
        self._set_unit(("dest", *rk, k), events, {})

    def _events(
        self, rank: Rank, fn: Any, *args: Any, got: dict[int, Group] | None = None
    ) -> Candidates:
        return _events(rank, fn, *args, got=got, shared=self.shared)

    # --- the table ---------------------------------------------------------------------

    def _set_unit(self, uid: UnitId, new: Candidates, groups: dict[int, Group]) -> None:
        """Replace what unit ``uid`` claims; keys whose winner changes go into ``_keys``."""
        self._compiled += 1
        old = self.units.pop(uid, [])
        if old != new:
            kept = set(new)
            for cand in old:
                if cand not in kept:
                    self._withdraw(cand)
            had = set(old)
            for cand in new:
                if cand not in had:
                    self._claim(cand)
        if new:
            self.units[uid] = new
        self.unit_groups.pop(uid, None)
        if groups:
            self.unit_groups[uid] = groups

    def _merge_groups(self) -> None:
        """``groups`` from every unit's, once all of them are compiled: an id can move from one
        VPC's load balancer to another's (hash probing, ``compiler.assign_groups``), and a
        unit giving it up must not delete what the unit taking it put there."""
        merged: dict[int, Group] = {}
        for groups in self.unit_groups.values():
            merged.update(groups)
        for gid in merged.keys() | self.groups.keys():
            if merged.get(gid) != self.groups.get(gid):
                self._gids.add(gid)
        self.groups = merged

    def _changed(self, key: FlowKey, old: Flow | None) -> None:
        """The winning flow of ``key`` changed; ``old`` is the one it had (None: none)."""
        self._keys.add(key)
        self._old.setdefault(key, old)  # the first one: what it had when the update began

    def _claim(self, cand: Candidate) -> None:
        key = cand[2].key
        have = self.table.get(key)
        if have is None:
            self.table[key] = cand
            self._changed(key, None)
            return
        more = self.more.setdefault(key, [have])
        more.append(cand)
        if cand[:2] < have[:2]:
            self.table[key] = cand
            if cand[2] != have[2]:
                self._changed(key, have[2])

    def _withdraw(self, cand: Candidate) -> None:
        key = cand[2].key
        more = self.more.get(key)
        if more is None:
            del self.table[key]
            self._changed(key, cand[2])
            return
        more.remove(cand)
        best = min(more, key=lambda c: c[:2])
        if len(more) == 1:
            del self.more[key]
        if self.table[key] == cand:
            self.table[key] = best
            if best[2] != cand[2]:
                self._changed(key, cand[2])


_ALL: Any = object()  # in a redo map: every unit of the role


def _claimed_vips(
    streams: Mapping[Sub, Mapping[str, Any]],
) -> dict[tuple[str, str | None], set[IpKey]]:
    out: dict[tuple[str, str | None], set[IpKey]] = {}
    for sub, objs in streams.items():
        if sub.service != ServiceName.LOADBALANCER:
            continue
        vips = out.setdefault((sub.key, sub.policy), set())
        for obj in objs.values():
            try:
                vips.add(ip_key(ipaddress.ip_address(obj.get("vip"))))
            except (AttributeError, TypeError, ValueError):
                continue  # not an address: that load balancer is skipped anyway
    return out


def _events(
    rank: Rank, fn: Any, *args: Any, got: dict[int, Group] | None = None, shared: SharedPairs
) -> Candidates:
    """Run one compiler step into a recorder: its flows, each ranked by ``rank`` and its
    place in the step (the first flow of a key within a step wins, as in a full compile);
    its groups go into ``got``. Notes are the reference compiler's; the engine drops them."""
    rec = Recorder(shared)
    fn(rec, *args)
    out: Candidates = []
    seen: set[FlowKey] = set()
    for n, e in enumerate(rec.events):
        if isinstance(e, str):
            continue
        flow = e[0]
        if flow.key not in seen:
            seen.add(flow.key)
            out.append((rank, n, flow))
    if got is not None:
        got.update(rec.groups)
    return out
