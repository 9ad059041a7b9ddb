"""Real OVN databases for tests: one ovsdb-server serving a fresh NB and SB on a temporary unix
socket, and ovn-northd between them when a test asks for it; every process stopped by its pid.

``ovn_dbs()`` skips the test (with the reason printed by ``-ra``) only when the OVN schemas or
binaries are absent (``scripts/bootstrap`` installs them); a server that does not come up is a
failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from meshpeer.lab.ovnplan import NB_SCHEMA, SB_SCHEMA
from tests.support.wait import wait_for


@dataclass
class OvnDbs:
    """Both databases on ``sock`` (the IDL picks one by its schema's name)."""

    sock: str
    workdir: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_northd(self) -> None:
        cmd = ["ovn-northd", f"--ovnnb-db=unix:{self.sock}", f"--ovnsb-db=unix:{self.sock}",
               f"--unixctl={self.workdir}/northd.ctl", "-vconsole:off",
               f"--log-file={self.workdir}/northd.log"]  # fmt: skip
        self._start("northd", cmd)

    def nbctl(self, *args: str) -> str:
        return self._ctl("ovn-nbctl", args)

    def sbctl(self, *args: str) -> str:
        return self._ctl("ovn-sbctl", args)

    def _ctl(self, tool: str, args: tuple[str, ...]) -> str:
        cmd = [tool, f"--db=unix:{self.sock}", "--timeout=30", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=40).stdout

    def _start(self, name: str, cmd: list[str]) -> None:
        with open(f"{self.workdir}/{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()


def missing() -> str | None:
    """Why real OVN databases cannot run here (None when they can)."""
    for schema in (NB_SCHEMA, SB_SCHEMA):
        if not os.path.exists(schema):
            return f"{schema} absent (scripts/bootstrap installs OVN)"
    for tool in ("ovsdb-server", "ovsdb-tool", "ovn-northd", "ovn-nbctl", "ovn-sbctl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap installs it)"
    return None


@contextmanager
def ovn_dbs(northd: bool = False) -> Iterator[OvnDbs]:
    why = missing()
    if why:
        pytest.skip(why)
    workdir = tempfile.mkdtemp(prefix="ovndb-")
    dbs = OvnDbs(sock=f"{workdir}/db.sock", workdir=workdir)
    try:
        for name, schema in (("nb", NB_SCHEMA), ("sb", SB_SCHEMA)):
            subprocess.run(["ovsdb-tool", "create", f"{workdir}/{name}.db", schema], check=True)
        dbs._start("ovsdb-server", [
            "ovsdb-server", f"{workdir}/nb.db", f"{workdir}/sb.db", f"--remote=punix:{dbs.sock}",
            f"--unixctl={workdir}/server.ctl", "--no-chdir", "-vconsole:off",
            f"--log-file={workdir}/server.log",
        ])  # fmt: skip
        server = dbs.procs["ovsdb-server"]
        wait_for(lambda: os.path.exists(dbs.sock) or server.poll() is not None,
                 what="ovsdb-server's socket")  # fmt: skip
        assert server.poll() is None, f"ovsdb-server exited: see {workdir}/ovsdb-server.out"
        dbs.nbctl("init")  # NB_Global, as the lab's first ovn-nbctl call makes it
        if northd:
            dbs.start_northd()
        yield dbs
    finally:
        dbs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
