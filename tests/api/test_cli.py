"""The ``meshpeer`` CLI against real shards (docs/cli.md): every write goes through the CLI.

The CLI finds ctl1 and ctl2 by name in a config file such as ``scripts/lab up`` writes (URL,
token, the cluster's CA: the shards serve HTTPS). red and pink (ctl2) route one prefix and
export it to blue (ctl1), which imports both: ``routes list --effective`` names the winner,
the loser and the rule, and changing blue's preference with ``peerings update`` flips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshpeer.cli import config
from meshpeer.cli.main import EXIT_API, EXIT_PENDING, main
from tests.api.ctlkit import Cluster
from tests.support.wait import wait_for

PREFIX = "192.168.77.0/24"
TIMEOUT = 30.0  # generous: federation polls between shards


class Cli:
    def __init__(self, cluster: Cluster, tmp: Path, capsys: pytest.CaptureFixture[str]):
        self.path = str(tmp / "cli.json")
        entries = {c.name: {"url": c.url, "token": c.token, "ca_file": c.ca_file} for c in cluster}
        config.save_lab(self.path, "test", entries)
        self.env = {"MESHPEER_CONFIG": self.path}
        self.capsys = capsys

    def run(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(list(argv), self.env)
        got = self.capsys.readouterr()
        return code, got.out, got.err

    def ok(self, *argv: str) -> str:
        code, out, err = self.run(*argv)
        assert code == 0, f"meshpeer {' '.join(argv)} -> {code}\n{out}{err}"
        return out

    def json(self, *argv: str) -> Any:
        return json.loads(self.ok("--json", *argv))


def line_of(table: str, first: str) -> list[str]:
    (line,) = [x for x in table.splitlines() if x.split()[0] == first]
    return line.split()


def test_cli_drives_a_peering_and_explains_states_and_routes(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(cluster, tmp_path, capsys)
    for ctl in cluster:
        ctl.put("/v1/hosts/hv2", {"underlay_ip": "192.0.2.2"})

    out = cli.ok("--controller", "ctl1", "vpcs", "create", "blue", "--subnet", "10.1.0.0/24")
    assert out.startswith("created vpc blue (version ")
    assert line_of(cli.ok("-c", "ctl1", "vpcs", "list"), "blue")[2] == "10.1.0.0/24"
    for n, vpc in ((2, "red"), (3, "pink")):
        cli.ok("-c", "ctl2", "vpcs", "create", vpc, "--subnet", f"10.{n}.0.0/24")
        cli.ok("-c", "ctl2", "endpoints", "create", vpc, "rt", "--ip", f"10.{n}.0.9",
               "--kind", "router", "--host", "hv2")  # fmt: skip
        cli.ok("-c", "ctl2", "routes", "create", vpc, "onprem", "--prefix", PREFIX,
               "--next-hop", f"10.{n}.0.9")  # fmt: skip
    assert line_of(cli.ok("-c", "ctl2", "endpoints", "list", "red"), "rt")[1:3] == [
        "router",
        "10.2.0.9",
    ]
    assert line_of(cli.ok("-c", "ctl2", "routes", "list", "red"), "onprem")[1:3] == [
        PREFIX,
        "10.2.0.9",
    ]

    # One side alone: INACTIVE here, and the peer side is missing (read from ctl2).
    out = cli.ok("-c", "ctl1", "peerings", "create", "blue", "to-red", "--peer-vpc", "red",
                 "--import-custom-routes")  # fmt: skip
    assert "INACTIVE, peer VPC 'red' has not configured a peering to 'blue'" in out
    row = line_of(cli.ok("-c", "ctl1", "peerings", "list", "blue"), "to-red")
    assert row[1:5] == ["red", "INACTIVE", "-", "MISSING"]
    cli.ok("-c", "ctl1", "peerings", "create", "blue", "to-pink", "--peer-vpc", "pink",
           "--import-custom-routes", "--preference", "200")  # fmt: skip
    for vpc in ("red", "pink"):
        cli.ok("-c", "ctl2", "peerings", "create", vpc, "to-blue", "--peer-vpc", "blue",
               "--export-custom-routes")  # fmt: skip

    def both_active() -> Any:
        doc = cli.json("-c", "ctl1", "peerings", "list", "blue")
        states = {(p["state"], (p["peer_side"] or {}).get("state")) for p in doc["peerings"]}
        return doc if states == {("ACTIVE", "ACTIVE")} else None

    doc = wait_for(both_active, TIMEOUT, what="both peerings ACTIVE on both sides")
    assert {p["peer_side"]["vpc"] for p in doc["peerings"]} == {"red", "pink"}
    table = cli.ok("-c", "ctl1", "peerings", "list", "blue")
    assert line_of(table, "to-red")[1:5] == ["red", "ACTIVE", "red/to-blue", "ACTIVE"]
    assert "peer side: both sides configured: 'red' <-> 'blue'" in table

    def winner() -> str | None:
        doc = cli.json("-c", "ctl1", "routes", "list", "blue", "--effective")
        won = [r for r in doc["routes"] if r["prefix"] == PREFIX and r["installed"]]
        lost = [r for r in doc["routes"] if r["prefix"] == PREFIX and not r["installed"]]
        return won[0]["origin"] if won and lost else None

    assert wait_for(winner, TIMEOUT, what="both peers' routes at blue") == "peer:pink"
    table = cli.ok("-c", "ctl1", "routes", "list", "blue", "--effective")
    (won,) = [x for x in table.splitlines() if PREFIX in x.split()[:1] and " WIN " in x]
    (lost,) = [x for x in table.splitlines() if PREFIX in x.split()[:1] and " LOSE " in x]
    assert "peer:pink" in won and "beat static 192.168.77.0/24 from peer:red" in won
    assert "(peering-preference)" in won
    assert "peer:red" in lost and "not installed: peering-preference: " in lost
    assert "winner: static 192.168.77.0/24 from peer:pink via 10.3.0.9" in lost

    # update: blue now prefers red; the table follows.
    out = cli.ok("-c", "ctl1", "peerings", "update", "blue", "to-red", "--preference", "300")
    assert out.startswith("updated peering blue/to-red") and ": ACTIVE, both sides" in out
    assert wait_for(lambda: winner() == "peer:red" or None, TIMEOUT, what="red wins")

    # delete, both sides of one peering: the other side says why it went INACTIVE.
    out = cli.ok("-c", "ctl2", "peerings", "delete", "pink", "to-blue")
    assert out.startswith("deleted peering pink/to-blue")
    row = wait_for(
        lambda: (
            (r := line_of(cli.ok("-c", "ctl1", "peerings", "list", "blue"), "to-pink"))[4]
            == "MISSING"
            and r
        ),
        TIMEOUT,
        what="pink's side gone",
    )
    assert row[1:5] == ["pink", "INACTIVE", "-", "MISSING"]
    cli.ok("-c", "ctl2", "routes", "delete", "pink", "onprem")
    assert "onprem" not in cli.ok("-c", "ctl2", "routes", "list", "pink")


def test_errors_print_the_field_and_detail_and_exit_non_zero(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(cluster, tmp_path, capsys)
    before = cluster["ctl1"].version()
    code, out, err = cli.run("-c", "ctl1", "vpcs", "create", "Bad Name")
    assert (code, out) == (EXIT_API, "")
    assert err.strip() == (
        "meshpeer: POST /v1/vpcs: 400 bad_request: field name: 'Bad Name' is not a valid name"
    )
    code, _, err = cli.run("-c", "ctl1", "endpoints", "list", "nosuch")
    assert code == EXIT_API and "404 not_found: field vpc:" in err
    code, _, err = cli.run("-c", "ctl1", "--token", "wrong", "vpcs", "list")
    assert code == EXIT_API and "401 unauthorized" in err
    assert cluster["ctl1"].version() == before  # nothing changed

    # --wait for a host that never registered: not programmed, the host named, exit 3.
    cli.ok("-c", "ctl1", "vpcs", "create", "blue", "--subnet", "10.1.0.0/24")
    code, out, _ = cli.run("-c", "ctl1", "endpoints", "create", "blue", "b1", "--ip",
                           "10.1.0.11", "--host", "hv7", "--wait", "--wait-timeout", "1")  # fmt: skip
    assert code == EXIT_PENDING
    assert out.strip().endswith("not programmed, pending hosts: hv7")
    code, _, err = cli.run("-c", "ctl9", "vpcs", "list")
    assert code == 2 and "no controller 'ctl9'" in err and "ctl1, ctl2" in err


def test_the_console_script_reaches_a_shard_with_the_config_alone(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(cluster, tmp_path, capsys)
    cluster["ctl1"].vpc("teal", "10.7.0.0/24")
    exe = Path(sys.executable).with_name("meshpeer")
    env = {**os.environ, **cli.env}
    env.pop("MESHPEER_URL", None)
    done = subprocess.run(
        [str(exe), "--controller", "ctl1", "vpcs", "list"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert line_of(done.stdout, "teal")[2] == "10.7.0.0/24"


def test_policy_diff_says_what_a_change_would_hide_before_it_is_applied(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(cluster, tmp_path, capsys)
    c1, c2 = cluster["ctl1"], cluster["ctl2"]
    c1.vpc("blue", "10.1.0.0/24")
    c1.vm("blue", "b1", "10.1.0.11", host="hv1")
    c1.vm("blue", "b2", "10.1.0.200", host="hv2")
    c1.post("/v1/vpcs/blue/routes", {"name": "onprem", "prefix": "192.168.5.0/24",
                                     "next_hop": "10.1.0.11"})  # fmt: skip
    c2.vpc("red", "10.2.0.0/24")
    c2.vm("red", "r1", "10.2.0.11", host="hv3")
    c1.peer("blue", "red")
    c2.peer("red", "blue")
    c1.wait_state("blue", "to-red", "ACTIVE")
    before = (c1.version(), c2.version())

    out = cli.ok("-c", "ctl1", "policy", "diff", "blue", "to-red", "--export-range", "10.1.0.0/25")
    assert out.splitlines()[1:] == [
        "  hides    subnet range 10.1.0.128/25",
        "  hides    endpoint b2 10.1.0.200 (hv2)",
        "  on the peer's hosts (now): hv3",
    ]
    doc = cli.json("-c", "ctl1", "policy", "diff", "blue", "to-red", "--export-custom-routes")
    assert (doc["exposed"], doc["hidden"]) == (["route onprem 192.168.5.0/24 via 10.1.0.11"], [])
    assert (c1.version(), c2.version()) == before  # a diff writes nothing
    code, _, err = cli.run("-c", "ctl1", "policy", "diff", "blue", "to-red",
                           "--export-range", "10.1.0.0/33")  # fmt: skip
    assert code == 2 and "bad export flags: export.ranges[0]" in err

    # Applied, the peer sees what the diff said: 10.1.0.0/25, not the whole /24.
    cli.ok("-c", "ctl1", "peerings", "update", "blue", "to-red", "--export-range", "10.1.0.0/25")

    def peer_sees() -> set[str] | None:
        routes = c2.get("/v1/vpcs/red/routes/effective")["routes"]
        seen = {r["prefix"] for r in routes if r["origin"] == "peer:blue"}
        return seen if seen == {"10.1.0.0/25"} else None

    wait_for(peer_sees, TIMEOUT, what="red sees blue's /25 only")
    out = cli.ok("-c", "ctl1", "policy", "diff", "blue", "to-red", "--export-range", "10.1.0.0/25")
    assert out.splitlines()[1] == "same effect: nothing would change"
