"""A VM attached the ordinary way is programmed (issue 21 part 4), as docs/attach.md tells.

On tests/e2e/topologies/mesh.yaml: a new VM namespace with a veth into hv1, attached with a
plain ``ovs-vsctl add-port br-int tapX -- set interface tapX external_ids:iface-id=NAME
external_ids:vpc=VPC`` (no ``ofport_request``: OVS gives it the lowest free number, below 10),
then created through the REST API. It reaches its peer VM r1 (red, hv2) and r1 reaches it. An
interface that names an endpoint but no VPC is skipped: in the OHC's status with its reason,
and in its log once (at WARNING: tests/unit/test_ohc_ports.py), however many syncs follow.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.lab import controllers, ohcs, ovs
from meshpeer.lab.sh import run
from tests.integration.labkit import E2E_TOPOLOGIES, Lab, running
from tests.support.wait import wait_for

NAME, IP, MAC = "b9", "10.1.0.29", "02:00:00:01:00:29"  # blue, on hv1
TAP, BAD_TAP = "tapb9", "tapnovpc"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """mesh.yaml. Named ``lab`` so that conftest dumps flows when a test fails."""
    with running("mesh.yaml", E2E_TOPOLOGIES) as the_lab:
        yield the_lab


def ip(*args: str, netns: str | None = None) -> None:
    run(["ip", *args], netns=netns)


def ping(netns: str, dst: str) -> bool:
    cmd = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", dst]
    return run(cmd, netns=netns, check=False, timeout=30).returncode == 0


def status(lab: Lab) -> dict[str, Any]:
    return ohcs.status(lab.host("hv1")) or {}


def skipped(lab: Lab) -> list[str]:
    return list(status(lab).get("last_sync", {}).get("skipped", []))


def ohc_log(lab: Lab, needle: str) -> list[str]:
    with open(f"{lab.host('hv1').rundir}/ohc.log", encoding="utf-8", errors="replace") as f:
        return [ln for ln in f if needle in ln]


def said_about(lab: Lab, port: str) -> list[str]:
    """The OHC's log lines about a skipped port (logged at WARNING: test_ohc_ports.py)."""
    return ohc_log(lab, f"skipped port {port}:")


@pytest.fixture
def vm(lab: Lab) -> Iterator[str]:
    """A VM namespace with a veth into hv1 (not attached to br-int yet); removed afterwards."""
    hv1 = lab.host("hv1")
    netns = f"{lab.name}-{NAME}"
    ip("netns", "add", netns)
    try:
        ip("link", "add", "eth0", "netns", netns, "address", MAC, "mtu", "1400", "type", "veth",
           "peer", "name", TAP, "netns", hv1.netns, "mtu", "1400")  # fmt: skip
        ip("link", "set", TAP, "up", netns=hv1.netns)
        for args in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{IP}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["route", "add", "default", "via", "10.1.0.1", "dev", "eth0"],
        ):
            ip(*args, netns=netns)
        yield netns
    finally:
        for port in (TAP, BAD_TAP):
            ovs.vsctl(hv1, "--if-exists", "del-port", "br-int", port)
        subprocess.run(["ip", "-n", hv1.netns, "link", "del", BAD_TAP], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def test_a_vm_attached_with_plain_ovs_vsctl_reaches_its_peer(lab: Lab, vm: str) -> None:
    hv1 = lab.host("hv1")
    blue = controllers.client_for(lab.plan, "ctl1")

    # An interface that names an endpoint but not its VPC: skipped, and said so once.
    ip("link", "add", BAD_TAP, "type", "veth", "peer", "name", f"{BAD_TAP}p", netns=hv1.netns)
    ovs.vsctl(hv1, "add-port", "br-int", BAD_TAP, "--", "set", "interface", BAD_TAP,
              "external_ids:iface-id=b8")  # fmt: skip
    wait_for(lambda: any(f"key='{BAD_TAP}'" in s for s in skipped(lab)), 30, what="the skip")
    (reason,) = [s for s in skipped(lab) if f"key='{BAD_TAP}'" in s]
    assert "without external_ids:vpc" in reason, reason
    # ... and where an operator looks: the host's status at its shard (GET /v1/hosts/hv1)
    reported = wait_for(
        lambda: [
            k
            for k in (blue.get("/v1/hosts/hv1")["status"] or {}).get("skipped", [])
            if k["name"] == BAD_TAP
        ],
        30,
        what="the skip in GET /v1/hosts/hv1",
    )
    assert reported == [
        {
            "what": "port",
            "name": BAD_TAP,
            "reason": "external_ids:iface-id=b8 without external_ids:vpc",
        }
    ]

    # The VM, attached as docs/attach.md says, then created through the REST API.
    ovs.vsctl(hv1, "add-port", "br-int", TAP, "--", "set", "interface", TAP,
              f"external_ids:iface-id={NAME}", "external_ids:vpc=blue")  # fmt: skip
    ofport = int(ovs.vsctl(hv1, "get", "interface", TAP, "ofport").strip())
    print(f"\nOVS gave {TAP} ofport {ofport}")
    assert 0 < ofport < 10  # the numbers the OHC used to skip
    made = blue.post(
        "/v1/vpcs/blue/endpoints?wait=programmed",
        {"name": NAME, "ip": IP, "mac": MAC, "host": "hv1"},
    )
    try:
        wait_for(lambda: status(lab).get("ports", {}).get(f"blue/{NAME}") == ofport, 30,
                 what=f"hv1's OHC to use blue/{NAME} at ofport {ofport}")  # fmt: skip
        r1 = lab.vm("r1")
        wait_for(lambda: ping(vm, r1.ip), 30, what=f"{NAME} -> r1")
        assert ping(vm, r1.ip)
        assert ping(r1.netns, IP), f"r1 -> {NAME}"
        assert ping(vm, lab.vm("b2").ip), f"{NAME} -> b2 (own VPC, other host)"
        print(f"created {made.get('name')}: programmed={made.get('programmed')}")
    finally:
        blue.delete(f"/v1/vpcs/blue/endpoints/{NAME}")
    assert not [s for s in skipped(lab) if f"key='{TAP}'" in s]
    assert len(said_about(lab, BAD_TAP)) == 1, ohc_log(lab, "skipped")
    assert not said_about(lab, TAP)
