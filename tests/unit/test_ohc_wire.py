"""ohc.wire against os-ken on random canonical flows: the same bytes, or a clear refusal."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ohc import wire
from ohc.canonical import canonical_flow
from ohc.flows import (
    CT_NO_TABLE,
    Action,
    Apply,
    Conntrack,
    DecTtl,
    Flow,
    Goto,
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
    flow_mod,
)

DP = SimpleNamespace(ofproto=ofp, ofproto_parser=parser)
U64 = st.integers(0, (1 << 64) - 1)
MAC = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
V4 = st.integers(0, (1 << 32) - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
V6 = st.integers(0, (1 << 128) - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def matches(draw: st.DrawFn) -> Match:
    fields: dict[str, MatchValue] = {}
    if draw(st.booleans()):
        fields["in_port"] = draw(st.integers(1, 0xFEFF))
    if draw(st.booleans()):
        fields["metadata"] = (draw(U64), draw(U64))
    if draw(st.booleans()):
        fields["eth_src"] = draw(MAC)
    if draw(st.booleans()):
        fields["tunnel_id"] = draw(st.integers(0, (1 << 24) - 1))
        fields["tun_ipv4_src"] = draw(V4)
    if draw(st.booleans()):
        fields["ct_state"] = (draw(st.integers(0, 0x3F)), draw(st.integers(1, 0x3F)))
        fields["ct_zone"] = draw(st.integers(0, 0xFFFF))
    ip = draw(st.sampled_from(["none", "v4", "v6", "nd", "bfd", "tcp"]))
    if ip == "v4":
        fields["eth_type"] = 0x0800
        plen = draw(st.integers(1, 32))
        mask = str(ipaddress.IPv4Network(f"0.0.0.0/{plen}").netmask)
        fields["ipv4_dst"] = (draw(V4), mask)
    elif ip == "v6":
        fields["eth_type"] = 0x86DD
        fields["ipv6_src"] = draw(V6)
    elif ip == "tcp":  # an ILB's pin flow or connection learner (compiler.lb_flows)
        fields |= {"eth_type": 0x0800, "ip_proto": 6, "tcp_src": draw(st.integers(0, 0xFFFF))}
        fields["eth_dst"] = draw(MAC)
    elif ip == "bfd":  # a gateway's BFD reflection (compiler.bfd_reflect_flow)
        fields |= {"eth_type": 0x0800, "ip_proto": 17, "udp_dst": draw(st.integers(0, 0xFFFF))}
    elif ip == "nd":
        fields |= {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135}
        fields["ipv6_nd_target"] = draw(V6)
    return Match.of(**fields)


ACTIONS: st.SearchStrategy[Action] = st.one_of(
    st.builds(Output, st.integers(1, 0xFFFFFFFF)),
    st.builds(ToGroup, st.integers(1, 0x7FFFFFFF)),
    st.just(DecTtl()),
    MAC.map(lambda m: SetField("eth_dst", m)),
    st.integers(0, (1 << 24) - 1).map(lambda v: SetField("tunnel_id", v)),
    V4.map(lambda a: SetField("tun_ipv4_dst", a)),
    st.just(Move("tun_ipv4_src", "tun_ipv4_dst")),
    st.builds(Resubmit, st.integers(0, 254)),
    st.builds(
        Learn,
        st.integers(0, 254),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        U64,
        st.sampled_from([(), (("eth_type", 0x0800),)]),
        st.sampled_from([(), ("ipv4_dst",), ("metadata", "ipv4_dst")]),
    ),
    st.builds(  # an ILB's connection affinity (compiler.lb_learn_flows)
        Learn,
        st.integers(0, 254),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        U64,
        st.sampled_from([(("eth_type", 0x0800), ("ip_proto", 6)), (("ip_proto", 17),)]),
        st.sampled_from([("metadata", "ipv4_src", "tcp_src", "tcp_dst"), ("udp_src",)]),
        st.sampled_from([(), ("eth_dst",)]),
    ),
    st.builds(
        Conntrack,
        st.booleans(),
        st.integers(0, 0xFFFF),
        st.just(""),
        st.just(0),
        st.one_of(st.just(CT_NO_TABLE), st.integers(1, 254)),
    ),
    st.builds(
        Conntrack,
        st.booleans(),
        st.just(0),
        st.sampled_from(["in_port", "metadata"]),
        st.sampled_from([0, 32]),
        st.one_of(st.just(CT_NO_TABLE), st.integers(1, 254)),
    ),
)


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    ins: list[Instruction] = []
    if draw(st.booleans()):
        ins.append(Apply(tuple(draw(st.lists(ACTIONS, max_size=5)))))
    if draw(st.booleans()):
        ins.append(WriteMetadata(draw(U64), draw(U64)))
    if draw(st.booleans()):
        ins.append(Goto(draw(st.integers(1, 254))))
    flow = Flow(
        draw(st.integers(0, 252)),
        draw(st.integers(0, 0xFFFF)),
        draw(matches()),
        tuple(ins),
        draw(U64),
    )
    return canonical_flow(flow)


def osken_bytes(f: Flow, command: str) -> bytes:
    msg = flow_mod(DP, f, command)
    if command == "delete":
        msg.cookie_mask = (1 << 64) - 1
    msg.set_xid(0x1234)
    msg.serialize()
    return bytes(msg.buf)


@settings(max_examples=300, deadline=None)
@given(flows(), st.sampled_from(["add", "modify", "delete"]))
def test_random_canonical_flows_pack_to_os_kens_bytes(f: Flow, command: str) -> None:
    assert wire.flow_mod(f, command, 0x1234) == osken_bytes(f, command)
    # in a bundle, in one pass: the same FlowMod inside the same bundle add
    bundled = wire.bundled_flow_mod(7, 3, f, command, 0x1234, {})
    assert bundled == wire.bundle_add(7, 3, osken_bytes(f, command))


def test_fields_and_actions_it_does_not_know_are_refused() -> None:
    with pytest.raises(ValueError, match="sctp_dst"):
        wire.flow_mod(Flow(0, 1, Match.of(sctp_dst=53), ()), "add", 1)
    with pytest.raises(ValueError, match="expected an integer"):
        wire.flow_mod(Flow(0, 1, Match.of(in_port="x"), ()), "add", 1)
