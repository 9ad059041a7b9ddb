"""Process helpers, on real processes: a zombie counts as gone, terminate escalates."""

from __future__ import annotations

import os
import subprocess
import sys

from meshpeer.lab.procs import alive, read_pidfile, terminate
from tests.support.wait import wait_for


def test_zombie_counts_as_gone() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        wait_for(lambda: not alive(pid), 30, 0.01, "the child to exit")
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "Z"  # still there, unreaped
        assert not alive(pid)
    finally:
        os.waitpid(pid, 0)
    assert not alive(pid)


def test_terminate_stops_a_process_that_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # handler installed
        assert alive(proc.pid)
        assert terminate([proc.pid], timeout=0.2) == []
        assert proc.wait(timeout=5) == -9
    finally:
        proc.kill()
        proc.wait()


def test_read_pidfile(tmp_path: object) -> None:
    import pathlib

    d = pathlib.Path(str(tmp_path))
    (d / "ok.pid").write_text("123\n")
    (d / "bad.pid").write_text("x")
    assert read_pidfile(str(d / "ok.pid")) == 123
    assert read_pidfile(str(d / "bad.pid")) is None
    assert read_pidfile(str(d / "missing.pid")) is None
