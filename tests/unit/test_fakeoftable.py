"""FakeOFTable behaves like OVS for the FlowMods/GroupMods meshpeer sends, and traces packets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from tests.support import FakeOFError, FakeOFTable, FakeOFUnsupported

IPV4 = 0x0800
ARP = 0x0806
TUNNEL_PORT = 100
MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def apply_actions(*actions: Any) -> Any:
    return parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions))


def out(port: int) -> Any:
    return parser.OFPActionOutput(port)


def flow(
    match: dict[str, Any] | None = None,
    *actions: Any,
    table: int = 0,
    priority: int = 100,
    cookie: int = 0,
    goto: int | None = None,
    extra: list[Any] | None = None,
) -> Any:
    instructions = [apply_actions(*actions)] if actions else []
    instructions += extra or []
    if goto is not None:
        instructions.append(parser.OFPInstructionGotoTable(goto))
    return parser.OFPFlowMod(
        None,
        table_id=table,
        priority=priority,
        cookie=cookie,
        match=parser.OFPMatch(**(match or {})),
        instructions=instructions,
    )


def command(cmd: int, match: dict[str, Any] | None = None, *actions: Any, **kwargs: Any) -> Any:
    """A MODIFY/DELETE FlowMod; out_port/out_group default to ANY (os-ken's default is 0)."""
    kwargs.setdefault("out_port", ofp.OFPP_ANY)
    kwargs.setdefault("out_group", ofp.OFPG_ANY)
    instructions = [apply_actions(*actions)] if actions else []
    return parser.OFPFlowMod(
        None,
        command=cmd,
        match=parser.OFPMatch(**(match or {})),
        instructions=instructions,
        **kwargs,
    )


def group(group_id: int, gtype: int, *buckets: Any, cmd: int = ofp.OFPGC_ADD) -> Any:
    return parser.OFPGroupMod(None, cmd, gtype, group_id, list(buckets))


def bucket(*actions: Any, weight: int = 0) -> Any:
    return parser.OFPBucket(weight=weight, actions=list(actions))


def table_with(*msgs: Any, num_tables: int = 8) -> FakeOFTable:
    table = FakeOFTable(num_tables)
    table.apply_all(msgs)
    return table


IP_PKT = {"eth_type": IPV4, "eth_src": MAC_A, "eth_dst": MAC_B, "ipv4_src": "10.0.0.1",
          "ipv4_dst": "10.0.1.5", "ip_proto": 6, "tcp_dst": 80, "ip_ttl": 64}  # fmt: skip


# --- matching and the pipeline ----------------------------------------------------------------


def test_highest_priority_matching_flow_wins() -> None:
    table = table_with(
        flow({}, out(1), priority=1),
        flow({"eth_type": IPV4}, out(2), priority=50),
        flow({"eth_type": IPV4, "ipv4_dst": "10.0.1.5"}, out(3), priority=200),
        flow({"eth_type": ARP}, out(4), priority=300),
    )
    assert table.trace(IP_PKT, in_port=9).ports() == {3}
    assert table.trace({**IP_PKT, "ipv4_dst": "10.0.1.6"}, in_port=9).ports() == {2}
    assert table.trace({"eth_type": 0x86DD}, in_port=9).ports() == {1}


def test_masked_matches_on_prefix_metadata_register_and_mac() -> None:
    table = table_with(
        flow({"eth_type": IPV4, "ipv4_dst": ("10.0.1.0", "255.255.255.0")}, out(1), priority=10),
        flow({"metadata": (0x100, 0xF00)}, out(2), priority=20),
        flow({"reg3": (0x5, 0xF)}, out(3), priority=30),
        flow({"eth_dst": ("01:00:00:00:00:00", "01:00:00:00:00:00")}, out(4), priority=40),
    )
    assert table.trace(IP_PKT, in_port=9).ports() == {1}
    assert table.trace({**IP_PKT, "ipv4_dst": "10.0.2.5"}, in_port=9).dropped
    assert table.trace({"metadata": 0xA1FF}, in_port=9).ports() == {2}
    assert table.trace({"reg3": 0xF5}, in_port=9).ports() == {3}
    assert table.trace({"reg3": 0xF6}, in_port=9).dropped
    assert table.trace({"eth_dst": "FF:FF:FF:FF:FF:FF"}, in_port=9).ports() == {4}


def test_goto_chain_visits_tables_in_order() -> None:
    table = table_with(
        flow({"in_port": 1}, table=0, goto=2),
        flow({}, table=2, goto=5),
        flow({"eth_type": IPV4}, out(7), table=5),
    )
    result = table.trace(IP_PKT, in_port=1)
    assert result.tables == [0, 2, 5]
    assert [f.table_id for f in result.flows] == [0, 2, 5]
    assert result.is_output(7)


def test_set_field_affects_only_later_outputs() -> None:
    table = table_with(
        flow({}, out(1), parser.OFPActionSetField(eth_dst=MAC_A), out(2)),
    )
    result = table.trace(IP_PKT, in_port=9)
    assert result.is_output(1, eth_dst=MAC_B)
    assert result.is_output(2, eth_dst=MAC_A)
    assert not result.is_output(2, eth_dst=MAC_B)


def test_table_miss_drops_but_keeps_earlier_outputs() -> None:
    table = table_with(
        flow({"eth_type": ARP}, out(1)),
        flow({"eth_type": IPV4}, out(2), goto=1),
    )
    assert table.trace({"eth_type": 0x86DD}, in_port=9).dropped
    result = table.trace(IP_PKT, in_port=9)
    assert result.ports() == {2}
    assert result.tables == [0, 1]
    assert "table-miss" in result.notes[-1]


def test_write_metadata_and_action_set_run_at_pipeline_end() -> None:
    write = parser.OFPInstructionActions(ofp.OFPIT_WRITE_ACTIONS, [out(5)])
    clear = parser.OFPInstructionActions(ofp.OFPIT_CLEAR_ACTIONS, [])
    table = table_with(
        flow({}, table=0, goto=1, extra=[write, parser.OFPInstructionWriteMetadata(0x7, 0xFF)]),
        flow({"metadata": (0x7, 0xFF)}, parser.OFPActionSetField(reg0=1), table=1, goto=2),
        flow({"reg0": 1, "in_port": 2}, table=2, extra=[clear]),
        flow({"reg0": 1}, table=2, priority=1),
    )
    result = table.trace({"metadata": 0xFF00}, in_port=1)
    assert result.outputs_to(5) == [{"metadata": 0xFF07, "in_port": 1, "reg0": 1}]
    assert table.trace({}, in_port=2).dropped  # clear_actions emptied the action set


def test_group_in_action_set_wins_over_output() -> None:
    write = parser.OFPInstructionActions(
        ofp.OFPIT_WRITE_ACTIONS, [out(5), parser.OFPActionGroup(1)]
    )
    table = table_with(group(1, ofp.OFPGT_INDIRECT, bucket(out(6))), flow({}, extra=[write]))
    assert table.trace({}, in_port=1).ports() == {6}


def test_special_ports() -> None:
    table = table_with(
        flow({"in_port": 1}, out(ofp.OFPP_IN_PORT), out(1), out(ofp.OFPP_CONTROLLER)),
    )
    result = table.trace({}, in_port=1)
    assert [o.port for o in result.outputs] == [1, "controller"]  # plain output:1 skipped
    assert any("in_port" in note for note in result.notes)


def test_push_and_pop_vlan() -> None:
    vid = ofp.OFPVID_PRESENT | 42
    table = table_with(
        flow(
            {"vlan_vid": ofp.OFPVID_NONE},
            parser.OFPActionPushVlan(),
            parser.OFPActionSetField(vlan_vid=vid),
            out(2),
        ),
        flow({"vlan_vid": vid}, parser.OFPActionPopVlan(), out(3)),
    )
    assert table.trace({}, in_port=1).is_output(2, vlan_vid=vid)
    assert table.trace({"vlan_vid": vid}, in_port=1).is_output(3, vlan_vid=None)


def test_equal_priority_overlap_is_reported() -> None:
    table = table_with(flow({"in_port": 1}, out(2)), flow({"reg0": 0}, out(3)))
    assert "tie" in table.trace({}, in_port=1).notes[0]


def test_chained_groups() -> None:
    table = table_with(
        group(1, ofp.OFPGT_INDIRECT, bucket(out(2))),
        group(2, ofp.OFPGT_ALL, bucket(parser.OFPActionGroup(1)), bucket(out(3))),
        flow({}, parser.OFPActionGroup(2)),
    )
    assert table.trace({}, in_port=1).ports() == {2, 3}
    with pytest.raises(FakeOFError, match="OFPBAC_BAD_OUT_GROUP"):
        table.apply(group(3, ofp.OFPGT_ALL, bucket(parser.OFPActionGroup(7))))


# --- ttl ------------------------------------------------------------------------------------------


def test_dec_ttl_decrements_and_drops_at_one() -> None:
    table = table_with(flow({"eth_type": IPV4}, parser.OFPActionDecNwTtl(), out(2)))
    assert table.trace(IP_PKT, in_port=1).is_output(2, ip_ttl=63)
    expired = table.trace({**IP_PKT, "ip_ttl": 1}, in_port=1)
    assert expired.dropped
    assert expired.ttl_expired


# --- groups -----------------------------------------------------------------------------------


def test_select_group_records_buckets_and_weights() -> None:
    table = table_with(
        group(
            1,
            ofp.OFPGT_SELECT,
            bucket(out(2), weight=3),
            bucket(out(3), weight=1),
            bucket(out(4), weight=0),
        ),
        flow({}, parser.OFPActionGroup(1)),
    )
    result = table.trace({}, in_port=1)
    assert result.weights_by_port() == {2: 3, 3: 1}
    assert result.selects[0].buckets == ((0, 3), (1, 1), (2, 0))
    assert table.trace({}, in_port=1, select_bucket=1).ports() == {3}
    assert table.trace({}, in_port=1, select_bucket={1: 0}).ports() == {2}
    picks = [table.trace({}, in_port=1, select_hash=h).ports() for h in range(8)]
    assert picks.count({2}) == 6
    assert picks.count({3}) == 2


def test_group_all_clones_and_bucket_changes_do_not_leak() -> None:
    table = table_with(
        group(
            1, ofp.OFPGT_ALL, bucket(parser.OFPActionSetField(tunnel_id=7), out(2)), bucket(out(3))
        ),
        flow({}, parser.OFPActionGroup(1), out(4)),
    )
    result = table.trace({}, in_port=1)
    assert result.ports() == {2, 3, 4}
    assert result.is_output(2, tunnel_id=7)
    assert result.is_output(3, tunnel_id=None)
    assert result.is_output(4, tunnel_id=None)
    assert result.is_output(4, tunnel_id=0)  # absent tunnel metadata reads as 0, as in OVS


def test_group_delete_removes_referencing_flows() -> None:
    table = table_with(
        group(1, ofp.OFPGT_INDIRECT, bucket(out(2))),
        group(2, ofp.OFPGT_INDIRECT, bucket(out(3))),
        flow({"in_port": 1}, parser.OFPActionGroup(1)),
        flow({"in_port": 2}, parser.OFPActionGroup(2)),
        flow({"in_port": 3}, out(1)),
    )
    table.apply(group(1, ofp.OFPGT_INDIRECT, cmd=ofp.OFPGC_DELETE))
    assert [f.match_dict() for f in table.flows()] == [{"in_port": 2}, {"in_port": 3}]
    table.apply(group(ofp.OFPG_ALL, ofp.OFPGT_ALL, cmd=ofp.OFPGC_DELETE))
    assert table.groups() == []
    assert [f.match_dict() for f in table.flows()] == [{"in_port": 3}]


def test_group_modify_and_errors() -> None:
    table = table_with(
        group(1, ofp.OFPGT_INDIRECT, bucket(out(2))), flow({}, parser.OFPActionGroup(1))
    )
    table.apply(group(1, ofp.OFPGT_INDIRECT, bucket(out(3)), cmd=ofp.OFPGC_MODIFY))
    assert table.trace({}, in_port=1).ports() == {3}
    with pytest.raises(FakeOFError, match="GROUP_EXISTS"):
        table.apply(group(1, ofp.OFPGT_ALL, bucket(out(4))))
    with pytest.raises(FakeOFError, match="UNKNOWN_GROUP"):
        table.apply(group(9, ofp.OFPGT_ALL, bucket(out(4)), cmd=ofp.OFPGC_MODIFY))
    with pytest.raises(FakeOFError, match="INVALID_GROUP"):
        table.apply(group(5, ofp.OFPGT_INDIRECT, bucket(out(4)), bucket(out(5))))


# --- flow_mod commands ------------------------------------------------------------------------


def test_add_with_same_match_and_priority_replaces() -> None:
    table = table_with(flow({"in_port": 1}, out(2), cookie=1))
    table.apply(flow({"in_port": 1}, out(3), cookie=2))
    table.apply(flow({"in_port": 1}, out(4), priority=5))
    assert len(table.flows()) == 2
    assert table.trace({}, in_port=1).ports() == {3}
    assert table.flows()[0].cookie == 2


def test_modify_non_strict_updates_all_matching_and_keeps_cookie() -> None:
    table = table_with(
        flow({"eth_type": IPV4, "ipv4_dst": "10.0.0.1"}, out(1), cookie=0x11, priority=5),
        flow({"eth_type": IPV4, "ipv4_dst": "10.0.0.2"}, out(1), cookie=0x12, priority=6),
        flow({"eth_type": ARP}, out(1)),
    )
    table.apply(command(ofp.OFPFC_MODIFY, {"eth_type": IPV4}, out(9)))
    assert {(f.cookie, str(f.instructions[0])) for f in table.flows()} == {
        (0x11, "output:9"),
        (0x12, "output:9"),
        (0, "output:1"),
    }
    before = table.flows()
    table.apply(command(ofp.OFPFC_MODIFY, {"in_port": 4}, out(9)))  # no match: adds nothing
    assert table.flows() == before


def test_modify_strict_needs_exact_match_and_priority() -> None:
    table = table_with(flow({"eth_type": IPV4, "ipv4_dst": "10.0.0.1"}, out(1), priority=5))
    table.apply(command(ofp.OFPFC_MODIFY_STRICT, {"eth_type": IPV4}, out(9), priority=5))
    table.apply(
        command(ofp.OFPFC_MODIFY_STRICT, {"eth_type": IPV4, "ipv4_dst": "10.0.0.1"}, out(8))
    )
    assert table.trace(IP_PKT | {"ipv4_dst": "10.0.0.1"}, in_port=3).ports() == {1}
    table.apply(
        command(
            ofp.OFPFC_MODIFY_STRICT, {"eth_type": IPV4, "ipv4_dst": "10.0.0.1"}, out(7), priority=5
        )
    )
    assert table.trace(IP_PKT | {"ipv4_dst": "10.0.0.1"}, in_port=3).ports() == {7}


def test_strict_vs_non_strict_delete() -> None:
    msgs = [
        flow({"eth_type": IPV4}, out(1), priority=5),
        flow({"eth_type": IPV4, "ipv4_dst": ("10.0.0.0", "255.0.0.0")}, out(1), priority=6),
        flow({"eth_type": IPV4, "ipv4_dst": "10.1.0.1"}, out(1), priority=7),
        flow({"eth_type": IPV4, "ipv4_dst": ("10.0.0.0", "255.255.0.0")}, out(1), priority=8),
        flow({"eth_type": ARP}, out(1)),
    ]
    loose = table_with(*msgs)
    loose.apply(
        command(ofp.OFPFC_DELETE, {"eth_type": IPV4, "ipv4_dst": ("10.0.0.0", "255.0.0.0")})
    )
    assert sorted(f.priority for f in loose.flows()) == [5, 100]
    strict = table_with(*msgs)
    strict.apply(
        command(
            ofp.OFPFC_DELETE_STRICT,
            {"eth_type": IPV4, "ipv4_dst": ("10.0.0.0", "255.0.0.0")},
            priority=6,
        )
    )
    assert sorted(f.priority for f in strict.flows()) == [5, 7, 8, 100]
    strict.apply(command(ofp.OFPFC_DELETE, {}))  # empty match deletes everything in table 0
    assert strict.flows() == []


def test_delete_by_cookie_mask_across_all_tables() -> None:
    table = table_with(
        flow({"in_port": 1}, out(2), cookie=0x0100_0001, table=0),
        flow({"in_port": 1}, out(2), cookie=0x0100_0002, table=3),
        flow({"in_port": 2}, out(2), cookie=0x0200_0001, table=3),
    )
    table.apply(
        command(
            ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL, cookie=0x0100_0000, cookie_mask=0xFF00_0000
        )
    )
    assert [f.cookie for f in table.flows()] == [0x0200_0001]


def test_delete_filters_on_out_port_and_os_ken_default_deletes_nothing() -> None:
    table = table_with(
        group(1, ofp.OFPGT_INDIRECT, bucket(out(5))),
        flow({"in_port": 1}, out(2)),
        flow({"in_port": 2}, out(3)),
        flow({"in_port": 3}, parser.OFPActionGroup(1)),
    )
    table.apply(parser.OFPFlowMod(None, command=ofp.OFPFC_DELETE, match=parser.OFPMatch()))
    assert len(table.flows()) == 3  # out_port=0/out_group=0: OVS deletes nothing either
    table.apply(command(ofp.OFPFC_DELETE, {}, out_port=3))
    assert {f.match_dict()["in_port"] for f in table.flows()} == {1, 3}
    table.apply(command(ofp.OFPFC_DELETE, {}, out_group=1))
    assert {f.match_dict()["in_port"] for f in table.flows()} == {1}


# --- errors OVS would return ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (flow({}, parser.OFPActionGroup(42)), "OFPBAC_BAD_OUT_GROUP"),
        (flow({}, table=3, goto=3), "OFPBIC_BAD_TABLE_ID"),
        (flow({}, table=3, goto=1), "OFPBIC_BAD_TABLE_ID"),
        (flow({}, table=3, goto=8), "OFPBIC_BAD_TABLE_ID"),
        (flow({}, out(1), table=8), "OFPFMFC_BAD_TABLE_ID"),
        (flow({"ipv4_dst": "10.0.0.1"}, out(1)), "OFPBMC_BAD_PREREQ"),
        (flow({"eth_type": IPV4, "tcp_dst": 80}, out(1)), "OFPBMC_BAD_PREREQ"),
        (flow({}, parser.OFPActionSetField(ipv4_dst="10.0.0.1")), "OFPBMC_BAD_PREREQ"),
    ],
)
def test_rejected_like_ovs(msg: Any, code: str) -> None:
    table = table_with(flow({"in_port": 1}, out(2)))
    before = table.flows()
    with pytest.raises(FakeOFError) as err:
        table.apply(msg)
    assert err.value.code == code
    assert table.flows() == before


