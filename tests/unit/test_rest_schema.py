"""Declarative schemas: validation (exact field paths, strict formats) and JSON Schema emission."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.rest import ApiError, Arr, Bool, Int, Nullable, Obj, Str, validate
from meshpeer.rest.schema import to_json_schema


def rejects(schema: Any, value: object) -> tuple[str | None, str]:
    with pytest.raises(ApiError) as info:
        validate(schema, value)
    assert info.value.status == 400 and info.value.error == "bad_request"
    return info.value.field, info.value.detail


def test_nested_paths_name_the_exact_field() -> None:
    schema = Obj({"a": Arr(Obj({"b": Arr(Int())}))})
    assert rejects(schema, {"a": [{"b": [1]}, {"b": [2, "x"]}]}) == (
        "a[1].b[1]",
        "expected integer, got string",
    )
    assert rejects(schema, {"a": [{"b": []}, {"c": 1}]}) == ("a[1].c", "unknown field")
    assert rejects(schema, {}) == ("a", "required field is missing")
    assert rejects(Arr(Int()), [1, None]) == ("[1]", "expected integer, got null")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10.0.0.1/24", "has host bits set; did you mean 10.0.0.0/24?"),
        ("2001:db8::1/64", "has host bits set; did you mean 2001:db8::/64?"),
        ("10.0.0.0", "prefix length missing"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("010.0.0.0/8", "not a valid CIDR"),
        ("banana/8", "not a valid CIDR"),
        ("fe80::%eth0/64", "zone"),
    ],
)
def test_cidr_is_strict(value: str, words: str) -> None:
    assert words in rejects(Str(format="cidr"), value)[1]


@pytest.mark.parametrize("value", ["10.0.0.256", "1.2.3", "::g", "fe80::1%eth0", " 10.0.0.1", ""])
def test_bad_ips(value: str) -> None:
    rejects(Str(format="ip"), value)


@pytest.mark.parametrize(
    ("schema", "value", "canonical"),
    [
        (Str(format="ip"), "2001:DB8:0::1", "2001:db8::1"),
        (Str(format="ip"), "192.0.2.1", "192.0.2.1"),
        (Str(format="cidr"), "2001:DB8::/32", "2001:db8::/32"),
        (Str(format="mac"), "02:AB:cd:00:00:01", "02:ab:cd:00:00:01"),
        (Str(format="name"), "a" + "-9" * 31, "a" + "-9" * 31),
    ],
)
def test_valid_values_come_back_canonical(schema: Str, value: str, canonical: str) -> None:
    assert validate(schema, value) == canonical


@pytest.mark.parametrize("value", ["", "9lives", "a_b", "a" * 64, "web\n", "Web"])
def test_bad_names(value: str) -> None:
    rejects(Str(format="name"), value)


@pytest.mark.parametrize("value", ["02:ab:cd:00:00", "02-ab-cd-00-00-01", "02:ab:cd:00:00:01\n"])
def test_bad_macs(value: str) -> None:
    rejects(Str(format="mac"), value)


def test_scalars_do_not_coerce() -> None:
    assert rejects(Int(), True)[1] == "expected integer, got boolean"
    assert rejects(Int(), "1")[1] == "expected integer, got string"
    assert rejects(Bool(), 0)[1] == "expected boolean, got integer"
    assert rejects(Str(), 5)[1] == "expected string, got integer"
    assert validate(Nullable(Int()), None) is None
    assert rejects(Int(), None)[1] == "expected integer, got null"
    assert rejects(Str(max_length=2), "abc")[1] == "must be at most 2 character(s) long"
    assert rejects(Arr(Int(), min_items=1), [])[1] == "needs at least 1 item(s), got 0"


def test_a_field_cannot_be_both_required_and_optional() -> None:
    with pytest.raises(ValueError, match="both required and optional"):
        Obj({"a": Int()}, {"a": Int()})


@given(st.ip_addresses())
def test_every_network_address_is_accepted_and_host_bits_are_not(addr: Any) -> None:
    for prefix in range(addr.max_prefixlen + 1):
        net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
        assert validate(Str(format="cidr"), str(net)) == str(net)
        if net.network_address != addr:
            assert "host bits set" in rejects(Str(format="cidr"), f"{addr}/{prefix}")[1]


def test_json_schema_emission() -> None:
    inner = Obj({"cidr": Str(format="cidr")}, name="Subnet")
    schema = Obj(
        {"name": Str(format="name"), "subnets": Arr(inner, max_items=2)},
        {"vlan": Nullable(Int(minimum=1)), "on": Bool(description="is on")},
    )
    components: dict[str, Any] = {}
    assert to_json_schema(schema, components) == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "format": "name", "pattern": "^[a-z][a-z0-9-]{0,62}$"},
            "subnets": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Subnet"},
                "maxItems": 2,
            },
            "vlan": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            "on": {"type": "boolean", "description": "is on"},
        },
        "additionalProperties": False,
        "required": ["name", "subnets"],
    }
    assert components["Subnet"]["additionalProperties"] is False
    # Without a component store, named objects are inlined.
    assert to_json_schema(inner)["properties"]["cidr"] == {"type": "string", "format": "cidr"}
