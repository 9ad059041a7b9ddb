"""A hypervisor's BFD ports toward the gateways (docs/gateways.md, liveness), pure.

The tunnel port is flow-based (``remote_ip=flow``): it has no peer, so it cannot carry a BFD
session. Each gateway a hypervisor sends through gets a Geneve port of its own for BFD only:
``remote_ip`` the gateway, no key (VNI 0, which no VPC has: data packets from the gateway,
with a VPC's VNI, still arrive on the flow-based port), ``bfd:enable``. The gateway reflects
the BFD packets back (``compiler.bfd_reflect_flow``), so the session is up exactly while the
gateway's datapath forwards. The select group's bucket toward the gateway watches the port
(``HostView.watch_port``): OVS skips it while the session is down, without the OHC.

``plan`` says which ports to add and remove; the app runs it with ``ovs-vsctl``. ``watched``
says which BFD ports the buckets watch: all of them once one session is up, none while no
session is (a hypervisor just started, or its switch restarted: every session starts down,
and a group whose buckets all watch down ports drops everything; unwatched buckets send to
every listed gateway, as without BFD).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Set

from ohc.ports import BFD_MARK

DEFAULT_INTERVAL_MS = 100


def port_name(gateway_ip: str) -> str:
    """The BFD port toward a gateway: ``mpbfd`` + its address in hex (13 characters)."""
    return f"mpbfd{int(ipaddress.IPv4Address(gateway_ip)):08x}"


def plan(
    wanted: Set[str],
    have: Mapping[str, str],
    interval_ms: int = DEFAULT_INTERVAL_MS,
    bridge: str = "br-int",
) -> list[str]:
    """``ovs-vsctl`` arguments (one transaction) that leave exactly one BFD port per gateway
    in ``wanted`` (underlay IPs), given ``have`` (gateway IP -> interface name, from
    ``ports.classify``); empty when nothing is to change."""
    args: list[str] = []
    for ip in sorted(wanted - have.keys()):
        name = port_name(ip)
        args += [
            "--", "--may-exist", "add-port", bridge, name,
            "--", "set", "interface", name, "type=geneve", f"options:remote_ip={ip}",
            "bfd:enable=true", f"bfd:min_tx={interval_ms}", f"bfd:min_rx={interval_ms}",
            f"external_ids:{BFD_MARK}={ip}",
        ]  # fmt: skip
    for ip in sorted(have.keys() - wanted):
        args += ["--", "--if-exists", "del-port", bridge, have[ip]]
    return args


def watched(bfd_ports: Mapping[str, int], live: Set[int]) -> dict[str, int]:
    """The BFD ports (gateway IP -> ofport) the select buckets watch, given the switch's live
    ports: every one if any is live, else none."""
    return dict(bfd_ports) if any(port in live for port in bfd_ports.values()) else {}
