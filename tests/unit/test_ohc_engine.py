"""The incremental flow engine (ohc/engine.py) equals the reference full compile.

After any sequence of stream deltas, snapshots, stream losses and port changes, the engine's
flows and groups are those of ``compile_host`` on the same streams, flow for flow and group for
group, and what it says changed includes everything that differs from before (the syncer
plans only those keys). Packets are traced through
FakeOFTable in tests/unit/test_ohc_compiler.py; here the two compilers are compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpeer.controller.model import Intent
from ohc import compiler as ohc_compiler
from ohc import engine as ohc_engine
from ohc import host as ohc_host
from ohc.canonical import canonical_state
from ohc.compiler import compile_host, lb_cookie, relay_flows
from ohc.engine import FlowEngine
from ohc.model import Offload
from ohc.pipeline import GATEWAY_RELAY, TUNNEL_PORT
from ohc.syncer import SwitchModel, SwitchState, plan_keys, with_canary
from tests.support.changes import Streams, changes
from tests.unit.controller_fixtures import add_vm
from tests.unit.test_ohc_compiler import (
    HOSTS,
    KINDS,
    OFPORT,
    apply_op,
    base_intent,
    followed,
    full_intent,
    publish,
)

# the gateway hosts apply_op registers (and drops): an engine each, from the first step
GATEWAY_IPS = {"gw1": "169.254.101.51", "gw2": "169.254.101.52"}


def reference(
    i: Intent,
    streams: Streams,
    h: str,
    ofports: Mapping[tuple[str, str], int],
    tunnel: int | None,
    offload: Offload | None = None,
) -> tuple[SwitchState, tuple[Any, ...]]:
    if h in GATEWAY_IPS:  # a gateway host's relays (docs/gateways.md)
        view, skipped = ohc_host.gateway_view(GATEWAY_IPS[h], streams, tunnel)
    else:
        view, skipped = ohc_host.host_view(
            str(i.hosts[h].underlay_ip), streams, ofports, tunnel, offload=offload
        )
    state = compile_host(view)
    assert canonical_state(state).flows == state.flows  # the compiler emits canonical flows
    return with_canary(canonical_state(state)), skipped


STEPS = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(0, 11),
        st.sampled_from(["delta", "delta", "snapshot", "detach", "no-tunnel", "offload", "spill"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(STEPS)
def test_the_engine_equals_a_full_recompute_after_any_sequence(
    steps: list[tuple[str, int, str]],
) -> None:
    engine_equals_full_compile(steps)


@settings(max_examples=40, deadline=None)
@given(STEPS)
def test_group_ids_that_move_between_vpcs_are_kept(steps: list[tuple[str, int, str]]) -> None:
    """Every load balancer's preferred group id the same: ids go by sorted owner, so adding
    or removing one (a peering: blue's view of red's ILB) moves the others' ids from one VPC's
    unit to another's. The unit giving an id up must not delete it from the one taking it."""
    with mock.patch("ohc.compiler.group_id_of", return_value=1):
        engine_equals_full_compile(steps)


def test_a_peering_moves_a_group_id_from_red_to_blue() -> None:
    """The case behind the property above, spelled out: red's ILB holds the first id until
    blue (which sorts first) gets a view of it through the peering."""
    steps = [("ilb", 0, "delta"), ("peer", 0, "delta"), ("peer", 1, "delta"), ("peer", 1, "delta")]
    with mock.patch("ohc.compiler.group_id_of", return_value=1):
        engine_equals_full_compile(steps)


@pytest.mark.parametrize("how", ["delta", "snapshot"])
def test_a_side_that_flips_to_gateways_and_back(how: str) -> None:
    """Blue <-> red ACTIVE, a gateway registered: blue's side moves to the gateways (its
    flows per red endpoint go) and back (they return), a gateway comes and goes meanwhile."""
    steps = [("peer", 0), ("peer", 1), ("gateway", 0), ("forwarding", 0), ("gateway", 1)]
    steps += [("forwarding", 1), ("gateway", 0), ("forwarding", 0), ("forwarding", 1)]
    engine_equals_full_compile([(kind, n, how) for kind, n in steps])


def test_an_on_demand_side_offloads_pairs_and_takes_them_back() -> None:
    """forwarding flips to on-demand (n odd), pairs go direct and come back, a gateway comes
    and goes meanwhile: the engine equals the full compile at each step."""
    steps = [("peer", 0, "delta"), ("peer", 1, "delta"), ("gateway", 0, "delta")]
    steps += [("forwarding", 1, "delta"), ("vm", 1, "offload"), ("vm", 2, "offload")]
    steps += [("gateway", 1, "offload"), ("vm", 15, "offload"), ("vm", 0, "offload")]
    steps += [("forwarding", 1, "snapshot"), ("vm", 7, "offload")]
    engine_equals_full_compile(steps)


