"""The OVN databases through the ``ovs`` Python IDL (docs/ovn.md): a batch of northbound ports,
their deletion or their southbound bindings is one transaction on one connection, instead of
``ovn-nbctl``/``ovn-sbctl`` runs whose client time dominated big batches (~36 s for 5,000 ports
in the probe of issue 22).

Every wait is bounded (LabError past its deadline). ``commit(..., wait="hv")`` does what
``ovn-nbctl --wait=hv`` does (bump ``NB_Global.nb_cfg`` in the same transaction, then wait until
ovn-northd has set ``hv_cfg`` to it: every chassis applied it) and also reads when each chassis
says it applied it: ``Chassis_Private.nb_cfg_timestamp`` in the southbound database.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ovs.db.idl
import ovs.poller

from meshpeer.lab.ovnplan import NB_SCHEMA, SB_SCHEMA
from meshpeer.lab.sh import LabError

WAIT_S = 30.0

# Only what the lab reads or writes is replicated (a 10k-port switch stays cheap to follow).
NB_TABLES = {
    "NB_Global": ["nb_cfg", "sb_cfg", "hv_cfg", "nb_cfg_timestamp", "hv_cfg_timestamp"],
    "Logical_Switch": ["name", "ports"],
    "Logical_Switch_Port": ["name", "addresses"],
}
SB_TABLES = {
    "Chassis": ["name"],
    "Chassis_Private": ["name", "nb_cfg", "nb_cfg_timestamp"],
    "Port_Binding": ["logical_port", "chassis"],
}

Txn = Any  # ovs.db.idl.Transaction: the ovs package has no type hints
TXN = ovs.db.idl.Transaction


class Db:
    """One database (``remote``, e.g. ``unix:/path``) replicated for ``tables``."""

    def __init__(
        self, remote: str, schema: str, tables: dict[str, list[str]], timeout: float = WAIT_S
    ) -> None:
        helper = ovs.db.idl.SchemaHelper(location=schema)
        for table, columns in tables.items():
            helper.register_columns(table, columns)
        self.remote = remote
        self.idl = ovs.db.idl.Idl(remote, helper, leader_only=False)
        try:
            self.run_until(self.idl.has_ever_connected, timeout, "connected and replicated")
        except BaseException:
            self.idl.close()
            raise

    def close(self) -> None:
        self.idl.close()

    def __enter__(self) -> Db:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def rows(self, table: str) -> Iterable[Any]:
        return list(self.idl.tables[table].rows.values())

    def one(self, table: str, **match: Any) -> Any:
        """The row of ``table`` whose columns equal ``match`` (LabError if none)."""
        for r in self.rows(table):
            if all(getattr(r, k) == v for k, v in match.items()):
                return r
        raise LabError(f"{self.remote}: no {table} row with {match}")

    def run_until(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Process the database's updates until ``done()``; the monotonic time it became true.
        LabError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.idl.run()
            if done():
                return time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                raise LabError(f"{self.remote}: not {what} within {timeout:.0f}s")
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            poller.timer_wait(int(min(left, 1.0) * 1000))
            poller.block()

    def transact(self, build: Callable[[Txn], None], timeout: float = WAIT_S) -> Txn:
        """One transaction made by ``build``, committed within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        txn = ovs.db.idl.Transaction(self.idl)
        build(txn)
        status = txn.commit()
        while status == TXN.INCOMPLETE:
            left = deadline - time.monotonic()
            if left <= 0:
                txn.abort()
                raise LabError(f"{self.remote}: transaction not committed within {timeout:.0f}s")
            poller = ovs.poller.Poller()
            self.idl.wait(poller)
            txn.wait(poller)
            poller.timer_wait(int(min(left, 1.0) * 1000))
            poller.block()
            self.idl.run()
            status = txn.commit()
        if status not in (TXN.SUCCESS, TXN.UNCHANGED):
            raise LabError(f"{self.remote}: transaction {status}: {txn.get_error()}")
        return txn


def nb(sock: str, timeout: float = WAIT_S) -> Db:
    return Db(f"unix:{sock}", NB_SCHEMA, NB_TABLES, timeout)


def sb(sock: str, timeout: float = WAIT_S) -> Db:
    return Db(f"unix:{sock}", SB_SCHEMA, SB_TABLES, timeout)


@dataclass
class Applied:
    """When an NB transaction got where it was waited for, in seconds after its start."""

    wall: float  # time.time() at the start (Chassis_Private.nb_cfg_timestamp is wall-clock)
    commit_s: float
    nb_cfg: int | None = None  # what it was waited for with
    wait_s: float | None = None  # until NB_Global.sb_cfg / hv_cfg reached nb_cfg


