"""A test os-ken app that keeps br-int equal to a desired state read from a JSON file.

Environment (meshpeer-manager parses its flags before apps are imported, so a test app
takes its settings from the environment):

* ``MESHPEER_SYNC_DESIRED``: the desired state, JSON as written by ``encode_state``. The app
  re-reads it when its mtime changes and applies only the delta (the incremental path: the
  keys that changed, against the app's model of what it installed; nothing is read back). It
  syncs through the OHC's own ``ohc.session.SwitchSession``, with this file as what is desired.
* ``MESHPEER_SYNC_STATUS``: where the app writes its status (JSON, replaced atomically):
  every sync with its reason, plan counts, error and timings.
* ``MESHPEER_SYNC_POLL``: seconds between canary checks and file checks (default 0.5).

On every (re)connect the app reads the installed flows and groups, diffs and sends one
bundle. A missing canary (at connect, or found by the poll) means the switch lost its flows
(an OVS restart): the sync's reason says so.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, ClassVar

import eventlet
import eventlet.queue
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from ohc import ofio
from ohc.canonical import canonical_state
from ohc.engine import Update
from ohc.flows import (
    OFPP_ANY,
    Action,
    Apply,
    Bucket,
    DecTtl,
    Flow,
    Goto,
    Group,
    Instruction,
    Learn,
    Match,
    MatchValue,
    Move,
    Output,
    Resubmit,
    SetField,
    ToGroup,
    WriteMetadata,
)
from ohc.session import SwitchSession
from ohc.syncer import FlowKey, SwitchState, with_canary

# --- JSON form of ohc.flows values (tests only) ---------------------------------------------


def _action_json(a: Action) -> list[Any]:
    if isinstance(a, Output):
        return ["output", a.port]
    if isinstance(a, SetField):
        return ["set_field", a.name, a.value]
    if isinstance(a, ToGroup):
        return ["group", a.group_id]
    if isinstance(a, Move):
        return ["move", a.src, a.dst]
    if isinstance(a, Resubmit):
        return ["resubmit", a.table]
    if isinstance(a, Learn):
        values = [list(v) for v in a.values]
        return ["learn", a.table, a.priority, a.idle_timeout, a.cookie, values, list(a.copy)]
    return ["dec_ttl"]


def _action(j: list[Any]) -> Action:
    kind = j[0]
    if kind == "output":
        return Output(int(j[1]))
    if kind == "set_field":
        return SetField(str(j[1]), j[2])
    if kind == "group":
        return ToGroup(int(j[1]))
    if kind == "dec_ttl":
        return DecTtl()
    if kind == "move":
        return Move(str(j[1]), str(j[2]))
    if kind == "resubmit":
        return Resubmit(int(j[1]))
    if kind == "learn":
        values = tuple((str(k), int(v)) for k, v in j[5])
        return Learn(int(j[1]), int(j[2]), int(j[3]), int(j[4]), values, tuple(j[6]))
    raise ValueError(f"unknown action {j!r}")


def _instruction_json(i: Instruction) -> list[Any]:
    if isinstance(i, Apply):
        return ["apply", [_action_json(a) for a in i.actions]]
    if isinstance(i, Goto):
        return ["goto", i.table]
    return ["write_metadata", i.value, i.mask]


def _instruction(j: list[Any]) -> Instruction:
    if j[0] == "apply":
        return Apply(tuple(_action(a) for a in j[1]))
    if j[0] == "goto":
        return Goto(int(j[1]))
    if j[0] == "write_metadata":
        return WriteMetadata(int(j[1]), int(j[2]))
    raise ValueError(f"unknown instruction {j!r}")


def _value(v: Any) -> MatchValue:
    return (v[0], v[1]) if isinstance(v, list) else v


def encode_state(state: SwitchState) -> str:
    flows = [
        {
            "table": f.table,
            "priority": f.priority,
            "match": [[k, list(v) if isinstance(v, tuple) else v] for k, v in f.match.fields],
            "instructions": [_instruction_json(i) for i in f.instructions],
            "cookie": f.cookie,
        }
        for f in sorted(state.flows, key=lambda f: (f.table, f.priority, repr(f.match)))
    ]
    groups = [
        {
            "group_id": g.group_id,
            "type": g.type,
            "buckets": [
                {
                    "weight": b.weight,
                    "watch_port": b.watch_port,
                    "actions": [_action_json(a) for a in b.actions],
                }
                for b in g.buckets
            ],
        }
        for g in sorted(state.groups, key=lambda g: g.group_id)
    ]
    return json.dumps({"flows": flows, "groups": groups}, indent=0)


def decode_state(text: str) -> SwitchState:
    data = json.loads(text)
    flows = [
        Flow(
            int(f["table"]),
            int(f["priority"]),
            Match(tuple(sorted((str(k), _value(v)) for k, v in f["match"]))),
            tuple(_instruction(i) for i in f["instructions"]),
            int(f["cookie"]),
        )
        for f in data["flows"]
    ]
    groups = [
        Group(
            int(g["group_id"]),
            g["type"],
            tuple(
                Bucket(
                    tuple(_action(a) for a in b["actions"]),
                    int(b["weight"]),
                    int(b.get("watch_port", OFPP_ANY)),
                )
                for b in g["buckets"]
            ),
        )
        for g in data["groups"]
    ]
    return SwitchState.of(flows, groups)


# --- the app -----------------------------------------------------------------------------

# Everything ofio.Replies waits for: errors, barrier and bundle replies, multipart stats.
REPLY_EVENTS = [
    ofp_event.EventOFPErrorMsg,
    ofp_event.EventOFPBarrierReply,
    ofp_event.EventONFBundleCtrlMsg,
    ofp_event.EventOFPFlowStatsReply,
    ofp_event.EventOFPGroupDescStatsReply,
]


class FileDesired:
    """A desired state loaded whole (``ohc.session.Desired``); ``load`` says what changed."""

    def __init__(self) -> None:
        self._state = SwitchState()
        self.groups: dict[int, Group] = {}

    def state(self) -> SwitchState:
        return self._state

    def flow(self, key: FlowKey) -> Flow | None:
        return self._state.by_key.get(key)

    def load(self, state: SwitchState) -> Update:
        old, self._state = self._state, state
        before, after = old.by_key, state.by_key
        keys = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        groups = {g.group_id: g for g in state.groups}
        gids = {
            i for i in self.groups.keys() | groups.keys() if self.groups.get(i) != groups.get(i)
        }
        self.groups = groups
        return Update(frozenset(keys), frozenset(gids), 0, False, {k: before.get(k) for k in keys})


class SyncerApp(app_manager.OSKenApp):  # type: ignore[misc]
    OFP_VERSIONS: ClassVar[list[int]] = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.desired_path = os.environ["MESHPEER_SYNC_DESIRED"]
        self.status_path = os.environ["MESHPEER_SYNC_STATUS"]
        self.poll = float(os.environ.get("MESHPEER_SYNC_POLL", "0.5"))
        self.replies = ofio.Replies()
        self.datapath: Any = None
        self.desired = FileDesired()
        self.session = SwitchSession(self.desired)
        self.desired_mtime = 0.0
        self.busy = False
        self.syncs: list[dict[str, Any]] = []
        self.triggers: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        self.threads.append(hub.spawn(self._worker))
        self.threads.append(hub.spawn(self._poller))

    # Handlers only translate: replies go to the waiting green thread, connects to the worker.

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])  # type: ignore[untyped-decorator]
    def state_change(self, ev: Any) -> None:
        if ev.state == MAIN_DISPATCHER:
            self.datapath = ev.datapath
            self.session.installed = None
            self.triggers.put("connect")
        elif ev.datapath is self.datapath:
            self.replies.abort(ev.datapath)
            self.datapath = None

    @set_ev_cls(REPLY_EVENTS, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def reply(self, ev: Any) -> None:
        if not self.replies.dispatch(ev.msg) and isinstance(ev, ofp_event.EventOFPErrorMsg):
            self.logger.warning("SYNCER unexpected error %s", ev.msg)

    def _poller(self) -> None:
        while True:
            hub.sleep(self.poll)
            dp = self.datapath
            if dp is None or self.busy or not self.triggers.empty():
                continue
            try:
                if os.stat(self.desired_path).st_mtime != self.desired_mtime:
                    self.triggers.put("update")
                elif self.session.installed is not None and not ofio.has_canary(
                    self.replies, dp, 5
                ):
                    self.triggers.put("canary-missing")
            except Exception:
                self.logger.exception("SYNCER poll failed")

    def _worker(self) -> None:
        while True:
            reason = self.triggers.get()
            dp = self.datapath
            if dp is None:
                continue
            self.busy = True
            try:
                self._sync(dp, reason)
            except Exception:
                self.logger.exception("SYNCER sync failed")
            finally:
                self.busy = False

    def _sync(self, dp: Any, reason: str) -> None:
        mtime = os.stat(self.desired_path).st_mtime
        with open(self.desired_path, encoding="utf-8") as f:
            update = self.desired.load(with_canary(canonical_state(decode_state(f.read()))))
        self.desired_mtime = mtime
        if reason == "canary-missing":
            self.session.installed = None  # the switch lost its flows: full resync, read back
        record: dict[str, Any] = {"n": len(self.syncs) + 1, "reason": reason, "at": time.time()}
        started = time.monotonic()
        try:
            synced = self.session.sync(self.replies, dp, update, complete=True)
        except ofio.OFError as exc:  # the session dropped its model: read back next time
            record.update(ok=False, error=str(exc), total_s=time.monotonic() - started)
        else:
            installed = self.session.installed
            assert installed is not None
            record.update(
                ok=True,
                error=None,
                counts=dict(synced.plan.counts),
                steps=[f"{kind} {obj.text()}" for kind, obj in synced.plan.steps()][:20],
                canary_was_present=synced.canary_was_present,
                read_s=synced.read_s,
                plan_s=synced.plan_s,
                send_s=synced.send_s,
                total_s=synced.read_s + synced.plan_s + synced.send_s,
                installed_flows=installed.count,
                installed_groups=len(installed.groups),
            )
        self.logger.info("SYNCER sync %s", json.dumps(record))
        self.syncs.append(record)
        tmp = self.status_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"syncs": self.syncs}, f)
        os.replace(tmp, self.status_path)