def test_an_ilb_with_spillover_backends_shifts_a_share_and_back() -> None:
    """Blue's ILB lists red's endpoints as spillover backends once blue peers red: its share
    moves (10 * n % 9 percent), a backend goes and comes, the peering goes: the engine
    equals the full compile at each step."""
    steps = [("peer", 0, "delta"), ("peer", 1, "delta"), ("spill", 1, "delta")]
    steps += [("gateway", 4, "spill"), ("gateway", 4, "spill"), ("vm", 3, "spill")]
    steps += [("vm", 3, "delta"), ("gateway", 0, "spill"), ("peer", 1, "snapshot")]
    steps += [("peer", 0, "delta"), ("spill", 1, "spill")]
    engine_equals_full_compile(steps)


def engine_equals_full_compile(steps: list[tuple[str, int, str]], i: Intent | None = None) -> None:
    i = base_intent() if i is None else i
    pub = publish(i)
    engines = {h: FlowEngine(str(i.hosts[h].underlay_ip)) for h in HOSTS}
    engines.update({gw: FlowEngine(ip, "gateway") for gw, ip in GATEWAY_IPS.items()})
    held: dict[str, Streams] = {h: {} for h in engines}
    before = {h: e.state() for h, e in engines.items()}
    # a model of each switch kept relative to its engine, synced by plan_keys (ohc/session.py)
    models = {h: SwitchModel.relative(e, before[h], before[h]) for h, e in engines.items()}
    offload = Offload()  # on-demand sides: the pairs sent direct (ohc/offload.py decides)
    for kind, n, how in [("vm", 0, "snapshot"), *steps]:
        apply_op(i, (kind, n))
        pub = publish(i)
        if how == "offload":  # a subset of each VPC's addresses goes direct from the other
            offload = Offload(
                {
                    (vpc, peer): frozenset(
                        e.ip
                        for k, e in enumerate(sorted(i.endpoints.values(), key=lambda e: e.name))
                        if e.vpc == peer and (n >> (k % 4)) & 1
                    )
                    for vpc, peer in (("blue", "red"), ("red", "blue"))
                },
                idle_s=5 + n % 2,
            )
        if how == "spill":  # blue's ILB sends a share of its new connections to red
            share = {lb_cookie("blue", "web"): 10 * (n % 9)}
            offload = dataclasses.replace(offload, spill=share, affinity_s=30 + n % 2)
        ofports = dict(OFPORT)
        if how == "detach":  # a VM's interface went from br-int
            ofports.pop(sorted(OFPORT)[n % len(OFPORT)])
        tunnel = None if how == "no-tunnel" else TUNNEL_PORT
        for h in engines:
            streams = followed(pub, h)
            ports = {} if h in GATEWAY_IPS else ofports  # a gateway host has no VM
            update = engines[h].update(
                changes(held[h], streams, how == "snapshot"), ports, tunnel, offload=offload
            )
            held[h] = streams
            want, skipped = reference(i, streams, h, ofports, tunnel, offload)
            got = engines[h].state()
            assert got.flows == want.flows, h
            assert got.groups == want.groups, h
            assert engines[h].skipped() == skipped, h
            # every key and group whose content changed is among those it says changed
            old_f = {f.key: f for f in before[h].flows}
            new_f = {f.key: f for f in got.flows}
            assert {k for k in old_f.keys() | new_f.keys() if old_f.get(k) != new_f.get(k)} <= (
                update.flow_keys
            ), h
            assert dict(update.old) == {k: old_f.get(k) for k in update.flow_keys}, h
            model, e = models[h], engines[h]
            model.absorb(update.old)
            model.apply(plan_keys(e.flow, e.groups, model, update.flow_keys, update.group_ids))
            assert model.state() == got and model.count == len(got.flows), h
            assert model.flows == {}, h  # synced whole: the relative model holds nothing
            old_g = {g.group_id: g for g in before[h].groups}
            new_g = {g.group_id: g for g in got.groups}
            assert {k for k in old_g.keys() | new_g.keys() if old_g.get(k) != new_g.get(k)} <= (
                update.group_ids
            ), h
            before[h] = got


def test_one_more_peer_destination_compiles_one_unit() -> None:
    """The cost of a delta is its own units: one new red endpoint on hv3 recompiles only
    its destination in each VPC context that sees it on hv1 (red's own, and blue's peer)."""
    i = full_intent()
    engine = FlowEngine(str(i.hosts["hv1"].underlay_ip))
    first = followed(publish(i), "hv1")
    engine.update(changes({}, first, True), OFPORT, TUNNEL_PORT)
    add_vm(i, "red", "r5", "10.2.0.15", "hv3")
    second = followed(publish(i), "hv1")
    update = engine.update(changes(first, second, False), OFPORT, TUNNEL_PORT)
    assert not update.skeleton
    assert update.units == 2
    # blue: to r5 and its source check; red: the same and the ARP answer for r5
    assert len(update.flow_keys) == 5
    assert engine.state().flows == reference(i, second, "hv1", OFPORT, TUNNEL_PORT)[0].flows


