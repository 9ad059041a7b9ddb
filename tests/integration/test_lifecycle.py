"""Lab lifecycle: status and matrix contracts, repeatable up, and cleanup that leaves nothing."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from meshpeer.lab import build, cli, ovs, state
from meshpeer.lab.procs import alive, read_pidfile
from meshpeer.lab.sh import LabError, run
from tests.integration.labkit import TOPOLOGIES, Lab, bring_up, lab_cli, new_lab_name


def leftovers(lab: str) -> list[str]:
    """Everything of this lab still on the machine."""
    found = []
    netns = run(["ip", "netns", "list"]).stdout.split()
    found += [f"netns {n}" for n in netns if n.startswith(f"{lab}-")]
    if run(["ip", "link", "show", f"{lab}-mgmt"], check=False).returncode == 0:
        found.append(f"link {lab}-mgmt")
    if os.path.exists(state.state_dir(lab)):
        found.append(f"dir {state.state_dir(lab)}")
    return found


def lab_pids(lab: Lab) -> list[int]:
    """Every daemon's pid, and the supervisor's (``<state_dir>/supervisor.pid``)."""
    pids = [read_pidfile(p) for p in glob.glob(f"{lab.plan.state_dir}/**/*.pid", recursive=True)]
    return [p for p in pids if p is not None]


def test_status_json_contract(lab: Lab) -> None:
    st = json.loads(lab_cli(lab.name, "status", "--json").stdout)
    assert [h["name"] for h in st["hosts"]] == ["hv1", "hv2", "hv3"]
    assert all(h["ovs_running"] for h in st["hosts"])
    assert {v["name"]: v["host"] for v in st["vms"]} == {
        "a1": "hv1", "a2": "hv1", "a3": "hv2", "c1": "hv3"
    }  # fmt: skip
    for item in st["hosts"] + st["vms"]:
        assert item["netns"].startswith(f"{lab.name}-")
    for h in st["hosts"]:
        assert h["mgmt_ip"].startswith("169.254.") and h["underlay_ip"].startswith("169.254.")
    assert st["controllers"] == []
    # every process the lab started, as its supervisor runs it
    assert st["supervisor"]["pid"] is not None and alive(st["supervisor"]["pid"])
    procs = {(p["kind"], p["name"]): p for p in st["processes"]}
    assert set(procs) == {(k, h) for k in ovs.DAEMONS for h in ("hv1", "hv2", "hv3")}
    for p in procs.values():
        assert p["running"] and p["wanted"] and alive(p["pid"]) and p["restarts"] == 0, p


def test_matrix_json_without_flows_is_all_unreachable(lab: Lab) -> None:
    lab.clear_flows()
    pairs = json.loads(lab_cli(lab.name, "matrix", "--json").stdout)["pairs"]
    assert len(pairs) == 4 * 3
    assert {(p["src"], p["dst"]) for p in pairs} >= {("a1", "a3"), ("c1", "a1")}
    assert not any(p["reachable"] for p in pairs)


def test_each_host_has_its_own_daemons_and_rundir(lab: Lab) -> None:
    pids = set()
    for h in lab.plan.hosts:
        assert os.path.isabs(ovs.ctl(h)) and os.path.exists(ovs.ctl(h))
        assert "ovs-vswitchd (Open vSwitch)" in ovs.appctl(h, "version")
        ports = set(ovs.vsctl(h, "list-ports", "br-int").split())
        assert ports == {"geneve0"} | {v.host_port for v in lab.plan.vms_on(h.name)}
        assert ovs.vsctl(h, "get", "bridge", "br-int", "fail_mode").strip() == "secure"
        dpid = ovs.vsctl(h, "get", "bridge", "br-int", "datapath_id").strip().strip('"')
        assert dpid == h.br_int_dpid
        pids.update(ovs.pids(h))
    assert len(pids) == 2 * len(lab.plan.hosts)


def test_exec_runs_in_the_namespace_with_ovs_env(lab: Lab) -> None:
    out = lab_cli(lab.name, "exec", "hv2", "--", "ovs-vsctl", "list-ports", "br-int").stdout
    assert "v-a3" in out.split()
    # ovs-appctl without -t reaches this host's ovs-vswitchd (its own rundir and socket)
    out = lab_cli(lab.name, "exec", "hv2", "--", "ovs-appctl", "dpif/show").stdout
    assert "br-int:" in out
    out = lab_cli(lab.name, "exec", "a1", "--", "ip", "-brief", "addr", "show", "eth0").stdout
    assert "10.1.0.11/24" in out
    res = lab_cli(lab.name, "exec", "nope", "--", "true", check=False)
    assert res.returncode == 1 and "no host, VM or controller named 'nope'" in res.stderr


def test_up_twice_then_down_leaves_nothing() -> None:
    first = bring_up("plumbing.yaml")
    pids = lab_pids(first)
    try:
        lab_cli(first.name, "up", os.path.join(TOPOLOGIES, "plumbing.yaml"))  # replaces it
        assert not any(alive(p) for p in pids)  # first run's daemons are gone
        second = state.load(first.name)
        assert second is not None
        pids += lab_pids(Lab(first.name, second))
    finally:
        out = lab_cli(first.name, "down").stdout
    assert "down in" in out
    assert leftovers(first.name) == []
    assert not any(alive(p) for p in pids)
    # the last run's logs outlive it, where 'down' said
    kept = state.logs_dir(first.name)
    try:
        assert f"logs kept in {kept}/" in out
        assert os.path.getsize(f"{kept}/hv1/ovs-vswitchd.log") > 0
        lab_cli(first.name, "down")  # idempotent, and keeps the logs it has nothing to replace
        assert os.path.exists(f"{kept}/hv1/ovs-vswitchd.log")
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_failed_up_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    name = new_lab_name()
    real_start = ovs.start

    def start_then_fail(plan: object, host: object) -> None:
        real_start(plan, host)  # type: ignore[arg-type]
        if getattr(host, "name", "") == "hv2":
            raise LabError("injected failure")

    monkeypatch.setattr(build.ovs, "start", start_then_fail)
    with pytest.raises(LabError, match="injected failure"):
        cli.cmd_up(cli.parser().parse_args(["--lab", name, "up", f"{TOPOLOGIES}/plumbing.yaml"]))
    assert leftovers(name) == []


def test_two_labs_side_by_side() -> None:
    a = bring_up("plumbing.yaml")
    try:
        b = bring_up("plumbing.yaml")
        try:
            assert a.plan.index != b.plan.index
            assert a.plan.mgmt_subnet != b.plan.mgmt_subnet
            for lab in (a, b):
                lab.add_flows("hv1", ["priority=1,actions=drop"])
            assert "actions=drop" in b.flows("hv1")
        finally:
            lab_cli(b.name, "down")
        assert "actions=drop" in a.flows("hv1")  # untouched by the other lab's down
    finally:
        lab_cli(a.name, "down")
    assert leftovers(a.name) == [] and leftovers(b.name) == []
