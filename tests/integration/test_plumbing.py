"""The lab's plumbing with hand-written flows: ping, TCP and Geneve on the wire.

Until the OHC programs br-int, nothing passes (fail_mode=secure). These tests install
explicit L2 flows with ovs-ofctl to prove the namespaces, veths, bridges, tunnel port and
underlay work, and cover each OVS gotcha this machine is known for.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from meshpeer.lab.handflows import tunnel_flows
from meshpeer.lab.sh import netns_cmd
from tests.integration.labkit import Lab

# a1 <-> a2 on hv1 (same host), a1 <-> a3 across hv1/hv2 (Geneve).
PAIRS = [("a1", "a3"), ("a3", "a1"), ("a1", "a2"), ("a2", "a1")]


@pytest.fixture
def wired(lab: Lab) -> Lab:
    lab.clear_flows()
    for host in ("hv1", "hv2"):
        lab.add_flows(host, tunnel_flows(lab.plan, host, PAIRS))
    return lab


def test_no_flows_no_connectivity(lab: Lab) -> None:
    """br-int is fail_mode=secure: with no flows, even same-host VMs cannot talk."""
    lab.clear_flows()
    assert not lab.ping("a1", "a2")
    assert not lab.ping("a1", "a3")


def test_first_packet_crosses_the_tunnel(wired: Lab) -> None:
    """The tunnel neighbour cache is pre-seeded, so packet one is not lost to VTEP ARP."""
    assert wired.ping("a1", "a3", count=1)


def test_ping_same_host_and_across_hosts(wired: Lab) -> None:
    assert wired.ping("a1", "a2", count=3)
    assert wired.ping("a3", "a1", count=3)
    assert not wired.ping("a1", "c1")  # no flow for red: dropped


@pytest.mark.parametrize(("client", "server"), [("a1", "a2"), ("a1", "a3")])
def test_tcp(wired: Lab, client: str, server: str) -> None:
    """TCP needs tx checksum offload off on the VM side; ping alone would not show it."""
    nbytes = 4 << 20
    received, bps = wired.tcp_transfer(client, server, nbytes)
    print(f"\nTCP {client} -> {server}: {received} bytes at {bps / 1e6:.0f} Mbit/s")
    assert received >= nbytes


def test_vm_interface_settings(lab: Lab) -> None:
    for vm in ("a1", "a3"):
        link = lab.sh(vm, "ip", "-j", "link", "show", "eth0")
        assert json.loads(link)[0]["mtu"] == 1400
        feats = lab.sh(vm, "ethtool", "-k", "eth0")
        assert "tx-checksumming: off" in feats
        route = lab.sh(vm, "ip", "route", "show", "default")
        assert route.startswith(f"default via {lab.vm(vm).gateway} dev eth0")


def test_full_size_packets_cross_the_tunnel(wired: Lab) -> None:
    """1400-byte IP packets (MTU-sized) fit in Geneve over the 1500-byte underlay."""
    assert wired.ping("a1", "a3", count=2, size=1400 - 28, df=True)


def test_geneve_on_the_wire_between_underlay_ips(wired: Lab) -> None:
    hv1, hv2 = wired.host("hv1"), wired.host("hv2")
    dump = subprocess.Popen(
        netns_cmd(
            wired.plan.fabric_netns,
            ["tcpdump", "-l", "-nn", "-i", "u-hv1", "-c", "4", "udp", "port", "6081"],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dump.stderr is not None
        while "listening on" not in dump.stderr.readline():  # capture is armed after this line
            assert dump.poll() is None, "tcpdump exited early"
        assert wired.ping("a1", "a3", count=3)
        out, _ = dump.communicate(timeout=10)
    finally:
        dump.kill()
        dump.wait()
    lines = [line for line in out.splitlines() if "Geneve" in line]
    assert lines, out
    vni = f"vni {hex(wired.vm('a3').vni)}"
    fwd = [ln for ln in lines if f"{hv1.underlay_ip}." in ln and f"> {hv2.underlay_ip}.6081" in ln]
    back = [ln for ln in lines if f"{hv2.underlay_ip}." in ln and f"> {hv1.underlay_ip}.6081" in ln]
    assert fwd and back, lines
    assert all(vni in ln for ln in lines), lines