def relaying_intent() -> Intent:
    """The full world with gw1 registered and blue's and green's sides toward red sent
    through the gateways: gw1 relays red's endpoints."""
    i = full_intent()
    apply_op(i, ("gateway", 0))
    for n in (0, 2):
        apply_op(i, ("forwarding", n))
    return i


@settings(max_examples=40, deadline=None)
@given(STEPS)
def test_a_gateway_engine_equals_a_full_recompute(steps: list[tuple[str, int, str]]) -> None:
    """As above, from a world where gw1 relays (random steps from the base world rarely
    make one): its relay units, compiled one destination at a time, stay the full compile."""
    engine_equals_full_compile(steps, relaying_intent())


def test_one_more_relayed_destination_compiles_one_unit_on_a_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway host holds every endpoint of the sides it relays for: one more red endpoint
    recompiles that destination's relay flow only, not the gateway's whole state."""
    i = relaying_intent()
    engine = FlowEngine(GATEWAY_IPS["gw1"], "gateway")
    first = followed(publish(i), "gw1")
    engine.update(changes({}, first, True), {}, TUNNEL_PORT)
    relays = [f for f in engine.state().flows if f.table == GATEWAY_RELAY]
    assert len(relays) >= 3, relays  # red's endpoints, relayed (not a vacuous check)
    add_vm(i, "red", "r5", "10.2.0.15", "hv3")
    second = followed(publish(i), "gw1")
    compiled: list[str] = []

    def counted(out: Any, view: Any, d: Any) -> None:
        compiled.append(d.name)
        relay_flows(out, view, d)

    for module in (ohc_engine, ohc_compiler):
        monkeypatch.setattr(module, "relay_flows", counted, raising=False)
    update = engine.update(changes(first, second, False), {}, TUNNEL_PORT)
    assert not update.skeleton
    assert compiled == ["r5"]  # both sides see red under one policy: one relay unit
    assert len(update.flow_keys) == 1
    assert engine.state().flows == reference(i, second, "gw1", {}, TUNNEL_PORT)[0].flows


# What a peer shard may send is untrusted: destinations that share an address, take a load
# balancer's VIP, carry another VNI or are malformed. The engine must decide as the full
# compile does (the first key in sorted order wins an address; a VIP a destination holds is
# skipped), however the objects arrive.
ADDRESSES = ("10.2.0.11", "10.2.0.12", "10.2.0.100", "10.2.0.14", "10.1.0.11", "10.2.0.300")
RAW_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["destination", "destination", "loadbalancer"]),
        st.sampled_from([None, "policy"]),  # red's own stream, or its export to blue
        st.sampled_from(["r1", "r2", "r3", "x1", "x2", "lbin"]),
        st.one_of(st.none(), st.tuples(st.sampled_from(ADDRESSES), st.sampled_from([1001, 1000]))),
    ),
    min_size=1,
    max_size=10,
)


def _raw(service: str, key: str, ip: str, vni: int) -> dict[str, Any]:
    where = {"ip": ip, "mac": "02:00:00:00:00:07", "vni": vni, "host_ip": "169.254.101.12"}
    if service == "destination":
        return where
    backend = {"endpoint": "r1", "weight": 1, "healthy": True, **where, "ip": "10.2.0.11"}
    return {"vip": ip, "mac": "02:00:00:00:00:08", "vni": vni, "backends": [backend]}


RawEdit = tuple[str, str | None, str, tuple[str, int] | None]


def raw_edit(streams: Streams, edit: RawEdit) -> Streams:
    """``streams`` with one of red's objects (its own or its export to blue) put or dropped."""
    service, which, key, value = edit
    policy = next(s.policy for s in streams if s.key == "red" and s.policy)
    sub = next(
        s
        for s in streams
        if (s.service, s.key, s.policy) == (service, "red", policy if which else None)
    )
    objs = dict(streams[sub])
    if value is None:
        objs.pop(key, None)
    else:
        objs[key] = _raw(service, key, *value)
    return {**streams, sub: objs}


@settings(max_examples=80, deadline=None)
@given(RAW_EDITS)
def test_untrusted_objects_are_decided_as_the_full_compile_decides(
    edits: list[RawEdit],
) -> None:
    i = full_intent()
    streams = followed(publish(i), "hv1")
    engine = FlowEngine(str(i.hosts["hv1"].underlay_ip))
    engine.update(changes({}, streams, True), OFPORT, TUNNEL_PORT)
    for edit in edits:
        new = raw_edit(streams, edit)
        engine.update(changes(streams, new, False), OFPORT, TUNNEL_PORT)
        streams = new
        want, skipped = reference(i, streams, "hv1", OFPORT, TUNNEL_PORT)
        got = engine.state()
        assert got.flows == want.flows
        assert got.groups == want.groups
        assert engine.skipped() == skipped
