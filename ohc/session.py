"""One OHC's switch: what it wants there (the engine) and what it believes is there (the model).

The app (``ohc/app.py``) feeds stream changes in and calls ``sync`` once per trigger; this
module decides what a sync sends:

- no model (first connect, a reconnect, a lost canary, an error): read the switch back and diff
  the engine's whole state against it (``ofio.sync``, the reference path);
- otherwise only the keys the engine says changed (``syncer.plan_keys``), against the model;
- while a followed stream has not delivered (``complete`` false): add and change, delete
  nothing (fail static), and remember that the model holds flows the engine may not want; the
  next complete sync diffs everything against the model once.

``next_plan`` is pure (desired and model in, plan out); ``sync`` adds the I/O through ``ofio``.
What is desired is any ``Desired``: the OHC's ``FlowEngine``, or a fixed state that a test app
loads from a file (tests/integration/apps/syncer_app.py), so both sync the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ohc import ofio
from ohc.engine import FlowEngine, Update
from ohc.flows import Flow, Group
from ohc.syncer import (
    CANARY,
    FlowKey,
    SwitchModel,
    SwitchState,
    SyncPlan,
    plan,
    plan_keys,
)

FIRST_PIECE = 1000  # destination units compiled per piece of a streamed first sync


class Desired(Protocol):
    """What a switch should hold: every flow and group at once, or one flow by key."""

    @property
    def groups(self) -> Mapping[int, Group]: ...

    def state(self) -> SwitchState: ...

    def flow(self, key: FlowKey) -> Flow | None: ...


@dataclass(frozen=True)
class Synced:
    """One sync: what was sent and where the time went."""

    plan: SyncPlan
    read_s: float
    plan_s: float
    send_s: float
    read_unmatched: int | None  # a read-back's installed flows that were not desired ones
    canary_was_present: bool | None = None  # after a read-back: False if the switch lost all
    compile_s: float | None = None  # a first sync's (``first_sync``): the engine's time
    streamed: bool = False  # the engine compiled while the switch took the bundle (send_s)


class SwitchSession:
    def __init__(self, desired: Desired) -> None:
        self.desired = desired
        self.installed: SwitchModel | None = None  # None: read the switch back next time
        self.stale = False  # the model may hold flows not desired (fail static)
        self.bundle_id = 0

    def next_plan(self, update: Update, complete: bool) -> SyncPlan:
        """The steps for what ``update`` changed, against the model (which must exist)."""
        assert self.installed is not None
        if self.stale and complete:
            self.stale = False
            return plan(self.desired.state(), self.installed.state())
        the_plan = plan_keys(
            self.desired.flow,
            self.desired.groups,
            self.installed,
            update.flow_keys,
            update.group_ids,
        )
        if complete or not (the_plan.flow_deletes or the_plan.group_deletes):
            return the_plan
        self.stale = True
        return the_plan.without_deletes()

    def sync(
        self,
        replies: ofio.Replies,
        datapath: Any,
        update: Update,
        complete: bool,
        offload: Callable[..., Any] = ofio.inline,
    ) -> Synced:
        """Send what ``update`` changed (or, with no model, the difference from a read-back) in
        one bundle. On any error the model is dropped: the next sync reads the switch back."""
        self.bundle_id += 1
        try:
            if self.installed is None:
                wanted = self.desired.state()
                result = ofio.sync(
                    replies,
                    datapath,
                    wanted,
                    self.bundle_id,
                    None,
                    keep_extra=not complete,
                    offload=offload,
                )
                self.installed = SwitchModel.relative(self.desired, wanted, result.installed)
                self.stale = not complete
                return Synced(
                    result.plan,
                    result.read_s,
                    result.plan_s,
                    result.send_s,
                    result.read_unmatched,
                    result.canary_was_present,
                )
            t0 = time.monotonic()
            self.installed.absorb(update.old)
            the_plan = self.next_plan(update, complete)
            t1 = time.monotonic()
            ofio.send_plan(replies, datapath, the_plan, self.bundle_id, offload=offload)
            self.installed.apply(the_plan)
            return Synced(the_plan, 0.0, t1 - t0, time.monotonic() - t1, None)
        except Exception:
            self.installed = None
            raise

    def first_sync(
        self,
        replies: ofio.Replies,
        datapath: Any,
        engine: FlowEngine,
        changes: Mapping[Any, Any],
        inputs: tuple[Any, ...],
        complete: bool,
        offload: Callable[..., Any] = ofio.inline,
    ) -> tuple[Update, Synced]:
        """A fresh engine's first update and sync (the OHC's start, or after an error);
        ``inputs`` are ``FlowEngine.update``'s after the changes.

        The switch is read back first, unparsed. An empty switch (a new host, an OVS that lost
        its flows) gets the bundle while the engine compiles (``FlowEngine.first_update``): it
        takes piece k on the other core while piece k+1 compiles (measured in
        docs/benchmarks.md). Otherwise the engine compiles whole and the read-back is matched
        against it (``ofio.sync``: a restart with 100k flows installed parses none)."""
        assert engine is self.desired
        self.bundle_id += 1
        try:
            t0 = time.monotonic()
            raw = ofio.read_raw(replies, datapath)
            pieces = engine.first_update(changes, *inputs, every=FIRST_PIECE)
            if not raw.empty:
                tc = time.monotonic()
                offload(_drain, pieces)
                compile_s = time.monotonic() - tc
                wanted = engine.state()
                installed, unmatched = offload(raw.state, datapath, wanted.flows)
                t1 = time.monotonic()
                result = ofio.sync(
                    replies, datapath, wanted, self.bundle_id, installed,
                    keep_extra=not complete, offload=offload,
                )  # fmt: skip
                self.installed = SwitchModel.relative(engine, wanted, result.installed)
                self.stale = not complete
                synced = Synced(
                    result.plan, t1 - t0 - compile_s, result.plan_s, result.send_s, unmatched,
                    CANARY in installed.flows, compile_s,
                )  # fmt: skip
            else:
                t1 = time.monotonic()
                streamed = self._stream(replies, datapath, engine, pieces, offload)
                synced = Synced(
                    streamed.plan(), t1 - t0, 0.0, time.monotonic() - t1, 0, False,
                    streamed.compile_s, streamed=True,
                )  # fmt: skip
            assert engine.last_update is not None
            return engine.last_update, synced
        except Exception:
            self.installed = None
            raise

    def _stream(
        self,
        replies: ofio.Replies,
        datapath: Any,
        engine: FlowEngine,
        pieces: Iterator[list[tuple[FlowKey, Flow | None]]],
        offload: Callable[..., Any],
    ) -> _StreamPlan:
        """Send each piece to the empty switch as it compiles, and commit: the model follows.
        The switch held nothing, so nothing is deleted and nothing is left stale."""
        stream = ofio.BundleStream(replies, datapath, self.bundle_id)
        streamed = _StreamPlan(engine)
        pending: list[Any] = []
        try:
            while True:
                made = offload(streamed.next_messages, stream, pieces, pending)
                stream.send(pending)
                if made is None:
                    break
                steps, pending = made
                stream.number(pending, steps)
            stream.commit()
        except BaseException:
            stream.abandon()
            raise
        self.installed, self.stale = streamed.model(), False
        return streamed


def _drain(pieces: Iterator[Any]) -> None:
    for _ in pieces:
        pass


class _StreamPlan:
    """What a streamed first sync sends to an empty switch, piece by piece; the plan and the
    model of the switch once it committed."""

    def __init__(self, engine: FlowEngine) -> None:
        self.engine = engine
        self.sent: dict[FlowKey, Flow | None] = {}  # what each key sent holds now (None: deleted)
        self.first = True
        self.compile_s = 0.0

    def next_messages(
        self,
        stream: ofio.BundleStream,
        pieces: Iterator[list[tuple[FlowKey, Flow | None]]],
        pending: list[Any],
    ) -> tuple[list[tuple[ofio.Command, Flow | Group]], list[Any]] | None:
        """Off the hub: pack the numbered ``pending`` messages, compile the next piece, and
        return its steps and (unnumbered) messages; None when the engine is done. A key sent
        before comes back when a later unit won it (a contested address): in an ordered bundle
        the later message replaces the earlier one."""
        stream.pack(pending)
        t0 = time.monotonic()
        piece = next(pieces, None)
        self.compile_s += time.monotonic() - t0
        if piece is None:
            return None
        steps: list[tuple[ofio.Command, Flow | Group]] = []
        if self.first:  # the groups first: flows output to them
            self.first = False
            piece.append((CANARY.key, CANARY))
            steps += [("add", g) for _, g in sorted(self.engine.groups.items())]
        for key, flow in piece:
            prev = self.sent.get(key)
            if flow == prev:
                continue
            self.sent[key] = flow
            if flow is None:
                assert prev is not None
                steps.append(("delete", prev))
            else:
                same_cookie = prev is not None and prev.cookie == flow.cookie
                steps.append(("modify" if same_cookie else "add", flow))
        return steps, stream.messages(steps)

    def plan(self) -> SyncPlan:
        """What was sent, net, as a plan (the OHC reports its counts)."""
        return SyncPlan(
            group_adds=tuple(g for _, g in sorted(self.engine.groups.items())),
            flow_adds=tuple(f for f in self.sent.values() if f is not None),
        )

    def model(self) -> SwitchModel:
        """The switch after the commit, relative to the engine: exactly what it wants."""
        count = sum(f is not None for f in self.sent.values())
        return SwitchModel({}, dict(self.engine.groups), self.engine, count)