def test_modify_to_missing_group_is_rejected() -> None:
    table = table_with(flow({"in_port": 1}, out(2)))
    with pytest.raises(FakeOFError, match="OFPBAC_BAD_OUT_GROUP"):
        table.apply(command(ofp.OFPFC_MODIFY, {}, parser.OFPActionGroup(3)))
    assert table.trace({}, in_port=1).ports() == {2}


def test_unmodelled_action_is_loud() -> None:
    with pytest.raises(FakeOFUnsupported):
        FakeOFTable().apply(flow({}, parser.OFPActionCopyTtlOut()))


# --- bundles ----------------------------------------------------------------------------------


def test_bundle_rolls_back_everything_on_failure() -> None:
    table = table_with(group(1, ofp.OFPGT_INDIRECT, bucket(out(2))), flow({"in_port": 1}, out(2)))
    before, text = table.flows(), str(table)
    bad_bundle = [
        group(2, ofp.OFPGT_ALL, bucket(out(3))),
        command(ofp.OFPFC_DELETE, {}, table_id=ofp.OFPTT_ALL),
        group(1, ofp.OFPGT_ALL, cmd=ofp.OFPGC_DELETE),
        flow({"in_port": 4}, parser.OFPActionGroup(1)),  # group 1 is gone: fails
    ]
    with pytest.raises(FakeOFError, match="OFPBAC_BAD_OUT_GROUP"):
        table.apply_bundle(bad_bundle)
    assert table.flows() == before
    assert str(table) == text
    table.apply_bundle([*bad_bundle[:3], flow({"in_port": 4}, parser.OFPActionGroup(2))])
    assert table.trace({}, in_port=4).ports() == {3}


