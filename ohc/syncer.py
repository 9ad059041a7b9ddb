"""The flow syncer's pure core: diff desired against installed switch state into one ordered plan.

OVN's ``ofctrl.c`` in miniature. The caller gives two states (flows and groups, as
``ohc.flows`` values): what the compiler wants (``desired``) and what the switch holds
(``installed``, read back from it on every (re)connect). ``plan`` returns the difference as
ordered steps that one OpenFlow bundle applies atomically (``ohc.ofio.send_plan``):

1. group adds            (before any flow that outputs to them)
2. group modifies
3. flow adds             (keys, i.e. (table, priority, match), not installed)
4. flow modifies         (same key, other instructions or cookie)
5. flow deletes (strict) (installed keys not desired)
6. group deletes         (last: no remaining flow references them)

Nothing is ever flushed, and flows whose key and content already match are not touched, so
their counters and ``duration`` survive a controller restart. ``SyncPlan.apply_to`` models the
result on a state, which is what the invariant tests use: after any sequence of plans the
modelled installed state equals the latest desired state (OVN's CHECK_FLOWS_AFTER_RECOMPUTE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ohc.flows import Apply, Flow, Group, Match, ToGroup

FlowKey = tuple[int, int, Match]
StepKind = Literal[
    "group_add", "group_modify", "flow_add", "flow_modify", "flow_delete", "group_delete"
]
STEP_KINDS: tuple[StepKind, ...] = (
    "group_add",
    "group_modify",
    "flow_add",
    "flow_modify",
    "flow_delete",
    "group_delete",
)


class FlowState(Protocol):
    """Anything with a set of flows and a set of groups (desired or installed)."""

    @property
    def flows(self) -> frozenset[Flow]: ...

    @property
    def groups(self) -> frozenset[Group]: ...


@dataclass(frozen=True)
class SwitchState:
    """A plain FlowState: a switch's (or the compiler's) flows and groups."""

    flows: frozenset[Flow] = frozenset()
    groups: frozenset[Group] = frozenset()
    # flows by key, when already known (``SyncPlan.apply_to`` hands its own on); else built once
    _index: Mapping[FlowKey, Flow] | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def of(flows: Iterable[Flow] = (), groups: Iterable[Group] = ()) -> SwitchState:
        return SwitchState(frozenset(flows), frozenset(groups))

    @property
    def by_key(self) -> Mapping[FlowKey, Flow]:
        """The flows by key: plans against an installed state look keys up here."""
        if self._index is None:
            object.__setattr__(self, "_index", flows_by_key(self.flows))
        assert self._index is not None
        return self._index


def _by_key(state: FlowState) -> Mapping[FlowKey, Flow]:
    return state.by_key if isinstance(state, SwitchState) else flows_by_key(state.flows)


class PlanError(ValueError):
    """A state that cannot be synced (two flows share a key), or a plan that does not fit."""


@dataclass(frozen=True)
class FlowChange:
    """A flow whose key is installed but whose instructions or cookie differ."""

    old: Flow
    new: Flow

    @property
    def cookie_changed(self) -> bool:
        """OpenFlow's MODIFY keeps the cookie: a cookie change must be sent as ADD (replace)."""
        return self.old.cookie != self.new.cookie


