"""The OHC's incremental flow engine: stream changes in, changed flow keys out, O(change).

OVN's incremental-processing engine in miniature. ``compile_host`` (``ohc.compiler``) stays
the reference: a pure function of the whole view. The engine keeps what a full compile would
produce, split into *units*, each the flows one input owns:

- ``infra``: the fixed flows (table misses);
- ``("ctx", vpc)``: one local VPC's own flows (tunnel classifier, gateways, local ports, load
  balancers, routes): small, recompiled whenever anything but a destination changes;
- a destination unit (``_DestUnit``, in ``dest_units`` by VPC context, peer and address): the
  flows one destination address owns in one VPC context (the bulk: one per peer endpoint),
  recompiled only when that destination changes, its local port changes, or its context
  (``compiler.dest_context``: routes, peering policy, one-way flags, tunnel port) changes.
  Kept compact: one small object per unit, which also holds its flows' keys in the table.

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
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import DEFAULT_ROLE, HostRole
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
    offload_cookie,
    port_flows,
    relay_all,
    route_flows,
    vpc_flows,
)
from ohc.flows import Flow, Group
from ohc.model import (
    Address,
    BadObject,
    Destination,
    LocalPort,
    Offload,
    PeerView,
    Skipped,
    gateway_ips,
    ip_key,
    same_vni,
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
        # address -> the key that wins it; every key claiming it, sorted, only where more
        # than one does (rare: a list per address was 5 MiB at 50k peer endpoints)
        self.claims: dict[IpKey, str] = {}
        self.contested: dict[IpKey, list[str]] = {}
        self.hosts: dict[str, ipaddress.IPv4Address] = {}  # shared underlay addresses

    def set(self, key: str, raw: Any) -> tuple[IpKey, ...]:
        """Put (or, with DELETED, remove) one object; returns the addresses whose winner may
        have changed."""
        touched: tuple[IpKey, ...] = ()
        old = self.dests.pop(key, None)
        self.errors.pop(key, None)
        if old is not None:
            k = ip_key(old.ip)
            self._unclaim(k, key)
            touched = (k,)
        if raw is DELETED:
            return touched
        try:
            d = Destination.from_service_objects(self.vpc, key, raw, self.hosts)
            same_vni(d.vni, self.vni)
        except BadObject as e:
            self.errors[key] = str(e)
            return touched
        self.dests[key] = d
        k = ip_key(d.ip)
        self._claim(k, key)
        return (*touched, k) if touched != (k,) else touched

    def _claim(self, k: IpKey, key: str) -> None:
        first = self.claims.setdefault(k, key)
        if first == key:
            return
        keys = self.contested.get(k)
        if keys is None:
            keys = self.contested[k] = [first]
        bisect.insort(keys, key)
        self.claims[k] = keys[0]

    def _unclaim(self, k: IpKey, key: str) -> None:
        keys = self.contested.get(k)
        if keys is None:
            del self.claims[k]
            return
        keys.remove(key)
        self.claims[k] = keys[0]
        if len(keys) < 2:
            del self.contested[k]

    def winner(self, k: IpKey) -> Destination | None:
        key = self.claims.get(k)
        return None if key is None else self.dests[key]

    def skipped(self) -> Iterable[Skipped]:
        for key, why in self.errors.items():
            yield Skipped("destination", f"{self.vpc}/{key}", why)
        for keys in self.contested.values():
            first = self.dests[keys[0]]
            for key in keys[1:]:
                why = f"ip: {first.ip} already belongs to {first.name}"
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


class _DestUnit:
    """The flows one destination address owns in one role, in compile order.

    One object per peer endpoint, and the holder of its flows' keys in the engine's table:
    its rank is derived (the role's rank, then the address), not kept in a tuple per flow
    (a candidate tuple per flow and a rank per unit were ~14 MiB at 50k peer endpoints)."""

    __slots__ = ("base", "flows", "k")

    def __init__(self, base: Rank, k: IpKey, flows: tuple[Flow, ...]) -> None:
        self.base = base
        self.k = k
        self.flows = flows


Holder = Candidate | _DestUnit  # who holds a key: a context unit's candidate, or a destination


def _place(unit: _DestUnit, key: FlowKey) -> int:
    """Where the unit's flow at ``key`` is among its flows."""
    for n, f in enumerate(unit.flows):
        if f.key == key:
            return n
    raise KeyError(key)


def _flow_of(h: Holder, key: FlowKey) -> Flow:
    if type(h) is tuple:
        return h[2]
    assert isinstance(h, _DestUnit)
    return h.flows[_place(h, key)]


def _order(h: Holder, key: FlowKey) -> tuple[Rank, int]:
    """Where ``h``'s flow at ``key`` comes in compile order: the first one wins the key."""
    if type(h) is tuple:
        return h[0], h[1]
    assert isinstance(h, _DestUnit)
    return (*h.base, h.k), _place(h, key)


class FlowEngine:
    """The desired flows and groups of one host, kept up to date unit by unit."""

    def __init__(self, underlay_ip: str, role: HostRole = DEFAULT_ROLE) -> None:
        self.underlay_ip = underlay_ip
        self.role = role  # a gateway's flows are its relays (docs/gateways.md)
        self.streams: dict[Sub, dict[str, Any]] = {}
        self.ofports: Mapping[tuple[str, str], int] | None = None
        self.tunnel_port: int | None = None
        self.bfd_ports: Mapping[str, int] = {}  # gateway IP -> its BFD port (docs/gateways.md)
        self.gateways: frozenset[str] = frozenset()  # the gateways the view sends through
        self.offload = Offload()  # on-demand sides: what goes direct (ohc/offload.py)
        self.on_demand: dict[int, tuple[str, str]] = {}  # pair-counter cookie -> its side
        self.indexes: dict[IndexKey, DestIndex] = {}
        self.roles: dict[RoleKey, _Role] = {}
        self.dest_units: dict[RoleKey, dict[IpKey, _DestUnit]] = {}
        self.local: dict[tuple[str, Address], LocalPort] = {}
        # VIPs the load-balancer streams claim, valid or not, per (VPC, policy): a destination
        # taking or freeing one decides whether that load balancer is valid (``_rebuild``)
        self.vips: dict[tuple[str, str | None], set[IpKey]] = {}
        self.view_skipped: tuple[Skipped, ...] = ()
        self.units: dict[UnitId, Candidates] = {}  # infra and the VPC contexts
        self.unit_groups: dict[UnitId, dict[int, Group]] = {}
        self.table: dict[FlowKey, Holder] = {}  # the winner of each key
        self.more: dict[FlowKey, list[Holder]] = {}  # every holder, for contested keys only
        self.groups: dict[int, Group] = {}
        self._old: dict[FlowKey, Flow | None] = {}
        self._gids: set[int] = set()
        self._compiled = 0
        self._rebuilt = False  # the update under way rebuilt the VPC contexts
        self._touched: list[FlowKey] | None = None  # keys changed, while first_update runs
        self.fresh = True  # no update yet (``first_update``)
        self.last_update: Update | None = None  # what the last ``first_update`` changed
        self.shared: SharedPairs = {}  # match pairs many flows hold (compiler._Out)
        self._set_unit(("infra",), self._events((0,), infra_flows), {})

    # --- reading -----------------------------------------------------------------------

    def flow(self, key: FlowKey) -> Flow | None:
        have = self.table.get(key)
        if have is None:
            return CANARY if key == CANARY.key else None  # as ``state`` has it
        return _flow_of(have, key)

    def state(self) -> SwitchState:
        """Every desired flow (with the canary) and group: what a full sync diffs against."""
        flows = frozenset(itertools.chain(self._flows(), (CANARY,)))
        return SwitchState(flows, frozenset(self.groups.values()))

    def _flows(self) -> Iterable[Flow]:
        for h in self.table.values():
            if type(h) is tuple:
                yield h[2]
        for units in self.dest_units.values():
            for unit in units.values():
                for f in unit.flows:
                    if self.table[f.key] is unit:
                        yield f

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
        bfd_ports: Mapping[str, int] | None = None,
        offload: Offload | None = None,
    ) -> Update:
        """Take ``changes`` (and the switch's ports, BFD ports and offloaded pairs) in; what
        that changed."""
        work = self._prepare(changes, ofports, tunnel_port, bfd_ports, offload)
        for rk, role, ip in work:
            self._compile_dest(rk, role, ip)
        return self._finish(self._rebuilt)

    def first_update(
        self,
        changes: Mapping[Sub, StreamChange],
        ofports: Mapping[tuple[str, str], int],
        tunnel_port: int | None,
        bfd_ports: Mapping[str, int] | None = None,
        offload: Offload | None = None,
        *,
        every: int,
    ) -> Iterator[list[tuple[FlowKey, Flow | None]]]:
        """``update`` of a fresh engine, in pieces, so that a first sync can send the flows
        while the rest compiles (``session.SwitchSession.first_sync``): first every flow the
        contexts hold (``groups`` is then final), then, every ``every`` destination units,
        the winners of the keys those units changed (a later piece may give a key sent
        before another flow: a contested address). ``last_update`` then holds the Update."""
        if not self.fresh:
            raise ValueError("first_update needs a fresh engine")
        self.last_update = None
        work = self._prepare(changes, ofports, tunnel_port, bfd_ports, offload)
        try:
            yield [(k, _flow_of(h, k)) for k, h in self.table.items()]
            self._touched = []
            for n, (rk, role, ip) in enumerate(work, 1):
                self._compile_dest(rk, role, ip)
                if n % every == 0:
                    yield self._taken()
            yield self._taken()
        finally:
            self._touched = None
        self.last_update = self._finish(self._rebuilt)

    def _taken(self) -> list[tuple[FlowKey, Flow | None]]:
        """The keys changed since the last piece, each with its winner (None: it went)."""
        touched, self._touched = self._touched or [], []
        return [(k, self.flow(k)) for k in dict.fromkeys(touched)]

    def _prepare(
        self,
        changes: Mapping[Sub, StreamChange],
        ofports: Mapping[tuple[str, str], int],
        tunnel_port: int | None,
        bfd_ports: Mapping[str, int] | None,
        offload: Offload | None,
    ) -> Iterator[tuple[RoleKey, _Role, IpKey]]:
        """Everything but the destination units, which are left to compile: the caller
        compiles each (role, address) the returned iterator gives."""
        self._gids, self._old, self._compiled = set(), {}, 0
        self.fresh = False
        bfd = dict(bfd_ports or {})
        offload = offload or Offload()
        rebuild = (
            self.ofports != ofports
            or self.tunnel_port != tunnel_port
            or self.bfd_ports != bfd
            or self.offload != offload
            or not self.roles
        )
        self.ofports, self.tunnel_port, self.bfd_ports = dict(ofports), tunnel_port, bfd
        self.offload = offload
        if self.role == "gateway":
            self._relay(changes)
            self._rebuilt = False
            return iter(())
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
        self._rebuilt = rebuild
        return self._dest_work(redo)

    def _dest_work(self, redo: dict[RoleKey, set[IpKey]]) -> Iterator[tuple[RoleKey, _Role, IpKey]]:
        for rk, ips in redo.items():
            role = self.roles[rk]
            if ips is _ALL:
                ips = set(self.indexes[role.index].claims) | set(self.dest_units.get(rk, ()))
            for ip in ips:
                yield rk, role, ip

    def _finish(self, rebuild: bool) -> Update:
        """What the update changed. A unit compiled again gives back and takes its keys:
        those that hold what they held did not change."""
        table = self.table
        old = {
            k: f
            for k, f in self._old.items()
            if (k in table if f is None else self.flow(k) != f)  # None: was absent
        }
        update = Update(frozenset(old), frozenset(self._gids), self._compiled, rebuild, old)
        self._gids, self._old = set(), {}  # not kept: 100k keys after a cold install
        return update

    def _relay(self, changes: Mapping[Sub, StreamChange]) -> None:
        """A gateway host: its relay flows, compiled whole from every stream it follows (not
        yet per destination: docs/gateways.md, what is left)."""
        for sub, change in changes.items():
            self._apply(sub, change)
        view, self.view_skipped = host.gateway_view(
            self.underlay_ip, self.streams, self.tunnel_port
        )
        self._set_unit(("relay",), self._events((2,), relay_all, view), {})

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
            bfd_ports=self.bfd_ports,
            offload=self.offload,
        )
        self.gateways = gateway_ips(view)
        self.on_demand = {
            offload_cookie(p.vpc, p.peer_vpc): (p.vpc, p.peer_vpc)
            for p in view.peers
            if p.on_demand
        }
        groups = assign_groups(view, view.vpc_vni())
        roles: dict[RoleKey, _Role] = {}
        ctx_units = set()
        for ctx in contexts(view):
            ctx_units.add(("ctx", ctx.vpc))
            self._compile_ctx(ctx, groups)
            own: IndexKey = (ctx.vpc, None, ctx.vni)
            roles[(ctx.vpc, None)] = _Role(ctx, None, own, (1, ctx.vpc, 2), dest_context(ctx, None))
            for pos, peer in enumerate(ctx.peers):
                if peer.via_gateways and not peer.on_demand:
                    continue  # no flow per peer endpoint (docs/gateways.md)
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
            for unit in self.dest_units.pop(rk, {}).values():
                self._set_dest(unit, None)
        for rk, role in roles.items():
            old = self.roles.get(rk)
            if old is None or old.context != role.context or old.index != role.index:
                redo[rk] = _ALL
            else:
                redo[rk] = {ip_key(ip) for vpc, ip in moved if vpc == role.source}
                if role.peer is not None and old.peer is not None:  # on-demand: offloaded
                    redo[rk].update(map(ip_key, role.peer.offloaded ^ old.peer.offloaded))
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
        out += self._events((1, vpc, 5), route_flows, ctx, groups, got=got)
        self._set_unit(("ctx", vpc), out, got)

    def _compile_dest(self, rk: RoleKey, role: _Role, k: IpKey) -> None:
        d = self.indexes[role.index].winner(k)
        units = self.dest_units.setdefault(rk, {})
        old = units.get(k)
        flows = (
            () if d is None else _record(dest_flows, role.ctx, d, role.peer, shared=self.shared)[0]
        )
        if old is not None and old.flows == flows and old.base == role.rank:
            self._compiled += 1
            return
        new = _DestUnit(role.rank, k, flows) if flows else None
        if new is None:
            units.pop(k, None)
        else:
            units[k] = new
        self._set_dest(old, new)

    def _set_dest(self, old: _DestUnit | None, new: _DestUnit | None) -> None:
        """Replace one destination unit: ``old``'s keys given back, ``new``'s taken."""
        self._compiled += 1
        if old is not None:
            for f in old.flows:
                self._withdraw(old, f)
        if new is not None:
            for f in new.flows:
                self._claim(new, f)

    def _events(
        self, rank: Rank, fn: Any, *args: Any, got: dict[int, Group] | None = None
    ) -> Candidates:
        return _events(rank, fn, *args, got=got, shared=self.shared)

    # --- the table ---------------------------------------------------------------------

    def _set_unit(self, uid: UnitId, new: Candidates, groups: dict[int, Group]) -> None:
        """Replace what unit ``uid`` claims; keys whose winner changes go into ``_old``."""
        self._compiled += 1
        old = self.units.pop(uid, [])
        if old != new:
            kept = set(new)
            for cand in old:
                if cand not in kept:
                    self._withdraw(cand, cand[2])
            had = set(old)
            for cand in new:
                if cand not in had:
                    self._claim(cand, cand[2])
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
        self._old.setdefault(key, old)  # the first one: what it had when the update began
        if self._touched is not None:
            self._touched.append(key)

    def _claim(self, h: Holder, flow: Flow) -> None:
        """``h`` puts ``flow`` at its key: it holds the key if it comes first."""
        key = flow.key
        have = self.table.get(key)
        if have is None:
            self.table[key] = h
            self._changed(key, None)
            return
        more = self.more.setdefault(key, [have])
        more.append(h)
        if _order(h, key) < _order(have, key):
            self.table[key] = h
            was = _flow_of(have, key)
            if flow != was:
                self._changed(key, was)

    def _withdraw(self, h: Holder, flow: Flow) -> None:
        """``h`` gives back ``flow``'s key: the next holder in compile order takes it."""
        key = flow.key
        more = self.more.get(key)
        if more is None:
            del self.table[key]
            self._changed(key, flow)
            return
        more.remove(h)  # candidates by value (one per unit and rank), units by identity
        best = min(more, key=lambda c: _order(c, key))
        if len(more) == 1:
            del self.more[key]
        if _same(self.table[key], h):
            self.table[key] = best
            now = _flow_of(best, key)
            if now != flow:
                self._changed(key, flow)


_ALL: Any = object()  # in a redo map: every unit of the role


def _same(a: Holder, b: Holder) -> bool:
    return a is b or (type(a) is tuple and a == b)


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
    """Run one compiler step: its flows, each ranked by ``rank`` and its place in the step;
    its groups go into ``got``."""
    flows, groups = _record(fn, *args, shared=shared)
    if got is not None:
        got.update(groups)
    return [(rank, n, flow) for n, flow in enumerate(flows)]


def _record(fn: Any, *args: Any, shared: SharedPairs) -> tuple[tuple[Flow, ...], dict[int, Group]]:
    """Run one compiler step into a recorder: its flows in order, the first of each key only
    (it wins the key within a step, as in a full compile), and its groups. Notes are the
    reference compiler's; the engine drops them."""
    rec = Recorder(shared)
    fn(rec, *args)
    out: list[Flow] = []
    seen: set[FlowKey] = set()
    for e in rec.events:
        if isinstance(e, str):
            continue
        flow = e[0]
        if flow.key not in seen:
            seen.add(flow.key)
            out.append(flow)
    return tuple(out), rec.groups