def test_bundle_accepts_onf_wrapping_and_rejects_barrier() -> None:
    table = FakeOFTable()
    wrapped = [
        parser.ONFBundleCtrlMsg(None, 1, ofp.ONF_BCT_OPEN_REQUEST, 0, []),
        parser.ONFBundleAddMsg(None, 1, 0, flow({}, out(2)), []),
        parser.ONFBundleCtrlMsg(None, 1, ofp.ONF_BCT_COMMIT_REQUEST, 0, []),
    ]
    table.apply_bundle(wrapped)
    assert len(table.flows()) == 1
    with pytest.raises(FakeOFError, match="OFPBFC_MSG_UNSUP"):
        table.apply_bundle([flow({"in_port": 1}, out(3)), parser.OFPBarrierRequest(None)])
    assert len(table.flows()) == 1
    table.apply(parser.OFPBarrierRequest(None))  # outside a bundle: ignored


# --- dumping ----------------------------------------------------------------------------------


def test_flows_are_normalised_and_comparable() -> None:
    a = table_with(
        flow({"eth_type": IPV4, "ipv4_dst": ("10.0.0.9", "255.255.255.0")}, out(1)),
        flow({"eth_src": "AA:BB:CC:DD:EE:FF", "reg1": (7, 0xFFFFFFFF)}, out(2), table=2),
    )
    b = table_with(
        flow({"reg1": 7, "eth_src": "aa:bb:cc:dd:ee:ff"}, out(2), table=2),
        flow({"ipv4_dst": ("10.0.0.0", "255.255.255.0"), "eth_type": IPV4}, out(1)),
    )
    assert a.flows() == b.flows()
    assert set(a.flows()) == set(b.flows())
    assert a.flows(2) == b.flows(2) and len(a.flows(2)) == 1
    text = str(a)
    assert "table=0, priority=100,eth_type=0x800,ipv4_dst=10.0.0.0/255.255.255.0" in text
    assert "actions=output:2" in text