@dataclass(frozen=True)
class SyncPlan:
    """The ordered difference between two states; fields are in the order they must be sent."""

    group_adds: tuple[Group, ...] = ()
    group_modifies: tuple[Group, ...] = ()
    flow_adds: tuple[Flow, ...] = ()
    flow_modifies: tuple[FlowChange, ...] = ()
    flow_deletes: tuple[Flow, ...] = ()
    group_deletes: tuple[Group, ...] = ()

    @property
    def empty(self) -> bool:
        return len(self) == 0

    def without_deletes(self) -> SyncPlan:
        """The same plan minus flow and group deletes (adds and modifies only)."""
        return dataclasses.replace(self, flow_deletes=(), group_deletes=())

    def __len__(self) -> int:
        return sum(self.counts.values())

    @property
    def counts(self) -> Mapping[StepKind, int]:
        return {
            "group_add": len(self.group_adds),
            "group_modify": len(self.group_modifies),
            "flow_add": len(self.flow_adds),
            "flow_modify": len(self.flow_modifies),
            "flow_delete": len(self.flow_deletes),
            "group_delete": len(self.group_deletes),
        }

    def steps(self) -> Iterator[tuple[StepKind, Flow | Group]]:
        """Every step in send order; a modify yields the new flow."""
        yield from (("group_add", g) for g in self.group_adds)
        yield from (("group_modify", g) for g in self.group_modifies)
        yield from (("flow_add", f) for f in self.flow_adds)
        yield from (("flow_modify", c.new) for c in self.flow_modifies)
        yield from (("flow_delete", f) for f in self.flow_deletes)
        yield from (("group_delete", g) for g in self.group_deletes)

    def apply_to(self, installed: FlowState) -> SwitchState:
        """The state a switch holding ``installed`` is left in after this plan commits.

        Strict: a step that does not fit ``installed`` (adding what exists, changing or
        deleting what does not) raises PlanError, so the model catches planning bugs that a
        forgiving switch would hide.
        """
        if not (self.flow_adds or self.flow_modifies or self.flow_deletes):
            model = SwitchModel({}, {g.group_id: g for g in installed.groups})
            model.apply(self)
            return SwitchState(installed.flows, frozenset(model.groups.values()))
        model = SwitchModel.of(installed)  # a copy: ``installed`` is left as it was
        model.apply(self)
        return model.state()

    def summary(self) -> str:
        return ", ".join(f"{n} {k}" for k, n in self.counts.items() if n) or "nothing to do"


class Base(Protocol):
    """A desired state a model can be kept relative to (``ohc.session.Desired``)."""

    def state(self) -> SwitchState: ...

    def flow(self, key: FlowKey) -> Flow | None: ...


_SAME: Any = object()  # in a relative model: the switch holds what the base wants


