"""meshpeer.cli.format: the CLI's tables, from the API's JSON (shapes as the shards answer)."""

from __future__ import annotations

from typing import Any

from meshpeer.cli import format as fmt

BLUE_TO_RED: dict[str, Any] = {
    "name": "to-red", "vpc": "blue", "peer_vpc": "red", "preference": 100,
    "state": "ACTIVE", "state_details": "both sides configured: 'blue' <-> 'red'",
}  # fmt: skip
RED_TO_BLUE: dict[str, Any] = {
    "name": "to-blue", "vpc": "red", "peer_vpc": "blue", "preference": 100,
    "state": "ACTIVE", "state_details": "both sides configured: 'red' <-> 'blue'",
}  # fmt: skip
BLUE_TO_GREEN: dict[str, Any] = {
    "name": "to-green", "vpc": "blue", "peer_vpc": "green", "preference": 100,
    "state": "INACTIVE", "state_details": "peer VPC 'green' has not configured a peering to 'blue'",
}  # fmt: skip


def test_table_aligns_columns_and_shows_missing_values_as_a_dash() -> None:
    text = fmt.table(("A", "LONGER"), [("x", None), ("wide-cell", True)])
    assert text.splitlines() == ["A          LONGER", "x          -", "wide-cell  yes"]


def test_peerings_show_both_sides_state_and_reason() -> None:
    sides = {
        "to-red": (fmt.find_peer_side(BLUE_TO_RED, [RED_TO_BLUE]), None),
        "to-green": (fmt.find_peer_side(BLUE_TO_GREEN, []), None),
    }
    lines = fmt.peerings({"peerings": [BLUE_TO_GREEN, BLUE_TO_RED]}, sides).splitlines()
    assert lines[0].split()[:5] == ["NAME", "PEER", "VPC", "STATE", "PEER"]
    green, red = lines[1], lines[2]
    assert green.split()[:5] == ["to-green", "green", "INACTIVE", "-", "MISSING"]
    assert "has not configured a peering to 'blue'" in green
    assert "peer side: the peer VPC has no peering to this VPC" in green
    assert red.split()[:5] == ["to-red", "red", "ACTIVE", "red/to-blue", "ACTIVE"]
    assert "peer side: both sides configured: 'red' <-> 'blue'" in red


def test_a_peer_side_that_could_not_be_read_says_why() -> None:
    sides = {"to-red": (None, "GET /v1/vpcs/red/peerings: 403 forbidden: no")}
    line = fmt.peerings({"peerings": [BLUE_TO_RED]}, sides).splitlines()[1]
    assert line.split()[3:5] == ["-", "UNKNOWN"]
    assert "403 forbidden" in line


def test_effective_routes_say_whom_a_winner_beat_and_why_a_loser_lost() -> None:
    winner = {"prefix": "10.9.0.0/24", "kind": "subnet", "origin": "peer:red",
              "next_hop": None, "priority": None, "preference": 200}  # fmt: skip
    loser = {"prefix": "10.9.0.0/24", "kind": "subnet", "origin": "peer:pink",
             "next_hop": None, "priority": None, "preference": 100}  # fmt: skip
    doc = {
        "vpc": "blue",
        "routes": [
            {**winner, "installed": True, "losers": [{**loser, "rule": "peer-preference"}]},
            {**loser, "installed": False, "rule": "peer-preference",
             "reason": "a peer route with a higher preference wins", "winner": winner},
            {"prefix": "10.1.0.0/24", "kind": "subnet", "origin": "local", "next_hop": None,
             "priority": None, "installed": True},
        ],
    }  # fmt: skip
    lines = fmt.effective_routes(doc).splitlines()
    assert lines[1].split()[:6] == ["10.9.0.0/24", "subnet", "peer:red", "-", "200", "WIN"]
    assert lines[1].endswith("installed, beat subnet 10.9.0.0/24 from peer:pink (peer-preference)")
    assert lines[2].split()[5] == "LOSE"
    assert lines[2].endswith(
        "not installed: a peer route with a higher preference wins;"
        " winner: subnet 10.9.0.0/24 from peer:red"
    )
    assert lines[3].split()[-1] == "installed"


def test_written_says_programmed_and_pending_hosts_and_warnings() -> None:
    done = fmt.written("created endpoint", "blue/b1", {"version": 7, "programmed": True})
    assert done == "created endpoint blue/b1 (version 7); programmed"
    doc = {"version": 8, "programmed": False, "pending_hosts": ["hv2", "hv3"],
           "warnings": [{"field": "export.ranges[0]", "detail": "overlaps nothing"}]}  # fmt: skip
    assert fmt.written("created peering", "blue/to-red", doc).splitlines() == [
        "created peering blue/to-red (version 8); not programmed, pending hosts: hv2, hv3",
        "warning: export.ranges[0]: overlaps nothing",
    ]


def test_api_error_names_status_field_and_detail() -> None:
    body = {"error": "bad_request", "field": "name", "detail": "'Bad' is not a valid name"}
    assert fmt.api_error("POST", "/v1/vpcs", 400, body) == (
        "POST /v1/vpcs: 400 bad_request: field name: 'Bad' is not a valid name"
    )
    assert fmt.api_error("GET", "/x", 502, "oops") == "GET /x: 502 'oops'"
