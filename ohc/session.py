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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ohc import ofio
from ohc.engine import Update
from ohc.flows import Flow, Group
from ohc.syncer import FlowKey, SwitchModel, SwitchState, SyncPlan, plan, plan_keys


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
