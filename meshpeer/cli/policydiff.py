"""``meshpeer policy diff VPC PEERING [export flags]``: what an export policy change would
expose to the peer or hide from it, and on which of the peer's hosts, before it is applied.

Pure: the side's current export and the proposed one are read by ``policies.export`` (the code
the shards use), against the VPC's subnets, endpoints and static routes; the peer VPC's
endpoints give the hosts that would learn or forget each address (every host of the peer VPC
follows this VPC's destinations under the side's policy: docs/protocol.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.export import ExportPolicy, parse_export_policy
from policies.overlap import Network, intersect, network_key, subnet_of

Json = Mapping[str, Any]


@dataclass(frozen=True)
class PolicyDiff:
    side: str  # vpc/name
    peer_vpc: str
    state: str
    before: str  # policy ids
    after: str
    exposed: tuple[str, ...]  # "endpoint b3 10.1.0.200 (hv2)", "subnet part 10.1.0.128/25", ...
    hidden: tuple[str, ...]
    peer_hosts: tuple[str, ...]  # the peer VPC's hosts: they would learn or forget them

    @property
    def changes(self) -> bool:
        return bool(self.exposed or self.hidden)

    def text(self) -> str:
        lines = [
            f"policy diff {self.side} (peer {self.peer_vpc}, {self.state}): "
            f"{self.before} -> {self.after}"
        ]
        if self.before == self.after:
            lines.append("same effect: nothing would change")
        lines += [f"  exposes  {x}" for x in self.exposed]
        lines += [f"  hides    {x}" for x in self.hidden]
        if self.changes:
            hosts = ", ".join(self.peer_hosts) or "none yet"
            when = "now" if self.state == "ACTIVE" else "once the peering is ACTIVE"
            lines.append(f"  on the peer's hosts ({when}): {hosts}")
        return "\n".join(lines)


def _parts(policy: ExportPolicy, subnets: Sequence[str]) -> list[Network]:
    return list(policy.exported_subnets(ipaddress.ip_network(s) for s in subnets))


def minus(a: Sequence[Network], b: Sequence[Network]) -> list[Network]:
    """The address ranges of ``a`` outside every range of ``b``, sorted."""
    left = list(a)
    for cut in b:
        out: list[Network] = []
        for net in left:
            if intersect(net, cut) is None:
                out.append(net)
            elif not subnet_of(net, cut):  # the cut is inside: keep the rest
                out.extend(_exclude(net, cut))
        left = out
    return sorted(left, key=network_key)


def _exclude(net: Network, cut: Network) -> list[Network]:
    if isinstance(net, ipaddress.IPv4Network) and isinstance(cut, ipaddress.IPv4Network):
        return list(net.address_exclude(cut))
    if isinstance(net, ipaddress.IPv6Network) and isinstance(cut, ipaddress.IPv6Network):
        return list(net.address_exclude(cut))
    return [net]


def diff(
    side: Json,
    proposed_export: Json,
    vpc: Json,
    endpoints: Sequence[Json],
    routes: Sequence[Json],
    peer_endpoints: Sequence[Json],
) -> PolicyDiff:
    """``side``: the peering side as the API shows it; ``proposed_export``: the export object
    a ``PUT`` would send; ``vpc``, ``endpoints``, ``routes``: the side's VPC; ``peer_endpoints``:
    the peer VPC's (for its hosts). Raises ``policies.export.PolicyError`` on a bad proposal."""
    before = parse_export_policy(side["export"], "export")
    after = parse_export_policy(proposed_export, "export")
    exposed: list[str] = []
    hidden: list[str] = []
    subnets = [s["cidr"] for s in vpc["subnets"]]
    old, new = _parts(before, subnets), _parts(after, subnets)
    exposed += [f"subnet range {n}" for n in minus(new, old)]
    hidden += [f"subnet range {n}" for n in minus(old, new)]
    for e in endpoints:
        ip = ipaddress.ip_address(e["ip"])
        was, will = before.exports_ip(ip), after.exports_ip(ip)
        if was != will:
            what = f"endpoint {e['name']} {e['ip']} ({e.get('host') or 'no host'})"
            (exposed if will else hidden).append(what)
    for r in routes:
        prefix = ipaddress.ip_network(r["prefix"])
        was, will = before.exports_route(prefix, True), after.exports_route(prefix, True)
        if was != will:
            what = f"route {r['name']} {r['prefix']} via {r['next_hop']}"
            (exposed if will else hidden).append(what)
    hosts = sorted({e["host"] for e in peer_endpoints if e.get("host")})
    return PolicyDiff(
        f"{side['vpc']}/{side['name']}",
        side["peer_vpc"],
        side["state"],
        before.policy_id,
        after.policy_id,
        tuple(exposed),
        tuple(hidden),
        tuple(hosts),
    )
