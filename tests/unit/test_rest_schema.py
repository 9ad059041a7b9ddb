"""Declarative schemas: validation (exact field paths, strict formats) and JSON Schema emission."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpeer.rest import ApiError, Arr, Bool, Free, Int, Map, Nullable, Obj, Str, validate
from meshpeer.rest.schema import PATTERNS, Num, OneOf, to_json_schema


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


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ff:ff:ff:ff:ff:ff", "multicast or broadcast"),
        ("01:00:5e:00:00:01", "multicast or broadcast"),  # IPv4 multicast
        ("33:33:00:00:00:01", "multicast or broadcast"),  # IPv6 multicast
        ("03:AB:cd:00:00:01", "multicast or broadcast"),
        ("00:00:00:00:00:00", "the zero MAC"),
    ],
)
def test_only_unicast_macs_which_an_ohc_programs(value: str, words: str) -> None:
    """The OHC skips these (protocol/objects.py parse_mac); the API refuses them (issue 17)."""
    assert words in rejects(Str(format="mac"), value)[1]


def test_the_mac_pattern_is_unicast_and_the_zero_mac_is_in_words() -> None:
    published = to_json_schema(Str(format="mac"))
    assert re.fullmatch(published["pattern"][1:-1], "02:00:00:00:00:01")
    assert not re.fullmatch(published["pattern"][1:-1], "ff:ff:ff:ff:ff:ff")
    assert "00:00:00:00:00:00" in published["description"]


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
    cidr = to_json_schema(inner)["properties"]["cidr"]
    assert (cidr["type"], cidr["format"]) == ("string", "cidr")
    assert cidr["pattern"] == f"^{PATTERNS['cidr']}$" and "host bits" in cidr["description"]


# --- the published document and the checks agree ----------------------------------------------


@given(st.from_regex(f"^{PATTERNS['ip']}$", fullmatch=True))
def test_every_string_the_ip_pattern_allows_is_an_address(text: str) -> None:
    assert validate(Str(format="ip"), text) == str(ipaddress.ip_address(text))


@given(st.ip_addresses().map(str) | st.ip_addresses(v=6).map(lambda a: a.exploded.upper()))
def test_the_ip_pattern_allows_every_address(text: str) -> None:
    validate(Str(format="ip"), text)


@given(st.from_regex(f"^{PATTERNS['cidr']}$", fullmatch=True))
def test_every_string_the_cidr_pattern_allows_parses_or_has_host_bits(text: str) -> None:
    network = ipaddress.ip_network(text, strict=False)
    if str(network.network_address) == str(ipaddress.ip_address(text.split("/")[0])):
        assert validate(Str(format="cidr"), text) == str(network)
    else:
        assert "host bits set" in rejects(Str(format="cidr"), text)[1]


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3", "1:2:3:4:5:6:7:8::", "::1%eth0", "1.2.3.4 "])
def test_what_the_ip_pattern_refuses_the_server_refuses(text: str) -> None:
    rejects(Str(format="ip"), text)


def test_an_integral_number_is_an_integer_as_in_json_schema() -> None:
    # JSON Schema counts 5.0 as an integer; so does the server (normalised to 5).
    assert validate(Int(0, 10), 5.0) == 5 and type(validate(Int(0, 10), 5.0)) is int
    assert rejects(Int(0, 10), 5.5) == (None, "expected integer, got number")
    assert rejects(Int(0, 10), 11.0)[1] == "must be <= 10, got 11"


def test_reserved_values_and_patterns_are_checked_and_published() -> None:
    name = Str(format="name", reserved=("effective",))
    assert rejects(name, "effective")[1] == "'effective' is reserved; choose another name"
    assert to_json_schema(name)["not"] == {"enum": ["effective"]}
    key = Str(pattern="[a-z]{1,3}")
    assert validate(key, "abc") == "abc"
    rejects(key, "abcd")
    assert to_json_schema(key)["pattern"] == "^[a-z]{1,3}$"


def test_maps_free_objects_numbers_and_one_of() -> None:
    counts = Map(Int(0))
    assert validate(counts, {"a": 1}) == {"a": 1}
    assert rejects(counts, {"a": -1})[0] == "a"
    assert validate(Free(), {"x": [1]}) == {"x": [1]}
    assert validate(Num(), 0.5) == 0.5
    msg = OneOf((Obj({"t": Str(enum=("a",))}), Obj({"t": Str(enum=("b",)), "n": Num()})))
    assert validate(msg, {"t": "b", "n": 1}) == {"t": "b", "n": 1}
    assert rejects(msg, {"t": "b"})[1] == "matches 0 of the alternatives, not one"
    assert to_json_schema(counts) == {
        "type": "object",
        "additionalProperties": {"type": "integer", "minimum": 0},
    }
    assert [o["properties"]["t"]["enum"] for o in to_json_schema(msg)["oneOf"]] == [["a"], ["b"]]


def test_an_object_names_its_first_unknown_field_then_its_first_missing_one() -> None:
    """In the body's order for unknown fields, in the schema's for missing ones; unknown
    before missing, whatever the body holds."""
    schema = Obj({"a": Int(), "b": Int(), "c": Int()}, {"d": Int()})
    assert rejects(schema, {"z": 1, "d": 1, "y": 2}) == ("z", "unknown field")
    assert rejects(schema, {"d": 1, "y": 1, "z": 2}) == ("y", "unknown field")
    assert rejects(schema, {"c": 1, "d": 1}) == ("a", "required field is missing")
    assert rejects(schema, {"a": 1, "d": 1}) == ("b", "required field is missing")
    assert rejects(schema, {"a": "x", "b": 1, "c": 1}) == ("a", "expected integer, got string")


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_comes_back_as_ipaddress_renders_it(ip: ipaddress.IPv4Address) -> None:
    """IPv4 text that the pattern takes is returned as given: it is already canonical."""
    assert validate(Str(format="ip"), str(ip)) == str(ip)
