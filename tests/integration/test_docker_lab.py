"""The docker backend's lifecycle: hosts really are containers, a second 'up' builds nothing,
and 'down' leaves no container, engine, mount or process, also after a failed 'up'."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from meshpeer.lab import build, cli, state
from meshpeer.lab.docker import containers, daemon, image, paths
from meshpeer.lab.procs import alive
from meshpeer.lab.sh import LabError
from tests.integration.labkit import TOPOLOGIES, lab_cli, new_lab_name
from tests.integration.test_lifecycle import leftovers

pytestmark = pytest.mark.skipif(
    shutil.which("dockerd") is None or shutil.which("debootstrap") is None,
    reason="the docker backend needs docker.io and debootstrap (run scripts/bootstrap)",
)
PLUMBING = os.path.join(TOPOLOGIES, "plumbing.yaml")


@pytest.fixture(autouse=True)
def docker_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every lab of this module on docker, and no engine of the lab's running before it."""
    monkeypatch.setenv("MESHPEER_LAB_BACKEND", "docker")
    assert daemon.own_pid() is None, "the lab's own Docker engine is already running"
    yield


def docker_leftovers(lab: str) -> list[str]:
    """What the docker side could leave behind: containers of the lab, the lab's own engine
    (and its containerd), its run directory, mounts, and image layers outside the cache."""
    found = [f"engine pid {p}" for p in [daemon.own_pid()] if p is not None]
    found += [f"dir {d}" for d in (paths.RUN_DIR, paths.SCRATCH) if os.path.exists(d)]
    found += [
        f"mount {m}"
        for m in daemon.mounts_under(
            paths.RUN_DIR, f"{paths.DATA_ROOT}/overlay2", state.state_dir(lab)
        )
    ]
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if alive(pid) and (paths.RUN_DIR in cmd or f"/run/meshpeer/{lab}/" in cmd):
            found.append(f"process {pid} {cmd[:80]}")
    return found


def cached_images() -> set[str]:
    """The images in the lab's engine's store, started for the look and stopped again."""
    with daemon.locked():
        client = daemon.ensure()
        try:
            return {t for i in client.images.list(all=True) for t in i.tags} | {
                i.id for i in client.images.list(filters={"dangling": True})
            }
        finally:
            client.close()
            daemon.stop_if_idle()


def test_hosts_are_containers_a_second_up_builds_nothing_and_down_leaves_nothing() -> None:
    name = new_lab_name()
    try:
        first = lab_cli(name, "up", PLUMBING).stdout
        again = lab_cli(name, "up", PLUMBING).stdout  # replaces the lab: engine and cache reused
        st = json.loads(lab_cli(name, "status", "--json").stdout)
        assert st["backend"] == "docker"
        assert [h["container"] for h in st["hosts"]] == [
            f"meshpeer-{name}-{h}" for h in ("hv1", "hv2", "hv3")
        ]
        assert all(h["ovs_running"] for h in st["hosts"]), st["hosts"]
        # OVS runs inside the container: its hostname, its filesystem (the image's Debian)
        assert lab_cli(name, "exec", "hv2", "--", "hostname").stdout.strip() == "hv2"
        pid = next(p["pid"] for p in st["processes"] if p["kind"] == "ovs-vswitchd")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert os.path.exists(f"/proc/{pid}/root/etc/debian_version")
        show = lab_cli(name, "exec", "hv1", "--", "ovs-vsctl", "show").stdout
        assert "br-int" in show and "v-a1" in show
    finally:
        down = lab_cli(name, "down").stdout
    assert f"{image.tag()} cached" in again, again
    assert "containers" in first
    assert "3 containers removed" in down, down
    assert leftovers(name) == []
    assert docker_leftovers(name) == []
    assert set(cached_images()) == {image.tag(), image.base_tag()}
    shutil.rmtree(state.logs_dir(name), ignore_errors=True)


@pytest.mark.parametrize("where", ["after the containers", "after OVS started on hv2"])
def test_failed_up_leaves_nothing(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = new_lab_name()
    if where == "after the containers":
        real_create = containers.create

        def create_then_fail(plan: object, *args: object) -> str:
            real_create(plan, *args)  # type: ignore[arg-type]
            raise LabError("injected failure")

        monkeypatch.setattr(containers, "create", create_then_fail)
    else:
        real_start = build.ovs.start

        def start_then_fail(plan: object, host: object) -> None:
            real_start(plan, host)  # type: ignore[arg-type]
            if getattr(host, "name", "") == "hv2":
                raise LabError("injected failure")

        monkeypatch.setattr(build.ovs, "start", start_then_fail)
    try:
        with pytest.raises(LabError, match="injected failure"):
            cli.cmd_up(cli.parser().parse_args(["--lab", name, "up", PLUMBING]))
        assert leftovers(name) == []
        assert docker_leftovers(name) == []
    finally:
        lab_cli(name, "down")
        shutil.rmtree(state.logs_dir(name), ignore_errors=True)


def test_two_docker_labs_share_the_engine_until_the_last_goes_down() -> None:
    a, b = new_lab_name(), new_lab_name()
    try:
        lab_cli(a, "up", PLUMBING)
        lab_cli(b, "up", PLUMBING)
        engine = daemon.own_pid()
        assert engine is not None
        lab_cli(a, "down")
        assert daemon.own_pid() == engine, "one lab's down stopped the engine under the other"
        st = json.loads(lab_cli(b, "status", "--json").stdout)
        assert all(h["ovs_running"] for h in st["hosts"]), st["hosts"]
        assert lab_cli(b, "exec", "hv3", "--", "hostname").stdout.strip() == "hv3"
        assert "container meshpeer-" in lab_cli(b, "status").stdout
    finally:
        lab_cli(a, "down")
        lab_cli(b, "down")
    assert leftovers(a) == [] and leftovers(b) == []
    assert docker_leftovers(a) == [] and docker_leftovers(b) == []
    for name in (a, b):
        shutil.rmtree(state.logs_dir(name), ignore_errors=True)
