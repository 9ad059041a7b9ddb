"""The flow syncer against real OVS: one bundle, only the delta, rollback, OVS restarts.

``tests/integration/apps/syncer_app.py`` runs under meshpeer-manager inside hv1's namespace
and connects out to br-int's passive listener. It keeps br-int equal to a desired state in a
JSON file and writes a status file (every sync: reason, plan counts, error, timings).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from meshpeer.lab import ovs
from meshpeer.lab.plan import HostPlan, LabPlan
from meshpeer.lab.procs import spawn_manager, terminate
from meshpeer.lab.sh import netns_cmd
from ohc.flows import (
    Apply,
    Bucket,
    DecTtl,
    Flow,
    Goto,
    Group,
    Learn,
    Match,
    Move,
    Output,
    Resubmit,
    SetField,
    ToGroup,
    WriteMetadata,
)
from ohc.syncer import CANARY, SwitchState
from tests.integration.apps.syncer_app import encode_state
from tests.integration.labkit import ROOT, Lab

HOST = "hv1"
PORT_A1, PORT_A2 = 10, 11  # a1 and a2's ofports on hv1 (plumbing.yaml)
GROUP = Group(7, "select", (Bucket((Output(PORT_A1),), 3), Bucket((Output(PORT_A2),), 1)))
# A bucket watching a port (gateway liveness, docs/gateways.md): the group as read back
WATCHED = Group(
    8, "select", (Bucket((Output(PORT_A1),), 1, PORT_A1), Bucket((Output(PORT_A2),), 1))
)
# Hit by a1's ARP requests; never changed by any update below, so its counters must survive.
UNTOUCHED = Flow(0, 5, Match.of(in_port=PORT_A1, eth_type=0x0806), (), cookie=0x0100_0000_0000_0001)


def cookie(kind: int, obj: int) -> int:
    return (kind << 56) | obj


def desired_state(n_routes: int = 200, n_subnets: int = 100) -> SwitchState:
    """A few hundred flows of every shape ohc.flows has, and two select groups."""
    flows = {UNTOUCHED}
    for i in range(n_routes):
        flows.add(
            Flow(
                0,
                100,
                Match.of(eth_type=0x0800, ipv4_dst=f"10.9.{i // 250}.{i % 250 + 1}"),
                # Deliberately out of execution order and with an upper-case MAC: the syncer
                # compares canonical forms, so this must still read back as "in sync".
                (
                    Goto(10),
                    Apply((SetField("eth_dst", f"02:AA:00:00:{i // 256:02X}:{i % 256:02X}"),)),
                ),
                cookie(2, i),
            )
        )
    for i in range(n_subnets):
        flows.add(
            Flow(
                10,
                50,
                Match.of(
                    eth_type=0x0800, ipv4_dst=(f"10.{100 + i // 256}.{i % 256}.0", "255.255.255.0")
                ),
                (Apply((DecTtl(), SetField("tunnel_id", 5000 + i), Output(1))),),
                cookie(3, i),
            )
        )
    flows |= {
        Flow(10, 60, Match.of(eth_type=0x0800, ipv4_dst="10.7.0.1"), (Apply((ToGroup(7),)),), cookie(4, 1)),
        Flow(
            0,
            90,
            Match.of(in_port=PORT_A2, metadata=(0x10, 0xFF)),
            (WriteMetadata(0x1234, 0xFFFF), Goto(20)),
            cookie(5, 1),
        ),
        Flow(0, 80, Match.of(eth_type=0x86DD, ipv6_dst="fd00:0:0:0::1"), (Goto(20),), cookie(6, 1)),
        Flow(20, 0, Match(), (), cookie(7, 0)),
        # a gateway's BFD reflection and an on-demand host's counting (docs/gateways.md)
        Flow(0, 70, Match.of(in_port=1, tunnel_id=0, eth_type=0x0800, ip_proto=17, udp_dst=3784),
             (Apply((Move("tun_ipv4_src", "tun_ipv4_dst"), Output(0xFFFFFFF8))),), cookie(10, 1)),
        Flow(35, 10, Match.of(eth_type=0x0800, ipv4_dst=("10.2.0.0", "255.255.0.0")),
             (Apply((Learn(35, 100, 10, cookie(11, 1), (("eth_type", 0x0800),),
                           ("metadata", "ipv4_dst")),)),), cookie(10, 2)),
        Flow(10, 40, Match.of(eth_type=0x0800, ipv4_dst=("10.2.0.0", "255.255.0.0")),
             (Apply((Resubmit(35), ToGroup(8))),), cookie(10, 3)),
    }  # fmt: skip
    return SwitchState.of(flows, [GROUP, WATCHED])


@dataclass
class App:
    proc: subprocess.Popen[bytes]
    status: str
    log: str

    def syncs(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.status):
            return []
        with open(self.status, encoding="utf-8") as f:
            return list(json.load(f)["syncs"])

    def wait_syncs(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.syncs()
            if len(got) >= n:
                return got
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(self.log, encoding="utf-8", errors="replace") as f:
            log = f.read()[-4000:]
        raise AssertionError(f"app made {len(self.syncs())} syncs, wanted {n}\n{log}")

    def stop(self) -> None:
        terminate([self.proc.pid])
        self.proc.wait()


class Harness:
    def __init__(self, lab: Lab, tmp: str) -> None:
        self.lab = lab
        self.tmp = tmp
        self.desired = os.path.join(tmp, "desired.json")
        self.apps: list[App] = []

    @property
    def host(self) -> HostPlan:
        return self.lab.host(HOST)

    def write(self, state: SwitchState) -> None:
        tmp = self.desired + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(encode_state(state))
        os.replace(tmp, self.desired)

    def start(self, name: str) -> App:
        status = os.path.join(self.tmp, f"{name}.status.json")
        log = os.path.join(self.tmp, f"{name}.log")
        cmd = [
            sys.executable, "-m", "meshpeer.manager", "tests.integration.apps.syncer_app",
            "--ofp-switch-address-list", "127.0.0.1:6653",
            "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", "6654",
        ]  # fmt: skip
        env = {
            **os.environ,
            "MESHPEER_SYNC_DESIRED": self.desired,
            "MESHPEER_SYNC_STATUS": status,
            "MESHPEER_SYNC_POLL": "0.2",
        }
        proc = spawn_manager(netns_cmd(self.host.netns, cmd), log, cwd=ROOT, env=env)
        app = App(proc, status, log)
        self.apps.append(app)
        return app

    def dump(self, stats: bool = False) -> list[str]:
        """br-int's flows, one line each, sorted; without stats unless asked."""
        args = ["dump-flows"] if stats else ["dump-flows", "--no-stats"]
        lines = ovs.ofctl(self.host, *args).splitlines()
        return sorted(line.strip() for line in lines if "priority" in line or "actions=" in line)

    def groups(self) -> str:
        return ovs.ofctl(self.host, "dump-groups")


