"""The docker backend's cleanup decisions, with the engine's client mocked (the real engine is
in tests/integration/test_docker_lab.py). Each case was found by a review and failed before."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from unittest import mock

import docker.errors
import pytest

from meshpeer.lab.docker import containers, daemon, image


def test_a_stale_pidfile_never_gets_another_process_signalled(tmp_path: Path) -> None:
    """dockerd died without removing its pidfile, and its pid went to another process: that
    one is not the lab's engine, and 'down' leaves it alone."""
    other = subprocess.Popen(["sleep", "30"])  # not a dockerd
    try:
        pidfile = tmp_path / "dockerd.pid"
        pidfile.write_text(str(other.pid))
        with (
            mock.patch.object(daemon, "PIDFILE", str(pidfile)),
            mock.patch.object(daemon, "_client", return_value=None),
            mock.patch.object(daemon, "_remove_run_dir"),
            mock.patch.object(daemon, "terminate", return_value=[]) as term,
        ):
            assert daemon.own_pid() is None
            assert daemon.stop_if_idle() is False
        assert not term.called, term.call_args
    finally:
        other.kill()
        other.wait()


def test_down_removes_the_containers_on_the_engine_docker_host_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "docker.sock"
    sock.touch()  # a rootless engine's socket
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    left = mock.Mock()
    client = mock.Mock()
    client.containers.list.return_value = [left]
    with (
        mock.patch.object(daemon, "own_pid", return_value=None),
        mock.patch.object(daemon, "SYSTEM_SOCKET", str(tmp_path / "absent.sock")),
        mock.patch.object(daemon, "find", return_value=client),
        mock.patch.object(daemon, "locked", contextlib.nullcontext),
        mock.patch.object(daemon, "stop_if_idle", return_value=False),
    ):
        assert containers.remove("lab1") == 1
    assert left.remove.called


def test_an_old_image_in_use_fails_no_build_and_a_system_engine_is_not_pruned() -> None:
    client = mock.Mock()
    client.images.list.return_value = [mock.Mock(tags=[f"{image.REPO}:0000000000000000"])]
    client.images.remove.side_effect = docker.errors.APIError("409 Conflict: in use")
    with mock.patch.object(daemon, "own_pid", return_value=None):
        image._remove_stale(client)
    assert not client.images.prune.called
    with mock.patch.object(daemon, "own_pid", return_value=4242):
        image._remove_stale(client)
    assert client.images.prune.called


@pytest.mark.parametrize("prefix", ["/usr/local", "/root/.pyenv/versions/3.11.9"])
def test_a_python_not_debians_own_is_mounted(prefix: str) -> None:
    plan = mock.Mock(state_dir="/var/lib/meshpeer/labs/x")
    with mock.patch.object(containers.sys, "base_prefix", prefix):
        assert prefix in containers.mounts(plan)
