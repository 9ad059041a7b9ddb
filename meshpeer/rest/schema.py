"""A tiny declarative JSON-schema subset: validates request bodies and emits OpenAPI schemas.

One schema object serves both purposes, so the published document cannot drift from the checks.

- :class:`Obj` always means ``additionalProperties: false``: an unknown field is a 400 naming it.
- :class:`Str` formats ``cidr`` (strict: host bits set is an error), ``ip`` (IPv4 or IPv6, no
  zone index), ``mac`` (unicast, not all zeros) and ``name``; or an ``enum``.
- :class:`Int` rejects booleans and floats; :class:`Arr` bounds its length; :class:`Nullable`
  admits ``null``.

Only syntax lives here. Semantic rules (an IP inside its subnet, overlapping CIDRs, references to
other objects) belong to the controller core, which sees the whole intent.

:func:`validate` returns the value with ``ip``/``cidr``/``mac`` strings in canonical text
(``2001:DB8::1`` becomes ``2001:db8::1``, MACs lower-case), so the core compares like with like.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meshpeer.rest.errors import ApiError, bad_request

Format = Literal["cidr", "ip", "mac", "name"]
MAX_DEPTH = 32  # JSON nesting of a request body; the deepest the API takes is about 6


def _ip_patterns() -> tuple[str, str]:
    """IPv4 (dotted quad, no leading zeros) and IPv6 (RFC 4291 text, RFC 3986 grammar)."""
    octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    v4 = rf"{octet}(\.{octet}){{3}}"
    h16 = "[0-9a-fA-F]{1,4}"
    ls32 = f"({h16}:{h16}|{v4})"
    forms = [f"({h16}:){{6}}{ls32}", f"::({h16}:){{5}}{ls32}"]
    for before, after in ((0, 4), (1, 3), (2, 2), (3, 1), (4, 0)):
        head = f"{h16}" if before == 0 else f"(({h16}:){{0,{before}}}{h16})"
        forms.append(f"({head})?::({h16}:){{{after}}}{ls32}" if after else f"({head})?::{ls32}")
    forms.append(f"(({h16}:){{0,5}}{h16})?::{h16}")
    forms.append(f"(({h16}:){{0,6}}{h16})?::")
    return v4, "(" + "|".join(forms) + ")"


IPV4, IPV6 = _ip_patterns()

# Unanchored; matched with re.fullmatch (``$`` would accept a trailing newline). Written in the
# common subset of Python and ECMA-262 regexes, so the published document means the same.
# ``ip``/``cidr`` are checked against these first, then parsed; a CIDR's host bits must also be
# zero, which no pattern says (the format's description does). ``mac`` is a unicast MAC, as an
# OHC programs only those: the first octet's lowest bit clear (multicast and broadcast have it
# set), and not all zeros (which the description says).
PATTERNS: dict[str, str] = {
    "name": r"[a-z][a-z0-9-]{0,62}",
    "mac": r"[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}",
    "ip": f"({IPV4}|{IPV6})",
    "cidr": f"({IPV4}/(3[0-2]|[12]?[0-9])|{IPV6}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))",
}
FORMAT_NOTES: dict[str, str] = {
    "cidr": "an IPv4 or IPv6 network; host bits must be zero (10.1.0.0/16, not 10.1.0.1/16)",
    "ip": "an IPv4 or IPv6 address, no zone index",
    "mac": "a unicast MAC (first octet even: no multicast or broadcast), not 00:00:00:00:00:00",
}
ANY_MAC = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
ZERO_MAC = "00:00:00:00:00:00"
# compiled once: a batch create checks 5,000 bodies, and re's cache lookup per call showed
_MATCH = {
    name: re.compile(text).fullmatch for name, text in {**PATTERNS, "any_mac": ANY_MAC}.items()
}
_IPV4 = re.compile(IPV4).fullmatch  # a match is already canonical text (no leading zeros)


@dataclass(frozen=True)
class Str:
    """A string: a ``format``, an ``enum``, or a ``pattern`` (unanchored, matched whole), and
    ``reserved`` values it may not take (published as ``not: {enum: [...]}``)."""

    format: Format | None = None
    enum: tuple[str, ...] | None = None
    min_length: int = 0
    max_length: int | None = None
    description: str = ""
    pattern: str | None = None
    reserved: tuple[str, ...] = ()


@dataclass(frozen=True)
class Int:
    """An integer. As in JSON Schema, a number with a zero fraction (``5.0``) is one; it is
    normalised to ``5``."""

    minimum: int | None = None
    maximum: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Bool:
    description: str = ""


@dataclass(frozen=True)
class Arr:
    items: Schema
    min_items: int = 0
    max_items: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Obj:
    """A JSON object; ``name`` makes it a shared component (``#/components/schemas/<name>``)."""

    required: Mapping[str, Schema] = field(default_factory=dict)
    optional: Mapping[str, Schema] = field(default_factory=dict)
    name: str | None = None
    description: str = ""

    # every field's schema (required first), built once: validation looks fields up here
    props: Mapping[str, Schema] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        both = set(self.required) & set(self.optional)
        if both:
            raise ValueError(f"fields both required and optional: {sorted(both)}")
        object.__setattr__(self, "props", {**self.required, **self.optional})


@dataclass(frozen=True)
class Map:
    """A JSON object used as a dictionary: any keys, every value of ``values``."""

    values: Schema
    description: str = ""


@dataclass(frozen=True)
class Free:
    """Any JSON object (a document this API passes through, e.g. a federation view)."""

    description: str = ""


@dataclass(frozen=True)
class Num:
    """Any JSON number (integer or not)."""

    description: str = ""


@dataclass(frozen=True)
class OneOf:
    """Exactly one of ``options`` (published as ``oneOf``); options must exclude each other,
    e.g. by an ``enum`` discriminator field."""

    options: tuple[Schema, ...]
    description: str = ""


@dataclass(frozen=True)
class Nullable:
    inner: Schema


Schema = Str | Int | Num | Bool | Arr | Obj | Map | Free | OneOf | Nullable


def json_type(value: object) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_EXPECTED: dict[type, str] = {
    Str: "string",
    Int: "integer",
    Bool: "boolean",
    Arr: "array",
    Obj: "object",
    Map: "object",
    Free: "object",
}


def validate(schema: Schema, value: Any, path: str = "") -> Any:
    """Check ``value`` against ``schema``; return it (normalised) or raise a 400 naming the field."""
    # the two cases of nearly every field first (a batch create has 20k of them); the same
    # checks as the general path below, which any other value takes
    kind = type(schema)
    if kind is Str and type(value) is str:
        return _validate_str(schema, value, path or None)  # type: ignore[arg-type]
    if kind is Obj and type(value) is dict:
        return _validate_obj(schema, value, path)  # type: ignore[arg-type]
    return _validate_any(schema, value, path)


def _validate_any(schema: Schema, value: Any, path: str) -> Any:
    where = path or None
    if isinstance(schema, Nullable):
        return None if value is None else validate(schema.inner, value, path)
    if isinstance(schema, OneOf):
        return _validate_one_of(schema, value, path)
    if isinstance(schema, Num):
        if json_type(value) not in ("integer", "number"):
            raise bad_request(where, f"expected number, got {json_type(value)}")
        return value
    expected = _EXPECTED
    if isinstance(schema, Int) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if json_type(value) != expected[type(schema)]:
        raise bad_request(where, f"expected {expected[type(schema)]}, got {json_type(value)}")
    if isinstance(schema, Str):
        return _validate_str(schema, value, where)
    if isinstance(schema, Map):
        return {k: validate(schema.values, v, _join(path, k)) for k, v in value.items()}
    if isinstance(schema, Free):
        return value
    if isinstance(schema, Int):
        if schema.minimum is not None and value < schema.minimum:
            raise bad_request(where, f"must be >= {schema.minimum}, got {value}")
        if schema.maximum is not None and value > schema.maximum:
            raise bad_request(where, f"must be <= {schema.maximum}, got {value}")
        return value
    if isinstance(schema, Bool):
        return value
    if isinstance(schema, Arr):
        if len(value) < schema.min_items:
            raise bad_request(where, f"needs at least {schema.min_items} item(s), got {len(value)}")
        if schema.max_items is not None and len(value) > schema.max_items:
            raise bad_request(where, f"takes at most {schema.max_items} item(s), got {len(value)}")
        return [validate(schema.items, item, f"{path}[{i}]") for i, item in enumerate(value)]
    return _validate_obj(schema, value, path)


def _validate_one_of(schema: OneOf, value: Any, path: str) -> Any:
    passed = []
    for option in schema.options:
        try:
            passed.append(validate(option, value, path))
        except ApiError:
            continue
    if len(passed) != 1:
        raise bad_request(path or None, f"matches {len(passed)} of the alternatives, not one")
    return passed[0]


def _validate_obj(schema: Obj, value: dict[str, Any], path: str) -> dict[str, Any]:
    props = schema.props
    if not props.keys() >= value.keys():  # the first unknown field, in the body's order
        key = next(k for k in value if k not in props)
        raise bad_request(_join(path, key), "unknown field")
    if not value.keys() >= schema.required.keys():
        key = next(k for k in schema.required if k not in value)
        raise bad_request(_join(path, key), "required field is missing")
    return {key: validate(props[key], item, _join(path, key)) for key, item in value.items()}


def _validate_str(schema: Str, value: str, where: str | None) -> str:
    if len(value) < schema.min_length:
        raise bad_request(where, f"must be at least {schema.min_length} character(s) long")
    if schema.max_length is not None and len(value) > schema.max_length:
        raise bad_request(where, f"must be at most {schema.max_length} character(s) long")
    if schema.enum is not None and value not in schema.enum:
        raise bad_request(where, f"must be one of {', '.join(schema.enum)}; got {value!r}")
    if value in schema.reserved:
        raise bad_request(where, f"{value!r} is reserved; choose another name")
    if schema.pattern is not None and not re.fullmatch(schema.pattern, value):
        raise bad_request(where, f"{value!r} does not match {schema.pattern}")
    if schema.format is None:
        return value
    if schema.format == "mac":
        return _unicast_mac(value, where)
    if schema.format == "name":
        if not _MATCH["name"](value):
            raise bad_request(where, f"{value!r} is not a valid {schema.format}")
        return value.lower()
    if "%" in value:
        raise bad_request(where, f"{value!r}: IPv6 zone indexes are not allowed")
    if schema.format == "ip":
        if _IPV4(value):
            return value
        try:
            if not _MATCH["ip"](value):
                raise ValueError(value)
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise bad_request(where, f"{value!r} is not a valid IPv4 or IPv6 address") from None
    return _canonical_cidr(value, where)


def _unicast_mac(value: str, where: str | None) -> str:
    if not _MATCH["any_mac"](value):
        raise bad_request(where, f"{value!r} is not a valid mac")
    if not _MATCH["mac"](value):
        raise bad_request(
            where, f"{value!r} is a multicast or broadcast MAC; a unicast MAC is needed"
        )
    if value == ZERO_MAC:
        raise bad_request(where, f"{value!r} is the zero MAC; a unicast MAC is needed")
    return value.lower()


def _canonical_cidr(value: str, where: str | None) -> str:
    if "/" not in value:
        raise bad_request(where, f"{value!r} is not a CIDR: prefix length missing")
    if not _MATCH["cidr"](value):
        raise bad_request(where, f"{value!r} is not a valid CIDR")
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise bad_request(where, f"{value!r} is not a valid CIDR: {exc}") from None
        raise bad_request(where, f"{value!r} has host bits set; did you mean {loose}?") from None


def to_json_schema(schema: Schema, components: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.1 dialect) of ``schema``.

    With ``components``, named :class:`Obj` schemas are stored there and replaced by a ``$ref``;
    two different schemas under one name raise ``ValueError``.
    """
    if isinstance(schema, Nullable):
        return {"anyOf": [to_json_schema(schema.inner, components), {"type": "null"}]}
    out: dict[str, Any]
    if isinstance(schema, OneOf):
        out = {"oneOf": [to_json_schema(option, components) for option in schema.options]}
    elif isinstance(schema, Num):
        out = {"type": "number"}
    elif isinstance(schema, Str):
        out = {"type": "string"}
        if schema.format is not None:
            out["format"] = schema.format
            out["pattern"] = f"^{PATTERNS[schema.format]}$"
        elif schema.pattern is not None:
            out["pattern"] = f"^{schema.pattern}$"
        if schema.enum is not None:
            out["enum"] = list(schema.enum)
        if schema.reserved:
            out["not"] = {"enum": list(schema.reserved)}
        if schema.min_length:
            out["minLength"] = schema.min_length
        if schema.max_length is not None:
            out["maxLength"] = schema.max_length
    elif isinstance(schema, Int):
        out = {"type": "integer"}
        if schema.minimum is not None:
            out["minimum"] = schema.minimum
        if schema.maximum is not None:
            out["maximum"] = schema.maximum
    elif isinstance(schema, Bool):
        out = {"type": "boolean"}
    elif isinstance(schema, Map):
        out = {"type": "object", "additionalProperties": to_json_schema(schema.values, components)}
    elif isinstance(schema, Free):
        out = {"type": "object"}
    elif isinstance(schema, Arr):
        out = {"type": "array", "items": to_json_schema(schema.items, components)}
        if schema.min_items:
            out["minItems"] = schema.min_items
        if schema.max_items is not None:
            out["maxItems"] = schema.max_items
    else:
        return _obj_json_schema(schema, components)
    description = schema.description
    if isinstance(schema, Str) and schema.format in FORMAT_NOTES:
        description = "; ".join(filter(None, [description, FORMAT_NOTES[schema.format]]))
    if description:
        out["description"] = description
    return out


def _obj_json_schema(schema: Obj, components: dict[str, Any] | None) -> dict[str, Any]:
    props = {**schema.required, **schema.optional}
    out: dict[str, Any] = {
        "type": "object",
        "properties": {k: to_json_schema(v, components) for k, v in props.items()},
        "additionalProperties": False,
    }
    if schema.required:
        out["required"] = list(schema.required)
    if schema.description:
        out["description"] = schema.description
    if components is None or schema.name is None:
        return out
    if components.setdefault(schema.name, out) != out:
        raise ValueError(f"two different schemas are both named {schema.name!r}")
    return {"$ref": f"#/components/schemas/{schema.name}"}
