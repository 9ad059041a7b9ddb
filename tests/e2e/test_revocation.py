"""A deleted peering ends every path between the two VPCs, and a re-created one with
``?wait=programmed`` answers ``programmed: true`` only when they all forward (issue 21,
parts 2 and 3).

On mesh.yaml blue (ctl1: b1 on hv1, b2 on hv2) peers with red (ctl2: r1 on hv2, r2 on hv3):
b2 and r1 share hv2, the other pairs cross hosts and shards. Each cycle deletes blue's side,
waits (deadline) until no blue <-> red pair answers a probe, in either direction, then
re-creates it with ``?wait=programmed`` and requires the first packet of every pair, b2 -> r1
first, to be answered. Every step waits for a condition with a deadline; nothing asserts a
duration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from meshpeer.lab import controllers
from meshpeer.lab.probe import answering, answers, until, vpc_pairs
from tests.integration.labkit import E2E_TOPOLOGIES as TOPOLOGIES
from tests.integration.labkit import Lab, running

CYCLES = 5
CUT_DEADLINE = 10.0  # seconds for every pair to stop after the DELETE (a second is expected)
PEERING = {"name": "blue-red", "peer_vpc": "red"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """mesh.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running("mesh.yaml", TOPOLOGIES) as the_lab:
        yield the_lab


def test_delete_cuts_every_pair_and_wait_programmed_means_the_first_packet_passes(
    lab: Lab,
) -> None:
    blue = controllers.client_for(lab.plan, "ctl1")
    pairs = vpc_pairs(lab.plan, "blue", "red", skip={v.name for v in lab.plan.vms if v.defer})
    names = {f"{a.name}->{b.name}" for a, b in pairs}
    assert {"b2->r1", "r1->b2", "b1->r1", "r2->b1"} <= names  # same host and across hosts
    assert until(lambda: set(answering(pairs)) == names, timeout=10) is not None, "not peered"
    b2, r1 = lab.vm("b2"), lab.vm("r1")
    cuts: list[float] = []
    for cycle in range(CYCLES):
        t0 = time.monotonic()
        blue.delete("/v1/vpcs/blue/peerings/blue-red")
        cut = until(lambda: not answering(pairs), timeout=CUT_DEADLINE, interval=0.01)
        still = answering(pairs)
        assert cut is not None and not still, f"cycle {cycle}: {still} still forward"
        cuts.append(time.monotonic() - t0)

        made = blue.post("/v1/vpcs/blue/peerings?wait=programmed&timeout=10", PEERING)
        assert made["state"] == "ACTIVE", made
        assert made["programmed"] is True, f"cycle {cycle}: {made['pending_hosts']} pending"
        assert answers(b2, r1.ip, wait=1.0)(), f"cycle {cycle}: first b2 -> r1 lost"
        missing = names - set(answering(pairs, wait=1.0))
        assert not missing, f"cycle {cycle}: programmed, but {sorted(missing)} do not forward"
    print(f"\npeering DELETE -> no pair answers (probe rounds of 200 ms): "
          f"{', '.join(f'{c * 1000:.0f}' for c in cuts)} ms")  # fmt: skip
