"""Small builders for controller unit tests."""

from __future__ import annotations

import ipaddress

from meshpeer.controller import intent as ops
from meshpeer.controller.model import Backend, Host, Intent, Spillover, Subnet
from meshpeer.controller.peering import View, federation_view
from meshpeer.directory import Directory, parse_directory
from meshpeer.protocol.peering import Inbound
from policies.export import ExportPolicy, parse_export_policy
from policies.routes import DEFAULT_PREFERENCE

KEY = "ab" * 32


def directory(**vpcs_by_shard: list[str]) -> Directory:
    shards = vpcs_by_shard or {"ctl1": ["blue", "green"], "ctl2": ["red"]}
    return parse_directory(
        {
            "shards": {
                name: {
                    "url": f"http://169.254.9.{i + 10}:8080",
                    "vni_range": [1000 * (i + 1), 1000 * (i + 1) + 999],
                    "vpcs": vpcs,
                }
                for i, (name, vpcs) in enumerate(sorted(shards.items()))
            },
            "grant_keys": {"k1": KEY},
            "federation_token": "f" * 20,
        }
    )


def subnets(*cidrs: str) -> list[Subnet]:
    return [Subnet(f"s{i}", ipaddress.ip_network(c)) for i, c in enumerate(cidrs)]


def add_vpc(intent: Intent, d: Directory, shard: str, name: str, *cidrs: str) -> None:
    intent.put(ops.new_vpc(intent, d, shard, name, subnets(*cidrs), None))


def add_vm(
    intent: Intent, vpc: str, name: str, ip: str, host: str = "hv1", kind: str = "vm"
) -> None:
    intent.put(ops.new_endpoint(intent, vpc, name, kind, ipaddress.ip_address(ip), None, host, []))
    if host not in intent.hosts:
        n = len(intent.hosts) + 1
        intent.put(Host(host, ipaddress.ip_address(f"169.254.101.{10 + n}")))


def add_ilb(
    intent: Intent,
    vpc: str,
    name: str,
    ip: str,
    backends: dict[str, int],
    spillover: dict[tuple[str, str], int] | None = None,
) -> None:
    bs = [Backend(b, w) for b, w in backends.items()]
    spill = [Spillover(v, e, w) for (v, e), w in (spillover or {}).items()]
    vip = ipaddress.ip_address(ip)
    intent.put(ops.new_endpoint(intent, vpc, name, "ilb", vip, None, None, bs, None, spill))


def peer(
    intent: Intent,
    vpc: str,
    other: str,
    export: dict[str, object] | None = None,
    import_custom_routes: bool = False,
    name: str | None = None,
    inbound: Inbound = "all",
    preference: int = DEFAULT_PREFERENCE,
) -> None:
    policy: ExportPolicy = parse_export_policy(export, "export")
    name = name or f"to-{other}"
    intent.put(
        ops.new_peering(
            intent, vpc, name, other, policy, import_custom_routes, None, inbound, preference
        )
    )


def views(intent: Intent, shard_of: dict[str, str]) -> dict[str, View]:
    return {v: federation_view(intent, shard_of.get(v, "ctl1"), v) for v in intent.vpcs}