@pytest.fixture
def harness(lab: Lab, tmp_path: Any) -> Iterator[Harness]:
    lab.clear_flows()
    ovs.ofctl(lab.host(HOST), "del-groups")
    h = Harness(lab, str(tmp_path))
    try:
        yield h
    finally:
        for app in h.apps:
            app.stop()


def flow_stats(h: Harness, needle: str) -> tuple[float, int]:
    """(duration seconds, n_packets) of the one flow whose dump line contains ``needle``."""
    lines = [line for line in h.dump(stats=True) if needle in line]
    assert len(lines) == 1, lines
    duration = float(re.search(r"duration=([0-9.]+)s", lines[0]).group(1))  # type: ignore[union-attr]
    packets = int(re.search(r"n_packets=(\d+)", lines[0]).group(1))  # type: ignore[union-attr]
    return duration, packets


def cookies_installed(h: Harness) -> list[int]:
    return sorted(int(re.match(r"cookie=(0x[0-9a-f]+)", line).group(1), 16) for line in h.dump())  # type: ignore[union-attr]


def cookies_of(state: SwitchState) -> list[int]:
    return sorted(f.cookie for f in state.flows | {CANARY})


def restart_vswitchd(plan: LabPlan, host: HostPlan) -> None:
    """Stop ovs-vswitchd through the lab (ovsdb-server stays) and start it again, cold.

    The new daemon has the bridges, ports and controller target from the database but no
    flows and no groups, like a real OVS restart without flow restore (a deliberate stop and
    start; the supervisor's restart after a crash restores them: tests/e2e).
    """
    ovs.stop_vswitchd(plan, host)
    ovs.start_vswitchd(plan, host)
    ovs.wait_ready(host, [])


