"""Which ``br-int`` interfaces are VM ports and which one is the tunnel, by what they are.

The OHC reads every row of OVSDB's Interface table (``ovs-vsctl --format=json list Interface``,
in ``ohc/app.py``) and this module decides, from the rows alone:

* the **tunnel port**: the interface of type ``geneve`` with ``options:remote_ip=flow`` (the
  flow-based tunnel the pipeline sends to remote hosts and receives from), at whatever ofport
  OVS gave it;
* the **VM ports**: interfaces whose ``external_ids`` name an endpoint (``iface-id``, the
  endpoint's name in its VPC, and ``vpc``), at whatever ofport OVS gave them, 1 included;
* the **BFD ports** toward the gateways (docs/gateways.md): Geneve interfaces the OHC made
  itself, marked ``external_ids:meshpeer-bfd=<gateway underlay IP>`` (``ohc/bfd.py``), with
  their ofports;
* the **skipped** ones, each with its reason: an ``iface-id`` without ``vpc``, a tunnel or patch
  interface that carries an ``iface-id``, an interface OVS has no OpenFlow port for (yet, or
  because it failed: OVS's ``error`` column is in the reason), a second interface for the same
  endpoint, a second flow-based Geneve port.

Ports are never told apart by number: OVS numbers ports from 1 in the order they are added, so
``ovs-vsctl add-port br-int tapX`` gets whatever is free. See docs/attach.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ohc.model import Skipped

TUNNEL_TYPES = frozenset({"geneve", "vxlan", "gre", "stt", "lisp", "erspan", "ip6gre", "bareudp"})
NOT_VM_TYPES = TUNNEL_TYPES | {"patch"}
# Skips an operator must see: this host's own ports and endpoints (something attached wrong,
# or not yet). Other skipped objects (a peer's bad destination) are logged at INFO.
WARN_SERVICES = frozenset({"port", "endpoint"})
COLUMNS = ("name", "type", "ofport", "external_ids", "options", "error")  # what read_rows asks


@dataclass(frozen=True)
class InterfaceRow:
    """One OVSDB Interface row, reduced to what the OHC reads."""

    name: str
    type: str
    ofport: int | None  # None: OVS has not assigned one (yet); -1: it failed
    external_ids: Mapping[str, str]
    options: Mapping[str, str]
    error: str | None


@dataclass(frozen=True)
class SwitchPorts:
    """What the OHC needs to know about ``br-int``'s ports."""

    vms: Mapping[tuple[str, str], int]  # (vpc, endpoint name) -> ofport
    tunnel: int | None  # the flow-based Geneve port's ofport; None: there is none
    skipped: tuple[Skipped, ...]
    # BFD ports toward the gateways: gateway underlay IP -> ofport (those OVS numbered), and
    # -> interface name (every one in OVSDB: what ``ohc.bfd.plan`` adds to or removes)
    bfd: Mapping[str, int] = field(default_factory=dict)
    bfd_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def numbering(self) -> bool:
        """Some interface has no OpenFlow port number yet: OVS writes it to OVSDB after the
        port status event that made the OHC read, so read again shortly."""
        return any(s.service == "port" and s.reason.startswith(NOT_YET) for s in self.skipped)


NOT_YET = "no OpenFlow port yet"


def _cell(value: object) -> object:
    """An OVSDB JSON cell: an empty set is "no value", a one-element set its element."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        items = value[1]
        return items[0] if isinstance(items, list) and len(items) == 1 else None
    return value


def _map(value: object) -> dict[str, str]:
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {str(k): str(v) for k, v in value[1]}
    return {}


def parse_rows(doc: Mapping[str, object]) -> list[InterfaceRow]:
    """The rows of ``ovs-vsctl --format=json --columns=<COLUMNS> list Interface``."""
    headings = doc.get("headings")
    data = doc.get("data")
    if not isinstance(headings, list) or not isinstance(data, list):
        raise ValueError("not an ovs-vsctl JSON table")
    rows = []
    for raw in data:
        cells = dict(zip(headings, raw, strict=True))
        ofport, error, kind = (_cell(cells.get(c)) for c in ("ofport", "error", "type"))
        rows.append(
            InterfaceRow(
                name=str(_cell(cells.get("name"))),
                type=kind if isinstance(kind, str) else "",
                ofport=ofport if isinstance(ofport, int) else None,
                external_ids=_map(cells.get("external_ids")),
                options=_map(cells.get("options")),
                error=error if isinstance(error, str) else None,
            )
        )
    return rows


BFD_MARK = "meshpeer-bfd"  # external_ids key of a BFD port: the gateway's underlay IP


def is_tunnel(row: InterfaceRow) -> bool:
    """The flow-based Geneve port: remote and key chosen per packet by the flows."""
    return row.type == "geneve" and row.options.get("remote_ip") == "flow"


def _no_ofport(row: InterfaceRow) -> str | None:
    if row.ofport is not None and row.ofport > 0:
        return None
    detail = f": {row.error}" if row.error else ""
    if row.ofport == -1:
        return f"OVS could not attach it (ofport -1){detail}"
    return f"{NOT_YET}{detail}"


def classify(rows: Iterable[InterfaceRow]) -> SwitchPorts:
    """VM ports, the tunnel port and what is skipped (and why), from the Interface rows."""
    vms: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], str] = {}
    tunnel: tuple[int, str] | None = None
    skipped: list[Skipped] = []
    bfd: dict[str, int] = {}
    bfd_names: dict[str, str] = {}

    def skip(row: InterfaceRow, reason: str) -> None:
        skipped.append(Skipped("port", row.name, reason))

    for row in sorted(rows, key=lambda r: r.name):
        if is_tunnel(row):
            if (why := _no_ofport(row)) is not None:
                skip(row, f"tunnel port: {why}")
            elif tunnel is not None:
                skip(row, f"a second flow-based Geneve port (using {tunnel[1]})")
            else:
                tunnel = (row.ofport or 0, row.name)
            continue
        gateway = row.external_ids.get(BFD_MARK)
        if gateway is not None and row.type == "geneve":
            bfd_names[gateway] = row.name
            if _no_ofport(row) is None:
                bfd[gateway] = row.ofport or 0
            continue
        if "iface-id" not in row.external_ids:
            continue  # not meant as a VM port (br-int itself, br-phy's ports, ...)
        iface, vpc = row.external_ids["iface-id"], row.external_ids.get("vpc")
        if not vpc:
            skip(row, f"external_ids:iface-id={iface} without external_ids:vpc")
        elif row.type in NOT_VM_TYPES:
            skip(row, f"a {row.type} interface cannot be a VM port (iface-id={iface})")
        elif (why := _no_ofport(row)) is not None:
            skip(row, why)
        elif (vpc, iface) in vms:
            skip(row, f"{vpc}/{iface} is already attached as {where[(vpc, iface)]}")
        else:
            vms[(vpc, iface)] = row.ofport or 0
            where[(vpc, iface)] = row.name
    tunnel_port = None if tunnel is None else tunnel[0]
    return SwitchPorts(vms, tunnel_port, tuple(skipped), bfd, bfd_names)


def new_skips(
    skipped: Iterable[Skipped], logged: frozenset[Skipped]
) -> tuple[list[tuple[int, Skipped]], frozenset[Skipped]]:
    """What to log after a sync: each skip once (with its level), not at every sync, and
    again if it comes back after it was fixed. Returns (level, skip) pairs and what to
    remember as logged."""
    now = frozenset(skipped)
    levels = [
        (logging.WARNING if s.service in WARN_SERVICES else logging.INFO, s)
        for s in sorted(now - logged)
    ]
    return levels, now
