"""The simulated world, as a pure function of the sizes: VPCs, shards, peerings, hosts, endpoints.

Deterministic (seeded), so the orchestrator, the store preloader and the expectations agree:

- VPC ``v{i:03d}`` has subnet ``10.i.0.0/16`` and belongs to shard ``ctl{i % shards + 1}``.
- Peerings form a circulant graph: VPC i peers with i±1 .. i±(peers/2) (plus the opposite VPC
  when ``peers`` is odd). Both sides are configured, so every peering is ACTIVE.
- Each VPC has ``policies`` export policies: 0 exports everything, m >= 1 exports
  ``10.i.0.0/(16+m)`` (1/2^m of its endpoints). A VPC's k-th peer gets policy k % policies, so a
  VPC publishes at most ``policies`` service sets for its ``peers`` peerings (the multiplexer).
- Host i has endpoints of VPC i % vpcs and of ``vpcs_per_host - 1`` other random VPCs.
- Endpoint n of a VPC is ``10.i.(n % 256).(n // 256 + 2)``, so ranges cut through every VPC.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from policies.export import ExportPolicy, parse_export_policy


@dataclass(frozen=True)
class Sizes:
    hosts: int
    vpcs: int
    endpoints: int
    shards: int = 2
    peers_per_vpc: int = 4
    policies: int = 2
    vpcs_per_host: int = 2
    seed: int = 5


@dataclass(frozen=True)
class Ep:
    vpc: str
    name: str
    ip: str
    host: str


@dataclass
class Scenario:
    sizes: Sizes
    shard_of: dict[str, str] = field(default_factory=dict)  # vpc -> shard
    peers: dict[str, list[str]] = field(default_factory=dict)  # vpc -> peer VPCs, in order
    host_vpcs: dict[str, list[str]] = field(default_factory=dict)  # host -> its VPCs
    endpoints: list[Ep] = field(default_factory=list)
    next_index: dict[str, int] = field(default_factory=dict)  # vpc -> next endpoint index

    # --- names and addresses -----------------------------------------------------------------

    @property
    def vpcs(self) -> list[str]:
        return list(self.shard_of)

    @property
    def hosts(self) -> list[str]:
        return list(self.host_vpcs)

    @property
    def shards(self) -> list[str]:
        return [f"ctl{i + 1}" for i in range(self.sizes.shards)]

    def vpc_index(self, vpc: str) -> int:
        return int(vpc[1:])

    def subnet(self, vpc: str) -> str:
        return f"10.{self.vpc_index(vpc)}.0.0/16"

    def ip(self, vpc: str, n: int) -> str:
        return f"10.{self.vpc_index(vpc)}.{n % 256}.{n // 256 + 2}"

    @staticmethod
    def underlay(i: int) -> str:
        return f"192.168.{100 + i // 250}.{i % 250 + 1}"

    def export_config(self, vpc: str, m: int) -> dict[str, Any]:
        if m == 0:
            return {}
        return {"ranges": [f"10.{self.vpc_index(vpc)}.0.0/{16 + m}"]}

    def export_of(self, vpc: str, peer: str) -> dict[str, Any]:
        """The export policy ``vpc`` configures toward ``peer``."""
        return self.export_config(vpc, self.peers[vpc].index(peer) % self.sizes.policies)

    @cached_property
    def _policies(self) -> dict[tuple[str, str], ExportPolicy]:
        return {
            (v, p): parse_export_policy(self.export_of(v, p), "export")
            for v in self.vpcs
            for p in self.peers[v]
        }

    def policy(self, vpc: str, peer: str) -> ExportPolicy:
        return self._policies[(vpc, peer)]

    def hosts_of(self, vpc: str) -> list[str]:
        return [h for h, vs in self.host_vpcs.items() if vpc in vs]

    # --- expectations ------------------------------------------------------------------------

    def streams_of(self, host: str) -> int:
        """How many streams an OHC on ``host`` follows once converged (ohc/subscriptions.py)."""
        subs: set[tuple[str, str, str]] = {("endpoint", s, "") for s in self.shards}
        for v in self.host_vpcs[host]:
            subs |= {(svc, v, "") for svc in ("peering", "destination", "forwarding", "lb")}
            for u in self.peers[v]:
                pid = self.policy(u, v).policy_id  # u's policy toward v
                subs |= {(svc, u, pid) for svc in ("destination", "forwarding", "lb")}
        return len(subs)

    @cached_property
    def _endpoints_of(self) -> dict[str, list[Ep]]:
        out: dict[str, list[Ep]] = {v: [] for v in self.vpcs}
        for e in self.endpoints:
            out[e.vpc].append(e)
        return out

    def needed(self, host: str) -> tuple[set[tuple[str, str]], set[str]]:
        """What an OHC on ``host`` needs, from the topology alone (the oracle of "limited
        information"): (VPC, IP) of every destination (every endpoint of its VPCs, and every
        endpoint of their peers that the peer exports to them), and the VPCs whose routes
        and load balancers it needs (its own and their peers)."""
        dests: set[tuple[str, str]] = set()
        vpcs: set[str] = set()
        for v in self.host_vpcs[host]:
            vpcs.add(v)
            dests |= {(v, e.ip) for e in self._endpoints_of[v]}
            for u in self.peers[v]:
                vpcs.add(u)
                pol = self.policy(u, v)  # u's export toward v
                dests |= {
                    (u, e.ip)
                    for e in self._endpoints_of[u]
                    if pol.exports_ip(ipaddress.ip_address(e.ip))
                }
        return dests, vpcs

    def recipients(self, vpc: str, ip: str) -> set[str]:
        """Hosts that must receive a new endpoint ``ip`` of ``vpc`` in a destination stream."""
        addr = ipaddress.ip_address(ip)
        out = set(self.hosts_of(vpc))
        for u in self.peers[vpc]:
            if self.policy(vpc, u).exports_ip(addr):
                out |= set(self.hosts_of(u))
        return out

    def new_endpoint(self, vpc: str, name: str, k: int) -> Ep:
        """One more endpoint of ``vpc``, on the k-th host (mod) that already has the VPC."""
        n = self.next_index[vpc]
        self.next_index[vpc] = n + 1
        hosts = self.hosts_of(vpc)
        return Ep(vpc, name, self.ip(vpc, n), hosts[k % len(hosts)])


def build(sizes: Sizes) -> Scenario:
    if not 1 <= sizes.vpcs <= 250:
        raise ValueError("vpcs: 1..250 (one 10.i.0.0/16 each)")
    if sizes.hosts < sizes.vpcs:
        raise ValueError("hosts must be >= vpcs (every VPC has at least one host)")
    if sizes.peers_per_vpc >= sizes.vpcs:
        raise ValueError("peers-per-vpc must be < vpcs")
    rng = random.Random(sizes.seed)
    sc = Scenario(sizes)
    names = [f"v{i:03d}" for i in range(sizes.vpcs)]
    for i, v in enumerate(names):
        sc.shard_of[v] = f"ctl{i % sizes.shards + 1}"
    n = sizes.vpcs
    offsets = list(range(1, sizes.peers_per_vpc // 2 + 1))
    for i, v in enumerate(names):
        peers = []
        for d in offsets:
            peers += [names[(i + d) % n], names[(i - d) % n]]
        if sizes.peers_per_vpc % 2 and n % 2 == 0:
            peers.append(names[(i + n // 2) % n])
        sc.peers[v] = list(dict.fromkeys(p for p in peers if p != v))
    k = min(sizes.vpcs_per_host, n)
    for h in range(sizes.hosts):
        first = names[h % n]
        others = rng.sample([v for v in names if v != first], k - 1)
        sc.host_vpcs[f"h{h:04d}"] = [first, *others]
    sc.next_index = dict.fromkeys(names, 0)
    placed = {v: sc.hosts_of(v) for v in names}
    for e in range(sizes.endpoints):
        v = names[e % n]
        idx = sc.next_index[v]
        sc.next_index[v] = idx + 1
        hosts = placed[v]
        sc.endpoints.append(Ep(v, f"e{idx:05d}", sc.ip(v, idx), hosts[idx % len(hosts)]))
    return sc
