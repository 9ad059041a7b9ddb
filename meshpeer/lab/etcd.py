"""The lab's etcd cluster: one member per namespace (``etcd1``..) on the management network.

Each member listens on its management address (the shards' ``etcd_endpoints``) and on its
namespace's 127.0.0.1:2379, so ``scripts/lab exec etcd1 -- etcdctl ...`` needs no flags. Its
data lives under the lab's state directory (gone with 'lab down'); the lab's supervisor runs
it (restarted if it dies; :func:`stop` stops it on purpose, :func:`start` brings it back on
its data).
"""

from __future__ import annotations

import os
import time

from meshpeer.client import Client
from meshpeer.lab import supervisor
from meshpeer.lab.plan import ETCD_CLIENT_PORT, EtcdMemberPlan, LabPlan
from meshpeer.lab.sh import LabError, netns_cmd
from meshpeer.lab.supervision import Spec
from meshpeer.store import etcdmember

KIND = "etcd"
LOCAL_URL = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
# 'lab exec etcdN' adds these (etcdctl 3.4 speaks v3 to 127.0.0.1:2379 by default: said anyway)
ETCDCTL_ENV = {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": LOCAL_URL}


def member(m: EtcdMemberPlan) -> etcdmember.Member:
    return etcdmember.Member(m.name, m.mgmt_ip, ETCD_CLIENT_PORT)


def log_path(m: EtcdMemberPlan) -> str:
    return f"{m.data_dir.rsplit('/', 1)[0]}/etcd.log"


def spec(plan: LabPlan, m: EtcdMemberPlan) -> Spec:
    cluster = [member(x) for x in plan.etcd]
    argv = etcdmember.argv(
        member(m), cluster, m.data_dir, f"meshpeer-lab-{plan.lab}", also_listen=[LOCAL_URL]
    )
    return Spec(m.name, KIND, tuple(netns_cmd(m.netns, argv)), log_path(m))


def start(plan: LabPlan, m: EtcdMemberPlan) -> int:
    """Start (or restart, on its data) one member, supervised; returns its pid."""
    return supervisor.supervise(plan, spec(plan, m))


def stop(plan: LabPlan, m: EtcdMemberPlan) -> None:
    """Stop one member on purpose: the supervisor does not restart it."""
    supervisor.release(plan, KIND, m.name)


def pid(plan: LabPlan, m: EtcdMemberPlan) -> int | None:
    """The member's pid while it runs (the supervisor's record)."""
    found = next(
        (
            p
            for p in supervisor.processes(plan.state_dir)
            if p["kind"] == KIND and p["name"] == m.name
        ),
        None,
    )
    return None if found is None else found["pid"]


def healthy(m: EtcdMemberPlan) -> bool:
    """The member answers /health with a quorum behind it."""
    try:
        status, body = Client(member(m).client_url, None, timeout=2.0).request("GET", "/health")
    except OSError:
        return False
    return status == 200 and isinstance(body, dict) and body.get("health") == "true"


def wait_healthy(plan: LabPlan, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(healthy(m) for m in plan.etcd):
            return
        time.sleep(0.1)
    sick = [m.name for m in plan.etcd if not healthy(m)]
    logs = ", ".join(log_path(m) for m in plan.etcd)
    raise LabError(f"etcd members {sick} not healthy after {timeout}s (logs: {logs})")


def up(plan: LabPlan) -> str:
    """Start every member (they elect their leader together) and wait for a healthy cluster."""
    for m in plan.etcd:
        os.makedirs(os.path.dirname(m.data_dir), exist_ok=True)
        start(plan, m)
    wait_healthy(plan)
    return f"{len(plan.etcd)} members on {plan.mgmt_subnet}"
