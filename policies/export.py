"""Export policies: what a VPC shows one peer.

A policy's *allowed space* is the intersection of every restriction it declares:

    (ranges, or all addresses when empty) ∩ (private space, if private_only) ∩ (IPv6, if ipv6_only)

An address is exported when it lies in the allowed space; a subnet is exported clipped to it; a
route (prefix) only when it fits inside it whole, because a wider route would attract traffic for
hidden addresses. Custom (static/dynamic) routes additionally need `custom_routes`.

Identity follows effect: `policy_id` hashes the allowed space and `custom_routes`, so policies that
export exactly the same things share one published service, however they were written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from ipaddress import collapse_addresses as _collapse_family
from typing import TypeAlias

from policies.overlap import Network, intersect, network_key, subnet_of

Address: TypeAlias = IPv4Address | IPv6Address

#: RFC 1918, RFC 6598 (shared/CGNAT) and IPv6 ULA (RFC 4193).
PRIVATE_RANGES: tuple[Network, ...] = tuple(
    ip_network(c)
    for c in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_EVERYTHING: tuple[Network, ...] = (ip_network("0.0.0.0/0"), ip_network("::/0"))
_KEYS = ("ranges", "private_only", "ipv6_only", "custom_routes")
_CANONICAL_VERSION = 1


class PolicyError(Exception):
    """A policy that cannot be accepted; `field` is the path of the offending value."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail)
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class ExportPolicy:
    """What one peer may see. The default exports every subnet and no custom route.

    `ranges` is stored sorted with nested/adjacent ranges collapsed, so `==` compares declarations;
    `policy_id` compares effect. A range that could export nothing under the flags (IPv4 with
    `ipv6_only`, public with `private_only`) is rejected as a likely mistake.
    """

    ranges: tuple[Network, ...] = ()
    private_only: bool = False
    ipv6_only: bool = False
    custom_routes: bool = False
    allowed: tuple[Network, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for i, r in enumerate(self.ranges):
            if self.ipv6_only and r.version == 4:
                raise PolicyError(f"ranges[{i}]", "IPv4 range while ipv6_only is set")
            if self.private_only and not any(intersect(r, p) for p in PRIVATE_RANGES):
                raise PolicyError(f"ranges[{i}]", "range is public while private_only is set")
        object.__setattr__(self, "ranges", _collapse(self.ranges))
        space = self.ranges or _EVERYTHING
        if self.ipv6_only:
            space = tuple(n for n in space if n.version == 6)
        if self.private_only:
            space = tuple(x for n in space for p in PRIVATE_RANGES if (x := intersect(n, p)))
        object.__setattr__(self, "allowed", _collapse(space))

    def canonical(self) -> dict[str, object]:
        """The effect of the policy as JSON-ready data: allowed space and custom-route flag."""
        return {
            "v": _CANONICAL_VERSION,
            "allow": [str(n) for n in self.allowed],
            "custom_routes": self.custom_routes,
        }

    @functools.cached_property
    def policy_id(self) -> str:
        """'p-' + 16 hex of sha256(canonical JSON): equal iff the policies export the same.

        Cached: the multiplexer asks for it for every peering on every write."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return "p-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_config(self) -> dict[str, object]:
        """The declared (normalised) form; `parse_export_policy` reads it back unchanged."""
        return {
            "ranges": [str(n) for n in self.ranges],
            "private_only": self.private_only,
            "ipv6_only": self.ipv6_only,
            "custom_routes": self.custom_routes,
        }

    def exports_ip(self, ip: Address) -> bool:
        return any(ip in n for n in self.allowed)

    def exports_prefix(self, prefix: Network) -> bool:
        """A prefix is exported only whole: it must fit inside the allowed space."""
        return any(subnet_of(prefix, n) for n in self.allowed)

    def exports_route(self, prefix: Network, is_custom: bool) -> bool:
        """Subnet routes pass the range filters; custom routes also need `custom_routes`."""
        return (self.custom_routes or not is_custom) and self.exports_prefix(prefix)

    def exported_subnets(self, subnets: Iterable[Network]) -> tuple[Network, ...]:
        """The parts of `subnets` the peer may see, sorted and without duplicates."""
        parts = {x for s in subnets for n in self.allowed if (x := intersect(s, n)) is not None}
        return tuple(sorted(parts, key=network_key))


def parse_export_policy(raw: object, path: str) -> ExportPolicy:
    """Validate a JSON/YAML-like mapping (None = default policy) found at `path`.

    Strict on purpose: unknown keys, non-bool flags and CIDRs with host bits set are errors, since
    a silently ignored typo here would publish addresses the user meant to hide.
    """
    if raw is None:
        return ExportPolicy()
    if not isinstance(raw, Mapping):
        raise PolicyError(path, "must be a mapping")
    for key in raw:
        if key not in _KEYS:
            raise PolicyError(_at(path, str(key)), f"unknown key (allowed: {', '.join(_KEYS)})")
    ranges = _parse_ranges(raw.get("ranges", []), _at(path, "ranges"))
    flags = [_parse_bool(raw, k, path) for k in _KEYS[1:]]
    try:
        return ExportPolicy(ranges, *flags)
    except PolicyError as e:
        raise PolicyError(_at(path, e.field), e.detail) from None


def ranges_outside(
    raw: object, path: str, subnets: Iterable[Network], routes: Iterable[Network]
) -> list[PolicyError]:
    """The ranges of a policy (``raw``, already accepted by :func:`parse_export_policy`) that
    overlap none of the VPC's ``subnets`` nor, when it exports custom routes, its custom
    ``routes``: they export nothing now. Accepted all the same (a subnet or route added later
    may fall in them, and one deleted may leave them empty: refusing would depend on the order
    of writes); the API answers them as warnings. One (field, detail) each, in request order.
    """
    if not isinstance(raw, Mapping):
        return []
    ranges = _parse_ranges(raw.get("ranges", []), _at(path, "ranges"))
    with_routes = raw.get("custom_routes") is True
    targets = [*subnets, *(routes if with_routes else ())]
    what = "subnet or custom route" if with_routes else "subnet"
    return [
        PolicyError(
            f"{_at(path, 'ranges')}[{i}]",
            f"{r} overlaps no {what} of this VPC: it exports nothing now",
        )
        for i, r in enumerate(ranges)
        if not any(intersect(r, t) for t in targets)
    ]


def _parse_bool(raw: Mapping[object, object], key: str, path: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(_at(path, key), "must be true or false")
    return value


def _parse_ranges(value: object, path: str) -> tuple[Network, ...]:
    if not isinstance(value, list | tuple):
        raise PolicyError(path, "must be a list of CIDR strings")
    out: list[Network] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or "/" not in item:
            raise PolicyError(f"{path}[{i}]", "must be a CIDR string like '10.0.0.0/16'")
        try:
            out.append(ip_network(item, strict=True))
        except ValueError as e:
            raise PolicyError(f"{path}[{i}]", f"not a network CIDR ({e})") from None
    return tuple(out)


def _collapse(nets: Iterable[Network]) -> tuple[Network, ...]:
    """Canonical form of a set of ranges: minimal CIDR cover, sorted (equal sets, equal tuples)."""
    nets = list(nets)
    v4 = _collapse_family(n for n in nets if isinstance(n, IPv4Network))
    v6 = _collapse_family(n for n in nets if isinstance(n, IPv6Network))
    return tuple(sorted([*v4, *v6], key=network_key))


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
