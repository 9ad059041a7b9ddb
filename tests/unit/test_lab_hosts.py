"""Where a lab host lives: the one thing the netns and docker backends do differently."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import yaml

from meshpeer.lab import hosts
from meshpeer.lab.docker import containers
from meshpeer.lab.plan import DOCKER, NETNS, LabPlan, make_plan
from meshpeer.lab.state import write_json
from meshpeer.lab.topology import parse
from tests.unit.test_topology import SAMPLE


def plan(backend: str, state_dir: str = "/run/meshpeer/mp") -> LabPlan:
    p = make_plan(parse(yaml.safe_load(SAMPLE)), "mp", 3, backend=backend)
    return dataclasses.replace(p, state_dir=state_dir)


def test_the_backend_changes_nothing_but_itself_and_survives_the_state_file() -> None:
    a, b = plan(NETNS), plan(DOCKER)
    assert dataclasses.replace(b, backend=NETNS) == a
    assert LabPlan.from_json(json.loads(json.dumps(b.to_json()))) == b
    with pytest.raises(ValueError, match="bad lab backend 'vbox'"):
        make_plan(parse(yaml.safe_load(SAMPLE)), "mp", 3, backend="vbox")


def test_a_netns_host_runs_commands_in_its_namespace() -> None:
    p = plan(NETNS)
    h = p.hosts[0]
    assert hosts.host_cmd(p, h, ["ovs-vsctl", "show"]) == [
        "ip", "netns", "exec", h.netns, "ovs-vsctl", "show",
    ]  # fmt: skip
    assert hosts.container_name(p, h) is None
    assert hosts.namespaces_to_add(p) == p.all_netns()


def test_a_docker_host_runs_commands_in_its_container_by_pid(tmp_path: pathlib.Path) -> None:
    p = plan(DOCKER, str(tmp_path))
    h = p.hosts[1]
    write_json(containers.record_path(p), {h.name: {"id": "c0ffee", "name": "x", "pid": 4242}})
    assert hosts.host_cmd(p, h, ["ovs-vsctl", "show"]) == [
        "nsenter", "--target=4242", "--mount", "--uts", "--ipc", "--net", "--",
        "ovs-vsctl", "show",
    ]  # fmt: skip
    assert hosts.container_name(p, h) == f"meshpeer-mp-{h.name}"
    # the containers' namespaces are named by 'ip netns attach', not made by 'ip netns add'
    assert hosts.namespaces_to_add(p) == [
        n for n in p.all_netns() if n not in {x.netns for x in p.hosts}
    ]
    with pytest.raises(Exception, match="has no container"):
        hosts.host_cmd(p, p.hosts[0], ["true"])


def test_the_image_tag_is_a_hash_of_its_content(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshpeer.lab.docker import image

    before = image.tag()
    assert before == image.tag() and before.startswith("meshpeer-lab:")
    monkeypatch.setattr(image, "PACKAGES", (*image.PACKAGES, "iperf3"))
    assert image.tag() != before
    assert "iperf3" in image.build_file()
