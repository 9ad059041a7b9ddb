"""What a sync sends (ohc/session.py): only what changed, and nothing deleted while a followed
stream has not delivered (fail static), then the stale flows at the next complete sync."""

from __future__ import annotations

from ohc.engine import FlowEngine
from ohc.pipeline import TUNNEL_PORT
from ohc.session import SwitchSession
from ohc.syncer import SwitchModel
from tests.support.changes import changes
from tests.unit.controller_fixtures import add_vm
from tests.unit.test_ohc_compiler import OFPORT, followed, full_intent, publish


def test_deletes_wait_for_a_complete_view_then_go() -> None:
    i = full_intent()
    engine = FlowEngine(str(i.hosts["hv1"].underlay_ip))
    session = SwitchSession(engine)
    first = followed(publish(i), "hv1")
    engine.update(changes({}, first, True), OFPORT, TUNNEL_PORT)
    session.installed = SwitchModel.of(engine.state())  # what a first sync leaves
    add_vm(i, "red", "r5", "10.2.0.15", "hv3")
    i.drop("endpoint", "red/r2")
    second = followed(publish(i), "hv1")
    update = engine.update(changes(first, second, False), OFPORT, TUNNEL_PORT)
    held = session.next_plan(update, complete=False)
    assert held.flow_adds and not held.flow_deletes  # r5 in, r2 kept: fail static
    session.installed.apply(held)
    nothing = engine.update({}, OFPORT, TUNNEL_PORT)
    assert not nothing.flow_keys
    late = session.next_plan(nothing, complete=True)
    assert late.flow_deletes and not late.flow_adds  # r2's flows, now that the view is whole
    session.installed.apply(late)
    assert session.installed.state() == engine.state()
    assert session.next_plan(nothing, complete=True).empty
