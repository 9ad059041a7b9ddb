"""The pipeline registry catches flows that break their table's declaration; cookies are stable."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from ohc import compiler, cookies
from ohc.flows import Apply, Flow, Goto, Match, Output, SetField, WriteMetadata
from ohc.model import HostView, LocalPort
from ohc.pipeline import (
    CLASSIFY,
    L3_LOOKUP,
    PIPELINE,
    ROUTED_HOP,
    TABLES,
    TUNNEL_DELIVER,
    PipelineError,
    Table,
    check_flow,
    check_registry,
    markdown_table,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"


def flow(table: int, *instructions: object, **match: int | str) -> Flow:
    return Flow(table, 100, Match.of(**match), tuple(instructions))  # type: ignore[arg-type]


def test_registry_is_consistent() -> None:
    check_registry()
    assert sorted(PIPELINE) == [t.id for t in TABLES]
    assert all(t.miss == "drop" for t in TABLES)


def test_a_declared_flow_passes() -> None:
    f = flow(CLASSIFY, WriteMetadata(7), Goto(ROUTED_HOP), in_port=10, eth_src="02:00:00:00:00:01")
    assert check_flow(f) is f


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (flow(CLASSIFY, Goto(ROUTED_HOP), in_port=10, tcp_dst=80), "does not declare"),
        (flow(L3_LOOKUP, Apply((Output(1),)), in_port=10), "does not declare"),
        (flow(CLASSIFY, Goto(L3_LOOKUP), in_port=10), "may not go to table 30"),
        (flow(TUNNEL_DELIVER, Goto(L3_LOOKUP)), "may not go to"),
        (flow(99, Apply((Output(1),))), "table 99 is not declared"),
        (flow(L3_LOOKUP, Apply((Output(1),)), ipv4_dst="10.0.0.1"), "needs eth_type"),
        (flow(L3_LOOKUP, Apply((SetField("arp_op", 2),)), eth_type=0x0800), "needs eth_type"),
        (flow(CLASSIFY, Goto(ROUTED_HOP), Goto(ROUTED_HOP)), "more than one goto"),
    ],
)
def test_flows_that_break_the_declaration_are_rejected(bad: Flow, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        check_flow(bad)


def test_registry_rejects_duplicates_and_backward_gotos() -> None:
    with pytest.raises(PipelineError, match="declared twice"):
        check_registry([*TABLES, replace(TABLES[0], name="again")])
    backwards = Table(50, "late", frozenset(), frozenset({CLASSIFY}))
    with pytest.raises(PipelineError, match="undeclared or earlier"):
        check_registry([*TABLES, backwards])


def test_the_compiler_fails_at_build_time_on_an_undeclared_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shrunk = {**PIPELINE, L3_LOOKUP: replace(PIPELINE[L3_LOOKUP], matches=frozenset({"metadata"}))}
    monkeypatch.setattr(compiler, "PIPELINE", MappingProxyType(shrunk))
    port = LocalPort(
        "blue",
        "b1",
        ipaddress.ip_address("10.1.0.11"),
        "02:00:00:00:00:0b",
        1000,
        10,
        ipaddress.ip_network("10.1.0.0/24"),
        ipaddress.ip_address("10.1.0.1"),
    )
    view = HostView(ipaddress.IPv4Address("192.0.2.1"), (port,))
    with pytest.raises(PipelineError, match="l3_lookup does not declare"):
        compiler.compile_host(view)


def test_docs_carry_the_registry() -> None:
    text = DOC.read_text()
    assert markdown_table() in text, "docs/pipeline.md is out of date: paste markdown_table()"
    for t in TABLES:
        assert f"`{t.name}`" in text


# --- cookies --------------------------------------------------------------------------------


def test_cookie_is_kind_and_stable_hash() -> None:
    c = cookies.cookie(cookies.Kind.PORT, "blue/b1")
    assert c == 0x035D7D1C2656FF81  # stable across processes and runs (blake2b, not hash())
    assert cookies.kind_of(c) is cookies.Kind.PORT
    assert c & cookies.kind_mask() == cookies.cookie_of_kind(cookies.Kind.PORT)
    peer = cookies.cookie(cookies.Kind.PEER_DEST, "red/r1@p-1")
    assert peer & cookies.kind_mask() == cookies.cookie_of_kind(cookies.Kind.PEER_DEST)
    assert peer != cookies.cookie(cookies.Kind.PEER_DEST, "red/r1@p-2")
    assert cookies.describe(c).startswith("PORT:")
    assert cookies.kind_of(0xFF << 56) is None
    assert all(0 <= cookies.object_hash(str(n)) < 1 << 56 for n in range(100))
