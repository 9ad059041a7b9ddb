"""The peering service's object: the shard writes it, the OHC parses it, with one type."""

from __future__ import annotations

from typing import Any

import pytest

from meshpeer.protocol import ProtocolError
from meshpeer.protocol.peering import PeeringObject
from policies.routes import DEFAULT_PREFERENCE

GOOD = PeeringObject(
    peering="plum-teak",
    peer_vpc="teak",
    peer_vni=1000,
    policy_id="p-0123456789abcdef",
    controller="http://169.254.9.10:8080",
    grant="mpg1.k1.e30.c2ln",
    expires_at=1200.0,
    import_custom_routes=True,
    inbound="replies",
    preference=250,
)


def test_what_is_written_parses_back_equal() -> None:
    assert PeeringObject.parse(GOOD.to_json()) == GOOD
    assert PeeringObject.parse(GOOD.to_json() | {"expires_at": 1200}) == GOOD


def test_an_object_without_the_import_flag_imports_nothing() -> None:
    old = {k: v for k, v in GOOD.to_json().items() if k != "import_custom_routes"}
    assert PeeringObject.parse(old).import_custom_routes is False


def test_an_object_without_inbound_lets_everything_in_as_before() -> None:
    old = {k: v for k, v in GOOD.to_json().items() if k != "inbound"}
    assert PeeringObject.parse(old).inbound == "all"


def test_an_object_without_preference_has_the_default_as_before() -> None:
    old = {k: v for k, v in GOOD.to_json().items() if k != "preference"}
    assert PeeringObject.parse(old).preference == DEFAULT_PREFERENCE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("peering", ""),
        ("peering", "a/b"),
        ("peer_vpc", None),
        ("peer_vni", 0),
        ("peer_vni", 1 << 24),
        ("peer_vni", True),
        ("peer_vni", "7"),
        ("policy_id", 5),
        ("controller", "ftp://x"),
        ("controller", "http://a b"),
        ("grant", "not a grant"),
        ("expires_at", "soon"),
        ("expires_at", float("nan")),
        ("import_custom_routes", "yes"),
        ("import_custom_routes", 1),
        ("inbound", "some"),
        ("inbound", None),
        ("inbound", ["replies"]),
        ("preference", -1),
        ("preference", 65536),
        ("preference", True),
        ("preference", "100"),
        ("preference", 1.5),
        ("preference", None),
    ],
)
def test_a_bad_field_is_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError) as e:
        PeeringObject.parse(GOOD.to_json() | {field: value})
    assert e.value.field == field


def test_a_missing_field_or_a_non_object_is_refused() -> None:
    without = {k: v for k, v in GOOD.to_json().items() if k != "grant"}
    with pytest.raises(ProtocolError, match="grant"):
        PeeringObject.parse(without)
    with pytest.raises(ProtocolError, match="expected an object"):
        PeeringObject.parse(["plum-teak"])
