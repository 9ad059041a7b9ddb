"""The OVN databases through the IDL (meshpeer/lab/ovnidl.py), against a real ovsdb-server with
OVN's NB and SB schemas and, where a wait needs it, a real ovn-northd (tests/support/ovndb.py).

The test plays the chassis itself where ovn-controller would: it registers one and writes its
``Chassis_Private.nb_cfg`` / ``nb_cfg_timestamp`` as ovn-controller reports a change applied,
so the waits are checked against the rows ovn-northd really reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshpeer.lab import ovnidl
from meshpeer.lab.ovnplan import NB_SCHEMA, SB_SCHEMA
from meshpeer.lab.sh import LabError
from tests.support.ovndb import OvnDbs, missing, ovn_dbs

# what a chassis (ovn-controller) reads and writes
CHASSIS_TABLES = {
    "SB_Global": ["nb_cfg"],
    "Chassis": ["name"],
    "Chassis_Private": ["name", "chassis", "nb_cfg", "nb_cfg_timestamp"],
}


@pytest.fixture
def dbs() -> Iterator[OvnDbs]:
    with ovn_dbs() as d:
        yield d


@pytest.fixture
def northd() -> Iterator[OvnDbs]:
    with ovn_dbs(northd=True) as d:
        yield d


def nb_ports(d: OvnDbs) -> dict[str, str]:
    """Switch ports by name -> addresses, read by another client (ovn-nbctl)."""
    out = d.nbctl("--bare", "--columns=name,addresses", "list", "Logical_Switch_Port")
    blocks = [b.splitlines() for b in out.strip().split("\n\n") if b.strip()]
    return {b[0]: b[1] for b in blocks}


def nb_global(d: OvnDbs, column: str) -> int:
    return int(d.nbctl("get", "NB_Global", ".", column))


class Chassis:
    """A registered chassis whose ``Chassis_Private`` the test writes as ovn-controller does."""

    def __init__(self, d: OvnDbs, name: str) -> None:
        d.sbctl("chassis-add", name, "geneve", "127.0.0.1")
        self.name = name
        self.db = ovnidl.Db(f"unix:{d.sock}", SB_SCHEMA, CHASSIS_TABLES)
        ch = self.db.one("Chassis", name=name)

        def register(txn: Any) -> None:
            row = txn.insert(self.db.idl.tables["Chassis_Private"])
            row.name, row.chassis, row.nb_cfg, row.nb_cfg_timestamp = name, [ch], 0, 0

        self.db.transact(register)

    def report(self, nb_cfg: int, timestamp_ms: int) -> None:
        def build(_: Any) -> None:
            row = self.db.one("Chassis_Private", name=self.name)
            row.nb_cfg, row.nb_cfg_timestamp = nb_cfg, timestamp_ms

        self.db.transact(build)

    def sb_nb_cfg(self) -> int:
        self.db.idl.run()
        return int(self.db.one("SB_Global").nb_cfg)


def test_a_database_nobody_serves_is_a_lab_error_within_the_deadline(tmp_path: Any) -> None:
    if missing():
        pytest.skip(str(missing()))
    with pytest.raises(LabError, match="not connected and replicated within"):
        ovnidl.Db(f"unix:{tmp_path}/nobody.sock", NB_SCHEMA, ovnidl.NB_TABLES, timeout=0.5)


def test_ports_are_added_and_deleted_in_one_transaction_each_without_a_wait(dbs: OvnDbs) -> None:
    dbs.nbctl("ls-add", "ls-red")
    with ovnidl.nb(dbs.sock) as nb:
        before = nb.one("NB_Global").nb_cfg
        ports = [("p1", "02:00:00:00:00:01 10.2.1.10"), ("p2", "02:00:00:00:00:02 10.2.1.11")]
        a = ovnidl.commit(nb, ovnidl.add_ports("ls-red", ports, nb))
        assert nb_ports(dbs) == dict(ports)
        assert a.nb_cfg is None and a.wait_s is None
        assert nb_global(dbs, "nb_cfg") == before, "no wait: nb_cfg untouched"
        ovnidl.commit(nb, ovnidl.delete_ports("ls-red", {"p1"}, nb))
        # unreferenced, the NB garbage-collects the port: gone, not only off the switch
        assert nb_ports(dbs) == {"p2": "02:00:00:00:00:02 10.2.1.11"}
        assert dbs.nbctl("--bare", "--columns=ports", "list", "Logical_Switch").split() == [
            dbs.nbctl("--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name=p2").strip()
        ]
        with pytest.raises(LabError, match="no Logical_Switch row"):
            nb.one("Logical_Switch", name="ls-blue")


@pytest.mark.parametrize("wait, column", [("sb", "sb_cfg"), ("hv", "hv_cfg")])
def test_a_wait_bumps_nb_cfg_in_the_same_transaction_and_returns_once_northd_has_it(
    northd: OvnDbs, wait: str, column: str
) -> None:
    with ovnidl.nb(northd.sock) as nb:
        before = nb_global(northd, "nb_cfg")
        # an empty transaction too: 'ovn-nbctl --wait=hv sync' (Row.increment alone is dropped)
        a = ovnidl.commit(nb, lambda _: None, wait, timeout=30)
        assert a.nb_cfg == before + 1 == nb_global(northd, "nb_cfg")
        assert a.wait_s is not None and a.wait_s >= a.commit_s
        assert nb_global(northd, column) >= a.nb_cfg


def test_a_wait_nobody_answers_is_a_lab_error_but_the_change_is_written(dbs: OvnDbs) -> None:
    dbs.nbctl("ls-add", "ls-red")
    with ovnidl.nb(dbs.sock) as nb:  # no ovn-northd: hv_cfg never moves
        add = ovnidl.add_ports("ls-red", [("p1", "02:00:00:00:00:01 10.2.1.10")], nb)
        with pytest.raises(LabError, match="not hv_cfg >= 1 within"):
            ovnidl.commit(nb, add, "hv", timeout=1.0)
    assert list(nb_ports(dbs)) == ["p1"]


def test_hv_waits_for_every_chassis_and_its_report_says_when_it_applied(northd: OvnDbs) -> None:
    hv1 = Chassis(northd, "hv1")
    with ovnidl.nb(northd.sock) as nb, ovnidl.sb(northd.sock) as sb:
        a = ovnidl.commit(nb, lambda _: None, "sb")
        n = a.nb_cfg
        assert n is not None
        with pytest.raises(LabError, match=f"not hv_cfg >= {n}"):
            nb.run_until(lambda: nb.one("NB_Global").hv_cfg >= n, 1.0, f"hv_cfg >= {n}")
        with pytest.raises(LabError, match=f"Chassis_Private at nb_cfg {n}"):
            ovnidl.applied_at(sb, n, a.wall, timeout=0.5)
        # hv1 reports it applied n at a wall-clock ms; from a start 0.4 ms past a whole ms,
        # 249.6 ms: rounded, not truncated
        hv1.report(n, 1_700_000_000_250)
        nb.run_until(lambda: nb.one("NB_Global").hv_cfg >= n, 30, f"hv_cfg >= {n}")
        assert ovnidl.applied_at(sb, n, 1_700_000_000.0004) == {"hv1": 250}
    hv1.db.close()


def test_sync_hv_tries_again_with_a_fresh_nb_cfg_when_a_wait_hangs(northd: OvnDbs) -> None:
    """A chassis that never reports the first sync (the hung ``--wait=hv`` of issue 22): the
    second sync, with a new nb_cfg, returns once the chassis reports that one."""
    hv1 = Chassis(northd, "hv1")
    first = nb_global(northd, "nb_cfg") + 1
    errors: list[BaseException] = []

    def chassis() -> None:  # reports only from the second sync on
        try:
            hv1.db.run_until(lambda: hv1.sb_nb_cfg() > first, 30, "a second sync")
            hv1.report(hv1.sb_nb_cfg(), int(time.time() * 1000))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=chassis, daemon=True)
    t.start()
    with ovnidl.nb(northd.sock) as nb:
        n, last = ovnidl.sync_hv(nb, budget=60, step=1.0)
    t.join(timeout=30)
    hv1.db.close()
    assert not errors
    assert (n, last.nb_cfg) == (2, first + 1)


def test_sync_hv_gives_up_past_its_budget(northd: OvnDbs) -> None:
    hv1 = Chassis(northd, "hv1")  # registered, never reports
    with ovnidl.nb(northd.sock) as nb, pytest.raises(LabError, match="not hv_cfg"):
        ovnidl.sync_hv(nb, budget=1.5, step=0.5)
    hv1.db.close()


def test_bind_sets_the_chassis_of_the_bindings_northd_made(northd: OvnDbs) -> None:
    northd.nbctl("ls-add", "ls-red")
    northd.sbctl("chassis-add", "remote0", "geneve", "127.0.0.2")
    ports = [(f"p{i}", f"02:00:00:00:00:0{i} 10.2.1.1{i}") for i in range(3)]
    with ovnidl.nb(northd.sock) as nb, ovnidl.sb(northd.sock) as sb:
        ovnidl.commit(nb, ovnidl.add_ports("ls-red", ports, nb))  # northd follows, bind waits
        assert ovnidl.bind(sb, {"p0", "p2"}, "remote0") == 2
        with pytest.raises(LabError, match="1 Port_Binding rows"):
            ovnidl.bind(sb, {"p9"}, "remote0", timeout=0.5)
    remote0 = northd.sbctl("--bare", "--columns=_uuid", "find", "Chassis", "name=remote0").strip()
    bound = {
        p: northd.sbctl(
            "--bare", "--columns=chassis", "find", "Port_Binding", f"logical_port={p}"
        ).strip()
        for p in ("p0", "p1", "p2")
    }
    assert bound == {"p0": remote0, "p1": "", "p2": remote0}
