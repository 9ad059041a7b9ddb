"""On-demand offload of IPv6 pairs on a whole lab (issue 14; docs/gateways.md, on-demand),
netns backend only. On tests/e2e/topologies/gateway6.yaml blue's side toward red says
on-demand: b1 (hv1) pings r1 (hv2) at 100 pps through the gateways; hv1's switch learns the
pair's counter (ipv6_dst), its OHC finds it busy and follows red's destination stream for r1
only, and compiles r1's direct flow; nothing is lost across the switch; r2 stays on the
gateways; once b1 stops, the pair goes back."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from meshpeer.lab import ovs
from meshpeer.lab.plan import NETNS, HostPlan
from tests.e2e.traffic import Pinger
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(
    os.environ.get("MESHPEER_LAB_BACKEND", NETNS) != NETNS,
    reason="gateway e2e runs on the netns backend only",
)

DEADLINE = 60.0


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """gateway6.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running("gateway6.yaml", E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def flows_for(host: HostPlan, ip: str) -> dict[int, int]:
    """Table -> how many of the host's flows match exactly ``ip`` as IPv6 destination: l3_lookup
    (30) holds an offloaded pair's direct flow, offload_count (35) the pair's counter."""
    pattern = re.compile(rf"table=(\d+),.*ipv6_dst={re.escape(ip)}[, ]")
    found: dict[int, int] = {}
    for line in ovs.ofctl(host, "dump-flows").splitlines():
        if m := pattern.search(line):
            found[int(m.group(1))] = found.get(int(m.group(1)), 0) + 1
    return found


def test_a_busy_ipv6_pair_goes_direct_and_back(lab: Lab) -> None:
    b1, r1, r2 = lab.vm("b1"), lab.vm("r1"), lab.vm("r2")
    hv1 = lab.host("hv1")
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1 through the gateways")
    assert 30 not in flows_for(hv1, r1.ip)  # through the gateways to start with
    with Pinger(b1, r1.ip, count=10**6, interval=0.01) as pinger:
        assert pinger.wait_reply_after(0, DEADLINE) is not None
        wait_for(lambda: 30 in flows_for(hv1, r1.ip), DEADLINE, what="r1's pair direct")
        assert flows_for(hv1, r1.ip).get(35) == 1  # its counter, learned on ipv6_dst
        assert lab.ping("b1", "r2")  # another address of red: still through the gateways
        assert 30 not in flows_for(hv1, r2.ip)
        offloaded_at = pinger.last_reply() or 0.0
        wait_for(lambda: len(pinger.replies_after(offloaded_at)) >= 20, DEADLINE,
                 what="replies on the direct path")  # fmt: skip
        result = pinger.stop()
    assert result.gaps() == []  # nothing lost across the switch
    wait_for(lambda: 30 not in flows_for(hv1, r1.ip), DEADLINE, what="the pair back")
    wait_for(lambda: lab.ping("b1", "r1"), DEADLINE, what="b1 pings r1 through the gateways")
