"""Pure rendering of the REST API's answers for the ``meshpeer`` CLI: JSON in, text out.

Nothing here reads a socket or a clock; :mod:`meshpeer.cli.main` fetches and prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Row = Sequence[object]
NONE = "-"


def cell(value: object) -> str:
    if value is None or value == "" or value == []:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Row]) -> str:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        padded = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)] + [r[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def vpcs(doc: Mapping[str, Any]) -> str:
    rows = [
        (v["name"], v["vni"], [s["cidr"] for s in v["subnets"]], v.get("asn"), v.get("version"))
        for v in doc["vpcs"]
    ]
    return table(("NAME", "VNI", "SUBNETS", "ASN", "VERSION"), rows)


def endpoints(doc: Mapping[str, Any]) -> str:
    rows = [
        (e["name"], e["kind"], e["ip"], e.get("mac"), e.get("host"), e.get("version"))
        for e in doc["endpoints"]
    ]
    return table(("NAME", "KIND", "IP", "MAC", "HOST", "VERSION"), rows)


def routes(doc: Mapping[str, Any]) -> str:
    rows = [
        (r["name"], r["prefix"], r["next_hop"], r["priority"], r.get("version"))
        for r in doc["routes"]
    ]
    return table(("NAME", "PREFIX", "NEXT HOP", "PRIORITY", "VERSION"), rows)


def peer_side(peer: Mapping[str, Any] | None, error: str | None) -> tuple[str, str, str]:
    """(side, state, reason) of the other side of a peering, as found on the peer's shard."""
    if error is not None:
        return NONE, "UNKNOWN", error
    if peer is None:
        return NONE, "MISSING", "the peer VPC has no peering to this VPC"
    return f"{peer['vpc']}/{peer['name']}", peer["state"], peer["state_details"]


def find_peer_side(
    peering: Mapping[str, Any], peer_peerings: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The peer VPC's side of ``peering``: its peering whose ``peer_vpc`` is this VPC."""
    return next((p for p in peer_peerings if p["peer_vpc"] == peering["vpc"]), None)


def peerings(
    doc: Mapping[str, Any], sides: Mapping[str, tuple[Mapping[str, Any] | None, str | None]]
) -> str:
    """``sides``: peering name -> (the peer's side or None, why it could not be read or None)."""
    rows = []
    for p in doc["peerings"]:
        side, state, reason = peer_side(*sides.get(p["name"], (None, "not looked up")))
        rows.append(
            (
                p["name"],
                p["peer_vpc"],
                p["state"],
                side,
                state,
                p["preference"],
                f"{p['state_details']}; peer side: {reason}",
            )
        )
    headers = ("NAME", "PEER VPC", "STATE", "PEER SIDE", "PEER STATE", "PREF", "REASON")
    return table(headers, rows)


def _route_ref(r: Mapping[str, Any]) -> str:
    via = f" via {r['next_hop']}" if r.get("next_hop") else ""
    return f"{r['kind']} {r['prefix']} from {r['origin']}{via}"


def route_why(r: Mapping[str, Any]) -> str:
    """Why an effective route is installed (whom it beat) or not (its rule, and the winner)."""
    if r["installed"]:
        losers = r.get("losers") or []
        if not losers:
            return "installed"
        beat = "; ".join(f"{_route_ref(x)} ({x['rule']})" for x in losers)
        return f"installed, beat {beat}"
    text = f"not installed: {r.get('reason') or r.get('rule') or 'no reason given'}"
    if r.get("winner"):
        text += f"; winner: {_route_ref(r['winner'])}"
    return text


def effective_routes(doc: Mapping[str, Any]) -> str:
    rows = [
        (
            r["prefix"],
            r["kind"],
            r["origin"],
            r.get("next_hop"),
            r.get("preference"),
            "WIN" if r["installed"] else "LOSE",
            route_why(r),
        )
        for r in doc["routes"]
    ]
    headers = ("PREFIX", "KIND", "ORIGIN", "NEXT HOP", "PREF", "RESULT", "WHY")
    return table(headers, rows)


def written(verb: str, what: str, doc: Mapping[str, Any]) -> str:
    """One line for a create, update or delete; with ``programmed`` when the API said it."""
    line = f"{verb} {what}"
    if "version" in doc:
        line += f" (version {doc['version']})"
    if "state" in doc:
        line += f": {doc['state']}, {doc['state_details']}"
    if "programmed" in doc:
        pending = doc.get("pending_hosts") or []
        line += "; programmed" if doc["programmed"] else "; not programmed"
        if pending:
            line += f", pending hosts: {', '.join(pending)}"
    for w in doc.get("warnings") or []:
        line += f"\nwarning: {w['field']}: {w['detail']}"
    return line


def api_error(method: str, path: str, status: int, body: object) -> str:
    """An API error as the operator reads it: status, error, field and detail."""
    if isinstance(body, Mapping) and "detail" in body:
        field = body.get("field")
        where = f" field {field}:" if field else ""
        return f"{method} {path}: {status} {body.get('error')}:{where} {body['detail']}"
    return f"{method} {path}: {status} {body!r}"