def commit(
    db: Db, build: Callable[[Txn], None], wait: str = "", timeout: float = WAIT_S
) -> Applied:
    """One NB transaction; ``wait``: "sb" until ovn-northd has put it in the SB, "hv" until every
    chassis applied it too (``NB_Global.hv_cfg``), both within ``timeout`` seconds in all."""
    t0, wall0 = time.monotonic(), time.time()
    glob = db.one("NB_Global")
    n = glob.nb_cfg + 1

    def txn_build(txn: Txn) -> None:
        build(txn)
        if wait:  # a write, not Row.increment: the Python IDL drops a transaction of only that
            glob.verify("nb_cfg")
            glob.nb_cfg = n

    db.transact(txn_build, timeout)
    out = Applied(wall=wall0, commit_s=time.monotonic() - t0)
    if not wait:
        return out
    out.nb_cfg = n
    column = {"sb": "sb_cfg", "hv": "hv_cfg"}[wait]

    def reached() -> bool:
        return bool(getattr(db.one("NB_Global"), column) >= n)

    left = timeout - (time.monotonic() - t0)
    out.wait_s = db.run_until(reached, left, f"{column} >= {n}") - t0
    return out


def applied_at(sb_db: Db, nb_cfg: int, since_wall: float, timeout: float = 5.0) -> dict[str, int]:
    """Per chassis (its Chassis_Private row), ms from ``since_wall`` (``time.time()``) to its
    ``nb_cfg_timestamp`` (wall-clock ms, an integer) once its ``nb_cfg`` reached ``nb_cfg`` (the
    SB replica can lag the NB's ``hv_cfg`` a little; bounded), rounded to the nearest ms."""

    def caught_up() -> bool:
        return all(r.nb_cfg >= nb_cfg for r in sb_db.rows("Chassis_Private"))

    sb_db.run_until(caught_up, timeout, f"every Chassis_Private at nb_cfg {nb_cfg}")
    return {
        r.name: round(r.nb_cfg_timestamp - since_wall * 1000) for r in sb_db.rows("Chassis_Private")
    }


# --- what the lab and the benchmark write -------------------------------------------------------


def add_ports(switch: str, ports: list[tuple[str, str]], db: Db) -> Callable[[Txn], None]:
    """A transaction builder: switch ports ``(name, "<mac> <ip>")`` added to ``switch``."""

    def build(txn: Txn) -> None:
        ls = db.one("Logical_Switch", name=switch)
        table = db.idl.tables["Logical_Switch_Port"]
        for name, addresses in ports:
            row = txn.insert(table)
            row.name = name
            row.addresses = [addresses]
            ls.addvalue("ports", row.uuid)

    return build


def delete_ports(switch: str, names: set[str], db: Db) -> Callable[[Txn], None]:
    """A transaction builder: the switch ports ``names`` removed from ``switch`` (and so gone:
    the NB garbage-collects unreferenced ports)."""

    def build(txn: Txn) -> None:
        ls = db.one("Logical_Switch", name=switch)
        for p in ls.ports:
            if p.name in names:
                ls.delvalue("ports", p.uuid)

    return build


def bind(sb_db: Db, ports: set[str], chassis: str, timeout: float = WAIT_S) -> int:
    """Bind the SB ports ``ports`` (once ovn-northd has made them) to ``chassis``, as a host's
    ovn-controller would claim them; how many were bound."""
    sb_db.run_until(
        lambda: len({r.logical_port for r in sb_db.rows("Port_Binding")} & ports) == len(ports),
        timeout,
        f"{len(ports)} Port_Binding rows",
    )
    ch = sb_db.one("Chassis", name=chassis)
    rows = [r for r in sb_db.rows("Port_Binding") if r.logical_port in ports]

    def build(_: Txn) -> None:
        for r in rows:
            r.chassis = [ch]

    sb_db.transact(build, timeout)
    return len(rows)


def sync_hv(db: Db, budget: float, step: float = WAIT_S) -> tuple[int, Applied]:
    """Until every chassis has applied everything so far: an empty transaction waited for with
    ``wait="hv"`` (``ovn-nbctl --wait=hv sync``), again with a new ``nb_cfg`` each time one has
    waited ``step`` seconds in vain, since after a big batch one such wait may never end until
    another NB change arrives (docs/ovn.md). How many it took and the last one; LabError past
    ``budget`` seconds."""
    deadline = time.monotonic() + budget
    for n in itertools.count(1):
        try:
            return n, commit(db, lambda _: None, "hv", min(step, deadline - time.monotonic()))
        except LabError:
            if time.monotonic() + 1 > deadline:
                raise
    raise AssertionError("unreachable")