@settings(max_examples=50, deadline=None)
@given(st.permutations(list(range(6))), st.integers(min_value=0, max_value=5))
def test_add_order_does_not_matter_and_failed_bundle_is_a_no_op(order: list[int], bad: int) -> None:
    msgs = [flow({"reg0": i}, out(i + 1), priority=i % 3, table=i % 2) for i in range(6)]
    in_order = table_with(*msgs)
    shuffled = table_with(*(msgs[i] for i in order))
    assert in_order.flows() == shuffled.flows()
    bundle = [command(ofp.OFPFC_DELETE, {"reg0": i}, table_id=ofp.OFPTT_ALL) for i in order]
    bundle.insert(bad, flow({}, parser.OFPActionGroup(99)))
    with pytest.raises(FakeOFError):
        shuffled.apply_bundle(bundle)
    assert shuffled.flows() == in_order.flows()


# --- a small meshpeer-like pipeline -----------------------------------------------------------


def test_l2_tunnel_pipeline_sends_to_tunnel_with_vni_and_remote_ip() -> None:
    vpc_meta, vni, remote = 0x10, 5001, "192.0.2.22"
    table = table_with(
        # table 0: classify the VM port into its VPC
        flow(
            {"in_port": 1},
            table=0,
            goto=1,
            extra=[parser.OFPInstructionWriteMetadata(vpc_meta, 0xFFFF)],
        ),
        # table 1: L2 lookup per VPC; remote MAC goes through the tunnel
        flow(
            {"metadata": (vpc_meta, 0xFFFF), "eth_dst": MAC_B},
            parser.OFPActionSetField(tunnel_id=vni),
            parser.OFPActionSetField(tun_ipv4_dst=remote),
            out(TUNNEL_PORT),
            table=1,
        ),
        flow({"metadata": (vpc_meta, 0xFFFF), "eth_dst": MAC_A}, out(1), table=1),
    )
    result = table.trace(IP_PKT, in_port=1)
    assert result.tables == [0, 1]
    assert result.is_output(TUNNEL_PORT, tunnel_id=vni, tun_ipv4_dst=remote, eth_dst=MAC_B)
    (sent,) = result.outputs_to(TUNNEL_PORT)
    assert sent["ipv4_dst"] == "10.0.1.5"
    assert table.trace(IP_PKT, in_port=2).dropped, str(table)