class SwitchModel:
    """What the OHC believes the switch holds, changed in place by each committed plan, so
    that a sync of k changes costs O(k) however many flows are installed.

    Plain (no ``base``): ``flows`` is every installed flow by key. Relative to a ``base``
    (the desired state the switch is synced to): ``flows`` holds only the keys where the
    switch differs from it (None: no flow there). After a sync that sent everything it is
    empty and the model costs nothing per flow (a full copy beside the engine's table was
    10 MiB at 50k peer endpoints). The base changes under it: before each plan, ``absorb``
    takes the flows that the base's changed keys had before the change."""

    def __init__(
        self,
        flows: dict[FlowKey, Flow | None],
        groups: dict[int, Group],
        base: Base | None = None,
        count: int | None = None,
    ) -> None:
        self.flows = flows
        self.groups = groups
        self.base = base
        self.count = len(flows) if count is None else count  # flows on the switch

    @staticmethod
    def of(state: FlowState) -> SwitchModel:
        return SwitchModel(dict(_by_key(state)), {g.group_id: g for g in state.groups})

    @staticmethod
    def relative(base: Base, wanted: FlowState, installed: FlowState) -> SwitchModel:
        """``installed``, kept relative to ``base`` whose state is ``wanted``."""
        differs: dict[FlowKey, Flow | None] = {f.key: None for f in wanted.flows - installed.flows}
        differs.update((f.key, f) for f in installed.flows - wanted.flows)
        groups = {g.group_id: g for g in installed.groups}
        return SwitchModel(differs, groups, base, len(installed.flows))

    def flow(self, key: FlowKey) -> Flow | None:
        """The flow the switch holds at ``key``."""
        if self.base is None:
            return self.flows.get(key)
        have = self.flows.get(key, _SAME)
        return self.base.flow(key) if have is _SAME else have

    def absorb(self, old: Mapping[FlowKey, Flow | None]) -> None:
        """The base changed: ``old`` has the flow each changed key had before."""
        base = self.base
        if base is not None:
            for key, flow in old.items():
                have = self.flows.get(key, flow)  # installed: its entry, else what base had
                # no entry where the switch holds what the base now wants (a flow that only
                # moved within its unit, a key changed back): the model stays as small as
                # the difference
                if have == base.flow(key):
                    self.flows.pop(key, None)
                else:
                    self.flows[key] = have

    def state(self) -> SwitchState:
        if self.base is None:
            flows = {k: f for k, f in self.flows.items() if f is not None}
        else:
            flows = dict(self.base.state().by_key)
            for k, f in self.flows.items():
                if f is None:
                    flows.pop(k, None)
                else:
                    flows[k] = f
        # a new index: the one handed on must not change with the model
        return SwitchState(frozenset(flows.values()), frozenset(self.groups.values()), flows)

    def _put(self, key: FlowKey, flow: Flow | None) -> None:
        if self.base is None:
            if flow is None:
                del self.flows[key]
            else:
                self.flows[key] = flow
        elif self.base.flow(key) == flow:
            self.flows.pop(key, None)
        else:
            self.flows[key] = flow

    def apply(self, the_plan: SyncPlan) -> None:
        """Strict, as ``SyncPlan.apply_to``: a step that does not fit raises PlanError (and
        leaves the model half changed: the caller reads the switch back)."""
        groups = self.groups
        for g in the_plan.group_adds:
            if g.group_id in groups:
                raise PlanError(f"group add of existing group {g.group_id}")
            groups[g.group_id] = g
        for g in the_plan.group_modifies:
            if g.group_id not in groups:
                raise PlanError(f"group modify of missing group {g.group_id}")
            groups[g.group_id] = g
        for f in the_plan.flow_adds:
            if self.flow(f.key) is not None:
                raise PlanError(f"flow add of an installed key: {f.text()}")
            self._put(f.key, f)
            self.count += 1
        for c in the_plan.flow_modifies:
            if self.flow(c.old.key) != c.old or c.new.key != c.old.key:
                raise PlanError(f"flow modify does not fit: {c.old.text()} -> {c.new.text()}")
            self._put(c.new.key, c.new)
        for f in the_plan.flow_deletes:
            if self.flow(f.key) is None:
                raise PlanError(f"flow delete of a missing key: {f.text()}")
            self._put(f.key, None)
            self.count -= 1
        for g in the_plan.group_deletes:
            if groups.pop(g.group_id, None) is None:
                raise PlanError(f"group delete of missing group {g.group_id}")


def plan_keys(
    flow: Callable[[FlowKey], Flow | None],
    groups: Mapping[int, Group],
    model: SwitchModel,
    keys: Iterable[FlowKey],
    group_ids: Iterable[int],
) -> SyncPlan:
    """``plan`` restricted to ``keys`` and ``group_ids``, the only ones that may differ (the
    incremental engine says which): O(changes), not O(installed). ``flow`` gives the desired
    flow of a key (None: not desired)."""
    adds: list[Flow] = []
    changes: list[FlowChange] = []
    deletes: list[Flow] = []
    for k in keys:
        want, have = flow(k), model.flow(k)
        if want == have:
            continue
        if have is None:
            assert want is not None
            adds.append(want)
        elif want is None:
            deletes.append(have)
        else:
            changes.append(FlowChange(have, want))
    wanted = [(groups.get(i), model.groups.get(i)) for i in set(group_ids)]
    return SyncPlan(
        group_adds=_groups_sorted(w for w, h in wanted if w is not None and h is None),
        group_modifies=_groups_sorted(
            w for w, h in wanted if w is not None and h is not None and w != h
        ),
        flow_adds=tuple(sorted(adds, key=_flow_order)),
        flow_modifies=tuple(sorted(changes, key=lambda c: _flow_order(c.new))),
        flow_deletes=tuple(sorted(deletes, key=_flow_order)),
        group_deletes=_groups_sorted(h for w, h in wanted if w is None and h is not None),
    )


