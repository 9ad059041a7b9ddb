"""IPv6-only VPCs on a whole lab: neighbour discovery answered by the OHC (ohc/nd.py).

On tests/e2e/topologies/ipv6.yaml. The VMs' kernels resolve their gateway and their own VPC's
addresses through the nd_target flows and the OHC's advertisements; nothing else answers (no
flooding, no VM sees another's solicitation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from meshpeer.lab import controllers
from meshpeer.lab.cli import load_topology
from ohc.compiler import gateway_mac
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, check_matrix, running

TOPOLOGY = "ipv6.yaml"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """ipv6.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running(TOPOLOGY, E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def neighbours(lab: Lab, vm: str) -> dict[str, str]:
    """The VM's IPv6 neighbour cache: address -> 'lladdr ... [router] STATE'."""
    out = lab.sh(vm, "ip", "-6", "neigh", "show", "dev", "eth0")
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line}


def test_own_vpc_across_hosts_resolves_the_neighbour_and_pings(lab: Lab) -> None:
    assert lab.ping("s1", "s2", count=3)
    entry = neighbours(lab, "s1")[lab.vm("s2").ip]
    assert f"lladdr {lab.vm('s2').mac}" in entry and "router" not in entry, entry


def test_peered_vpc_across_shards_goes_through_the_gateway_as_a_router(lab: Lab) -> None:
    assert lab.ping("s1", "e1", count=3)
    assert lab.ping("e1", "s1", count=3)
    vni = controllers.client_for(lab.plan, "ctl1").get("/v1/vpcs/sky")["vni"]
    entry = neighbours(lab, "s1")[lab.vm("s1").gateway]
    assert f"lladdr {gateway_mac(vni)} router" in entry, entry


def test_not_peered_and_unknown_addresses_get_no_answer(lab: Lab) -> None:
    assert not lab.ping("s1", "f1", count=2)
    assert not lab.ping("f1", "s1", count=2)
    lab.sh("s1", "ping", "-n", "-q", "-c", "2", "-W", "1", "fd00:10::99", check=False)
    entry = neighbours(lab, "s1").get("fd00:10::99", "")
    assert "lladdr" not in entry, entry


def test_matrix_equals_expectation(lab: Lab) -> None:
    check_matrix(lab, load_topology(os.path.join(E2E_TOPOLOGIES, TOPOLOGY)))