def test_initial_sync_installs_exactly_the_desired_state_and_a_restart_changes_nothing(
    harness: Harness,
) -> None:
    h = harness
    desired = desired_state()
    h.write(desired)
    app = h.start("first")
    (sync,) = app.wait_syncs(1)
    assert sync["ok"], sync
    assert sync["counts"] == {
        "group_add": 2, "group_modify": 0, "flow_add": len(desired.flows) + 1,
        "flow_modify": 0, "flow_delete": 0, "group_delete": 0,
    }  # fmt: skip
    assert sync["canary_was_present"] is False
    assert cookies_installed(h) == cookies_of(desired)
    flows = "\n".join(h.dump())
    for text in (
        "cookie=0x100000000000001, priority=5,arp,in_port=10 actions=drop",
        "priority=100,ip,nw_dst=10.9.0.1 actions=set_field:02:aa:00:00:00:00->eth_dst,goto_table:10",
        "table=10, priority=50,ip,nw_dst=10.100.3.0/24 actions=dec_ttl,set_field:0x138b->tun_id,output:1",
        "table=10, priority=60,ip,nw_dst=10.7.0.1 actions=group:7",
        "priority=90,metadata=0x10/0xff,in_port=11 actions=write_metadata:0x1234/0xffff,goto_table:20",
        "priority=80,ipv6,ipv6_dst=fd00::1 actions=goto_table:20",
        "cookie=0x6d7063616e617279, table=253, priority=0 actions=drop",
    ):
        assert text in flows, f"{text}\nnot in\n{flows}"
    assert "group_id=7,type=select,bucket=bucket_id:0,weight:3,actions=output:10," in h.groups()
    app.stop()

    # The same desired state after a restart: everything read back compares equal, so the
    # new process sends nothing at all.
    again = h.start("second")
    (sync,) = again.wait_syncs(1)
    assert sync["ok"] and sync["canary_was_present"] is True, sync
    assert sum(sync["counts"].values()) == 0, sync["steps"]


def changed(state: SwitchState) -> tuple[SwitchState, dict[str, int]]:
    """4 deletes, 5 adds, 2 instruction changes, 1 cookie-only change, 1 group change."""
    by_cookie = {f.cookie: f for f in state.flows}
    gone = {by_cookie[cookie(2, i)] for i in range(4)}
    new = {
        Flow(0, 100, Match.of(eth_type=0x0800, ipv4_dst=f"10.6.0.{i}"), (Goto(10),), cookie(8, i))
        for i in range(1, 6)
    }
    old_a, old_b, old_c = by_cookie[cookie(3, 0)], by_cookie[cookie(3, 1)], by_cookie[cookie(3, 2)]
    mods = {
        Flow(old_a.table, old_a.priority, old_a.match, (Apply((Output(2),)),), old_a.cookie),
        Flow(old_b.table, old_b.priority, old_b.match, (), old_b.cookie),
        Flow(old_c.table, old_c.priority, old_c.match, old_c.instructions, cookie(9, 2)),
    }
    flows = (state.flows - gone - {old_a, old_b, old_c}) | new | mods
    group = Group(7, "select", (Bucket((Output(PORT_A1),), 1), Bucket((Output(PORT_A2),), 1)))
    counts = {
        "group_add": 0, "group_modify": 1, "flow_add": 5,
        "flow_modify": 3, "flow_delete": 4, "group_delete": 0,
    }  # fmt: skip
    return SwitchState.of(flows, [group, WATCHED]), counts