def flows_by_key(flows: Iterable[Flow]) -> dict[FlowKey, Flow]:
    """Flows indexed by (table, priority, match); two flows with one key is a PlanError."""
    out: dict[FlowKey, Flow] = {}
    for f in flows:
        other = out.setdefault(f.key, f)
        if other is not f and other != f:
            raise PlanError(f"two flows share a key:\n  {other.text()}\n  {f.text()}")
    return out


def _flow_order(f: Flow) -> tuple[int, int]:
    # By table and priority only: the order inside a bundle does not matter to OVS, and a
    # total order (on the match's repr) cost 0.3 s of a 100k-flow first sync (measured).
    return f.table, -f.priority


def plan(desired: FlowState, installed: FlowState) -> SyncPlan:
    """The steps that turn ``installed`` into ``desired``; empty when they are equal.

    Works on the two set differences, so a sync that changes k of N flows costs O(k) dict
    work after two C-level set differences (flows cache their hash), not O(N) indexing.
    """
    want_groups = {g.group_id: g for g in desired.groups}
    have_groups = {g.group_id: g for g in installed.groups}
    if len(want_groups) != len(desired.groups):
        raise PlanError("two desired groups share a group id")
    want = flows_by_key(desired.flows - installed.flows)
    have = flows_by_key(installed.flows - desired.flows)
    installed_keys = _by_key(installed) if want else {}  # indexing 100k flows: ~0.3 s
    for k, f in want.items():
        if k not in have and k in installed_keys:  # the installed flow there is desired too
            raise PlanError(f"two flows share a key:\n  {installed_keys[k].text()}\n  {f.text()}")
    changes = [FlowChange(have[k], f) for k, f in want.items() if k in have]
    return SyncPlan(
        group_adds=_groups_sorted(g for i, g in want_groups.items() if i not in have_groups),
        group_modifies=_groups_sorted(
            g for i, g in want_groups.items() if i in have_groups and have_groups[i] != g
        ),
        flow_adds=tuple(sorted((f for k, f in want.items() if k not in have), key=_flow_order)),
        flow_modifies=tuple(sorted(changes, key=lambda c: _flow_order(c.new))),
        flow_deletes=tuple(sorted((f for k, f in have.items() if k not in want), key=_flow_order)),
        group_deletes=_groups_sorted(g for i, g in have_groups.items() if i not in want_groups),
    )


def _groups_sorted(groups: Iterable[Group]) -> tuple[Group, ...]:
    return tuple(sorted(groups, key=lambda g: g.group_id))


def group_references(flows: Iterable[Flow]) -> frozenset[int]:
    """Group ids the flows output to (a desired state must define every one of them)."""
    return frozenset(
        a.group_id
        for f in flows
        for i in f.instructions
        if isinstance(i, Apply)
        for a in i.actions
        if isinstance(a, ToGroup)
    )


def missing_groups(state: FlowState) -> frozenset[int]:
    """Groups referenced by the state's flows but not defined in it (OVS would reject them)."""
    return group_references(state.flows) - {g.group_id for g in state.groups}


# --- the canary (Neutron's setup_canary_table) ----------------------------------------------------

CANARY_TABLE = 253  # the last table OVS lets controllers write (254 is its read-only internal one)
CANARY_COOKIE = 0x6D70_6361_6E61_7279  # "mpcanary"
CANARY = Flow(CANARY_TABLE, 0, Match(), (), CANARY_COOKIE)


def with_canary(state: FlowState) -> SwitchState:
    """``state`` plus the canary flow: a switch that lost the canary lost everything."""
    return SwitchState(state.flows | {CANARY}, state.groups)


__all__ = [
    "CANARY",
    "CANARY_COOKIE",
    "CANARY_TABLE",
    "STEP_KINDS",
    "FlowChange",
    "FlowKey",
    "FlowState",
    "PlanError",
    "StepKind",
    "SwitchModel",
    "SwitchState",
    "SyncPlan",
    "flows_by_key",
    "group_references",
    "missing_groups",
    "plan",
    "plan_keys",
    "with_canary",
]