# --- conntrack ----------------------------------------------------------------------------------


def ct(zone: int = 0, table: int = 0xFF, commit: bool = False, src: str = "", ofs: int = 0) -> Any:
    zone_word = ofs << 6 | 15 if src else zone
    return parser.NXActionCT(1 if commit else 0, src, zone_word, table, 0, [])


def test_ct_tracks_connections_per_zone_and_resumes_the_tracked_copy() -> None:
    """Port 1 -> 2 is committed in zone 1 (from in_port) and goes on untracked; what comes
    back from 2 is checked in zone 1 and resumes in table 5: est passes, new misses."""
    est = (0x22, 0x32)  # +trk+est-inv
    t = table_with(
        flow({"in_port": 1, "eth_type": IPV4}, ct(commit=True, src="in_port"), out(2)),
        flow({"in_port": 2, "eth_type": IPV4}, ct(zone=1, table=5)),
        flow({"ct_state": est, "ct_zone": 1}, out(1), table=5),
    )
    a_to_b = {"eth_type": IPV4, "ipv4_src": "10.0.0.1", "ipv4_dst": "10.0.0.2", "ip_proto": 17}
    a_to_b |= {"udp_src": 1000, "udp_dst": 53}
    b_to_a = a_to_b | {"ipv4_src": "10.0.0.2", "ipv4_dst": "10.0.0.1"}
    b_to_a |= {"udp_src": 53, "udp_dst": 1000}
    assert t.trace(b_to_a, in_port=2).dropped  # nothing opened yet: +new
    sent = t.trace(a_to_b, in_port=1)
    assert sent.ports() == {2} and sent.is_output(2, ct_state=None)  # untracked original
    assert t.connections() == 1
    assert t.trace(b_to_a, in_port=2).ports() == {1}  # the reply
    assert t.trace(b_to_a | {"udp_src": 54}, in_port=2).dropped  # another tuple
    t.forget_connections()
    assert t.trace(b_to_a, in_port=2).dropped


def test_ct_needs_an_ip_match() -> None:
    with pytest.raises(FakeOFError) as e:
        table_with(flow({"in_port": 1}, ct(zone=1, table=5)))
    assert e.value.code == "OFPBAC_MATCH_INCONSISTENT"