def test_restart_after_a_change_sends_only_the_delta_and_keeps_counters(harness: Harness) -> None:
    h = harness
    before = desired_state()
    h.write(before)
    app = h.start("first")
    assert app.wait_syncs(1)[0]["ok"]
    # a1 asks for a2's MAC: its ARP request hits the untouched flow (and is dropped).
    h.lab.sh("a1", "ping", "-c", "1", "-W", "0.3", h.lab.vm("a2").ip, check=False)
    app.stop()
    duration0, packets0 = flow_stats(h, "priority=5,arp,in_port=10")
    t0 = time.monotonic()  # after the first reading
    assert packets0 > 0

    after, expected = changed(before)
    h.write(after)
    time.sleep(0.5)  # so that a re-added flow would show a visibly younger duration
    app = h.start("second")
    (sync,) = app.wait_syncs(1)
    assert sync["ok"], sync
    assert sync["counts"] == expected, sync["steps"]
    assert cookies_installed(h) == cookies_of(after)
    assert "cookie=0x900000000000002, table=10, priority=50,ip,nw_dst=10.100.2.0/24" in "\n".join(
        h.dump()
    )
    assert "weight:3" not in h.groups()  # both weights now 1 (which OVS does not print)

    t1 = time.monotonic()  # before the second reading
    duration1, packets1 = flow_stats(h, "priority=5,arp,in_port=10")
    assert packets1 >= packets0, "the untouched flow's counters were reset"
    # The flow aged at least as much as the time between the readings, however slow they were
    # (a re-added flow would be younger by the 0.5 s pause): OVS keeps time in milliseconds.
    assert duration1 >= duration0 + (t1 - t0) - 0.05, (duration0, duration1, t1 - t0)


@pytest.mark.parametrize(
    ("bad", "stage"),
    [
        # OVS checks a goto on arrival of the bundled message: the bundle is discarded.
        pytest.param(
            Flow(10, 1, Match.of(in_port=3), (Goto(5),), cookie(9, 9)),
            "refused: OFPET_BAD_INSTRUCTION/OFPBIC_BAD_TABLE_ID",
            id="goto-back",
        ),
        # A group can be added earlier in the same bundle, so OVS checks it at commit.
        pytest.param(
            Flow(10, 1, Match.of(in_port=3), (Apply((ToGroup(99),)),), cookie(9, 9)),
            "commit failed: OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP",
            id="missing-group",
        ),
    ],
)
def test_a_bad_flow_rolls_back_the_whole_bundle(harness: Harness, bad: Flow, stage: str) -> None:
    h = harness
    base = desired_state(50, 20)
    h.write(base)
    app = h.start("app")
    assert app.wait_syncs(1)[0]["ok"]
    installed = h.dump()
    groups = h.groups()

    after, _ = changed(base)
    h.write(SwitchState(after.flows | {bad}, after.groups))  # a live, incremental update
    sync = app.wait_syncs(2)[-1]
    assert not sync["ok"], sync
    assert stage in sync["error"], sync
    assert h.dump() == installed, "a refused bundle changed the flows"
    assert h.groups() == groups, "a refused bundle changed the groups"

    h.write(after)  # the same update without the bad flow goes through
    sync = app.wait_syncs(3)[-1]
    assert sync["ok"], sync
    assert sync["counts"]["flow_add"] == 5 and sync["counts"]["flow_delete"] == 4, sync
    assert cookies_installed(h) == cookies_of(after)


def test_lost_flows_are_detected_by_the_canary_and_resynced(harness: Harness) -> None:
    h = harness
    desired = desired_state(50, 20)
    h.write(desired)
    app = h.start("app")
    assert app.wait_syncs(1)[0]["ok"]

    # Someone wipes the bridge behind the OHC's back; the connection stays up.
    ovs.ofctl(h.host, "del-flows")
    sync = app.wait_syncs(2)[-1]
    assert sync["ok"] and sync["reason"] == "canary-missing", sync
    assert sync["counts"]["flow_add"] == len(desired.flows) + 1, sync
    assert cookies_installed(h) == cookies_of(desired)

    # OVS restarts: the connection drops, the OHC reconnects, finds no canary, resyncs.
    restart_vswitchd(h.lab.plan, h.host)
    sync = app.wait_syncs(3)[-1]
    assert sync["ok"] and sync["reason"] == "connect", sync
    assert sync["canary_was_present"] is False, sync
    assert sync["counts"]["group_add"] == 2, sync
    assert cookies_installed(h) == cookies_of(desired)
    assert "group_id=7,type=select" in h.groups()
