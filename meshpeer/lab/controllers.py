"""Controller shards in the lab: directory, config files, processes, and the topology's intent.

Each controller runs `meshpeer-manager ryu_apps.controller` inside its own namespace on the
management network; the root namespace reaches its REST API through the management veth.
With the lab's etcd cluster (``etcd:`` in the topology) every shard keeps its intent there,
and a controller with ``replicas: N`` runs N processes in its namespace, replica ``a`` on
``rest_port``, ``b`` on ``rest_port + 1``..: one leads, the others answer 503 naming it
(docs/lab.md, "etcd and replicas").
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import yaml

from meshpeer import pki
from meshpeer.client import ApiFailure, Client, Replicas
from meshpeer.controller import config
from meshpeer.controller.config import ShardConfig, ShardEntry
from meshpeer.directory import public_doc
from meshpeer.lab import supervisor
from meshpeer.lab.plan import ControllerPlan, LabPlan, Secrets, vni_block
from meshpeer.lab.procs import ROOT, alive, manager_cmd, read_pidfile, write_secret
from meshpeer.lab.progress import Note, no_note
from meshpeer.lab.sh import LabError, netns_cmd
from meshpeer.lab.supervision import Spec
from meshpeer.lab.topology import Endpoint, Topology

KIND = "shard"


def new_secrets() -> Secrets:
    return Secrets(
        secrets.token_hex(16),
        secrets.token_hex(32),
        secrets.token_hex(16),
        secrets.token_hex(32),
        secrets.token_hex(16),
    )


@dataclass(frozen=True)
class Replica:
    """One process of a controller: ``replica`` is its name among the shard's replicas (None:
    a shard of one process, named as before replicas existed)."""

    controller: str
    replica: str | None
    port: int

    @property
    def name(self) -> str:
        """The supervisor's name for it (``ctl1``, or ``ctl1-a``)."""
        return self.controller if self.replica is None else f"{self.controller}-{self.replica}"

    @property
    def suffix(self) -> str:
        return "" if self.replica is None else f"-{self.replica}"


def replicas(c: ControllerPlan) -> list[Replica]:
    names = c.replica_names()
    if not names:
        return [Replica(c.name, None, c.rest_port)]
    return [Replica(c.name, r, c.rest_port + i) for i, r in enumerate(names)]


def replica_url(plan: LabPlan, c: ControllerPlan, r: Replica) -> str:
    return f"{'https' if plan.tls else 'http'}://{c.mgmt_ip}:{r.port}"


def replica_urls(plan: LabPlan, c: ControllerPlan) -> list[str]:
    return [replica_url(plan, c, r) for r in replicas(c)]


def url(plan: LabPlan, c: ControllerPlan) -> str:
    """The controller's URL in the shard directory: its first replica's (the hosts follow
    the leader from there: docs/decisions.md)."""
    return replica_url(plan, c, replicas(c)[0])


def leader_url(plan: LabPlan, c: ControllerPlan) -> str | None:
    """The URL of the replica that serves now (``GET /healthz`` 200: standbys answer 503);
    None while none does. A shard of one process: its URL, whether it is up or not."""
    found = replicas(c)
    if len(found) == 1:
        return url(plan, c)
    return next((u for u, role in roles(plan, c) if role == "leader"), None)


def roles(plan: LabPlan, c: ControllerPlan) -> list[tuple[str, str]]:
    """Each replica's URL and role: ``leader`` if it serves (200), else ``standby``."""
    return [(u, role) for u, role, _ in health(plan, c)]


def health(plan: LabPlan, c: ControllerPlan) -> list[tuple[str, str, bool]]:
    """Each replica's URL, role and whether it is alive: ``leader`` if it serves (200), else
    ``standby``; alive if it answered as the leader or as a standby (the 503 naming the
    leader), not if it did not answer (down, starting) or answered anything else."""
    out = []
    for r in replicas(c):
        u = replica_url(plan, c, r)
        try:
            status, body = Client(u, None, 2.0, ca_file=plan.ca_file).request("GET", "/healthz")
        except (OSError, ValueError):  # refused, timed out, not JSON
            status, body = 0, None
        standby = status == 503 and isinstance(body, dict) and "leader" in body
        out.append((u, "leader" if status == 200 else "standby", status == 200 or standby))
    return out


def kill_leader(plan: LabPlan, c: ControllerPlan) -> tuple[Replica, int]:
    """SIGKILL the replica of ``c`` that leads now (no resignation: its lease runs out) and
    wait until it is gone; returns it and its pid (its supervisor starts it again)."""
    roles_now = dict(roles(plan, c))
    leading = [r for r in replicas(c) if roles_now[replica_url(plan, c, r)] == "leader"]
    if len(leading) != 1:
        raise LabError(f"controller {c.name}: no single leader to kill ({roles_now})")
    (r,) = leading
    found = pid(plan, c, r)
    if found is None:
        raise LabError(f"controller {c.name}: leader {r.name} has no pid")
    os.kill(found, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(found):
        if time.monotonic() > deadline:
            raise LabError(f"controller {c.name}: {r.name} (pid {found}) survived SIGKILL")
        time.sleep(0.005)
    return r, found


def back_after_kill(plan: LabPlan, c: ControllerPlan, r: Replica, killed: int) -> bool:
    """Replica ``r``, killed as pid ``killed``, runs again (a new pid) and answers, and one
    replica of ``c`` leads. Usually ``r`` stands by; it leads if the replica that took over
    lost the lead meanwhile (a lease not renewed in time on a loaded machine: it exits and
    its supervisor starts it again)."""
    new = pid(plan, c, r)
    u = replica_url(plan, c, r)
    answers = health(plan, c)
    me = [ok for url_, _, ok in answers if url_ == u]
    leaders = [url_ for url_, role, ok in answers if role == "leader" and ok]
    return new not in (None, killed) and me == [True] and len(leaders) == 1


def leader_client(
    plan: LabPlan, c: ControllerPlan, timeout: float = 10.0, retry_for: float = 30.0
) -> Replicas:
    """A client of ``c`` that follows its leader through failovers (``meshpeer.client``)."""
    urls = replica_urls(plan, c)
    return Replicas(urls, plan.api_token, timeout, plan.ca_file, retry_for)


def client(plan: LabPlan, c: ControllerPlan, token: str | None, timeout: float = 10.0) -> Client:
    """A REST client of controller ``c`` (its leader, with replicas) that verifies it against
    the lab's CA."""
    return Client(leader_url(plan, c) or url(plan, c), token, timeout, ca_file=plan.ca_file)


def tls_files(plan: LabPlan, c: ControllerPlan) -> pki.KeyPair:
    """Controller ``c``'s server certificate and key."""
    return pki.KeyPair(f"{rundir(plan, c)}/tls.pem", f"{rundir(plan, c)}/tls.key")


def write_pki(plan: LabPlan) -> None:
    """A new CA for this lab, and a certificate per controller for its management IP and
    name (the CA's key stays in the lab's state directory, mode 0600)."""
    ca = pki.make_ca(plan.pki_dir, f"meshpeer lab {plan.lab} CA")
    for c in plan.controllers:
        prefix = tls_files(plan, c).cert_file.removesuffix(".pem")
        pki.issue_server(ca, prefix, c.name, [c.mgmt_ip, c.name])


def rundir(plan: LabPlan, c: ControllerPlan) -> str:
    return f"{plan.state_dir}/{c.name}"


def directory_doc(plan: LabPlan, topo: Topology) -> dict[str, Any]:
    shards = {
        c.name: ShardEntry(
            url(plan, c),
            vni_block(k),
            [v.name for v in topo.vpcs if v.controller == c.name],
            replica_urls(plan, c) if c.replicas > 1 else [],
        )
        for k, c in enumerate(plan.controllers)
    }
    return config.directory_doc(shards, plan.grant_key, plan.federation_token, plan.host_key)


def config_text(plan: LabPlan, c: ControllerPlan, r: Replica | None = None) -> str:
    r = r or replicas(c)[0]
    files = tls_files(plan, c) if plan.tls else None
    etcd = bool(plan.etcd)
    return ShardConfig(
        shard=c.name,
        listen_host=c.mgmt_ip,
        listen_port=r.port,
        store_path=f"{rundir(plan, c)}/store.db",
        store="etcd" if etcd else None,
        etcd_endpoints=",".join(plan.etcd_endpoints) if etcd else None,
        replica=r.replica,
        advertise_url=replica_url(plan, c, r) if etcd else None,
        api_token=plan.api_token,
        directory_file=plan.directory_file,
        readonly_token=plan.readonly_token or None,
        tls_cert_file=files.cert_file if files else None,
        tls_key_file=files.key_file if files else None,
        ca_file=plan.ca_file,
    ).text()


def write_configs(plan: LabPlan, topo: Topology) -> None:
    """The directories and the shards' config files; those with a secret are 0600."""
    doc = directory_doc(plan, topo)
    write_secret(plan.directory_file, yaml.safe_dump(doc, sort_keys=True))
    with open(plan.hosts_directory_file, "w", encoding="utf-8") as f:
        yaml.safe_dump(public_doc(doc), f, sort_keys=True)
    for c in plan.controllers:
        os.makedirs(rundir(plan, c), exist_ok=True)
        for r in replicas(c):
            write_secret(conf_path(plan, c, r), config_text(plan, c, r))
    if plan.tls:
        write_pki(plan)


def conf_path(plan: LabPlan, c: ControllerPlan, r: Replica) -> str:
    return f"{rundir(plan, c)}/{c.name}{r.suffix}.conf"


def pid_path(plan: LabPlan, c: ControllerPlan, r: Replica) -> str:
    return f"{rundir(plan, c)}/controller{r.suffix}.pid"


def log_path(plan: LabPlan, c: ControllerPlan, r: Replica) -> str:
    return f"{rundir(plan, c)}/controller{r.suffix}.log"


def start(plan: LabPlan, c: ControllerPlan, only: Replica | None = None) -> int:
    """Start a controller's replicas (or ``only`` one) in its namespace, supervised; returns
    the (last started) pid, also in its pidfile. Idempotent while it runs."""
    pid = 0
    for r in [only] if only else replicas(c):
        cmd = [
            sys.executable, "-m", "meshpeer.manager", "ryu_apps.controller",
            "--config-file", conf_path(plan, c, r),
            "--pid-file", pid_path(plan, c, r),
        ]  # fmt: skip
        log = log_path(plan, c, r)
        argv = tuple(manager_cmd(netns_cmd(c.netns, cmd), log))
        pid = supervisor.supervise(plan, Spec(r.name, KIND, argv, log, cwd=ROOT))
    return pid


def stop(plan: LabPlan, c: ControllerPlan) -> None:
    """Stop a controller (each replica) on purpose: the supervisor does not restart it."""
    for r in replicas(c):
        supervisor.release(plan, KIND, r.name)


def wait_serving(plan: LabPlan, c: ControllerPlan, timeout: float = 20.0) -> None:
    """Until the controller's first replica serves (it leads)."""
    wait_healthy(plan, c, timeout, replicas(c)[:1])


def wait_healthy(
    plan: LabPlan, c: ControllerPlan, timeout: float = 20.0, which: list[Replica] | None = None
) -> None:
    """Until the controller serves (with replicas: one leads, and every other answers)."""
    which = which or replicas(c)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        answers = []
        for r in which:
            probe = Client(replica_url(plan, c, r), None, 1.0, ca_file=plan.ca_file)
            try:
                answers.append(probe.request("GET", "/healthz")[0])
            except OSError as exc:
                answers.append(0)
                last = exc
        if answers.count(200) == 1 and 0 not in answers:
            return
        last = answers if 0 not in answers else last
        time.sleep(0.05)
    tail = "".join(read_tail(log_path(plan, c, r)) for r in which)
    raise LabError(f"controller {c.name} not healthy after {timeout}s ({last})\n{tail}")


def read_tail(path: str, size: int = 2000) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-size:]


def client_for(plan: LabPlan, name: str) -> Client:
    c = next(x for x in plan.controllers if x.name == name)
    return client(plan, c, plan.api_token)


def endpoint_body(plan: LabPlan, e: Endpoint) -> dict[str, Any]:
    """The REST body creating a topology endpoint (with the MAC its lab VM really has)."""
    body: dict[str, Any] = {"name": e.name, "kind": e.kind, "ip": str(e.ip)}
    vm = next((x for x in plan.vms if x.name == e.name), None)
    mac = vm.mac if vm else e.mac
    if mac:
        body["mac"] = mac
    if e.host:
        body["host"] = e.host
    if e.backends:
        body["backends"] = [{"endpoint": b.endpoint, "weight": b.weight} for b in e.backends]
    if e.spillover:  # endpoint names are unique in a topology: the VPC is the endpoint's
        vpc_of = {x.name: x.vpc for x in plan.vms}
        body["spillover"] = [
            {"vpc": vpc_of[b.endpoint], "endpoint": b.endpoint, "weight": b.weight}
            for b in e.spillover
        ]
    router = next((r for r in plan.onprem if r.attach == e.name), None)
    if router is not None:  # its session to the on-prem router, over their link (lab/onprem.py)
        body["bgp"] = {
            "peer_asn": router.asn,
            "peer_ip": router.router_ip,
            "local_ip": router.shard_ip,
        }
    return body


def _create(plan: LabPlan, owner: dict[str, str], e: Endpoint, note: Note, done: str) -> int:
    """Create topology endpoint ``e`` at its VPC's shard, unless deferred; the calls made."""
    if e.defer:
        return 0
    note(done)
    client_for(plan, owner[e.vpc]).post(f"/v1/vpcs/{e.vpc}/endpoints", endpoint_body(plan, e))
    return 1


def apply_intent(plan: LabPlan, topo: Topology, note: Note = no_note) -> int:
    """Create the topology's VPCs, endpoints and peerings through the REST API.

    Hosts are not created here: each host's OHC registers itself with every shard. ``note``
    hears how far it got (the lab's progress ticker)."""
    calls = 0
    total = len(topo.vpcs) + sum(not e.defer for e in topo.endpoints) + len(topo.peerings)
    owner = {v.name: v.controller for v in topo.vpcs}
    try:
        for v in topo.vpcs:
            note(f"{calls}/{total} REST calls")
            body: dict[str, Any] = {
                "name": v.name,
                "subnets": [{"cidr": str(s)} for s in v.subnets],
            }
            if v.vni is not None:
                body["vni"] = v.vni
            if v.asn is not None:
                body["asn"] = v.asn
            client_for(plan, v.controller).post("/v1/vpcs", body)
            calls += 1
        # an ILB with spillover backends after the peerings: they must be in a peered VPC
        for e in [e for e in topo.endpoints if not e.spillover]:
            calls += _create(plan, owner, e, note, f"{calls}/{total} REST calls")
        for p in topo.peerings:
            note(f"{calls}/{total} REST calls")
            body = {"name": f"{p.vpc}-{p.peer}", "peer_vpc": p.peer}
            if p.export is not None:
                body["export"] = dict(p.export)
            if p.inbound != "all":
                body["inbound"] = p.inbound
            if p.import_custom_routes:
                body["import_custom_routes"] = True
            if p.preference is not None:
                body["preference"] = p.preference
            if p.forwarding != "direct":
                body["forwarding"] = p.forwarding
            client_for(plan, owner[p.vpc]).post(f"/v1/vpcs/{p.vpc}/peerings", body)
            calls += 1
        for e in [e for e in topo.endpoints if e.spillover]:
            calls += _create(plan, owner, e, note, f"{calls}/{total} REST calls")
    except ApiFailure as exc:
        raise LabError(f"applying the topology's intent failed: {exc}") from exc
    return calls


def pid(plan: LabPlan, c: ControllerPlan, r: Replica) -> int | None:
    """The replica's pid while it runs."""
    found = read_pidfile(pid_path(plan, c, r))
    return found if found is not None and alive(found) else None


def running(plan: LabPlan, c: ControllerPlan) -> bool:
    """Some process of the controller runs."""
    return any(pid(plan, c, r) is not None for r in replicas(c))


def replica_status(plan: LabPlan, c: ControllerPlan) -> list[dict[str, Any]]:
    """``status --json``'s ``replicas``: name, pid (None: not running), role (``leader`` or
    ``standby``), url, and alive (False: it answers neither as the leader nor as a standby,
    whatever its role says; docs/lab.md)."""
    return [
        {
            "name": r.replica or c.name,
            "pid": pid(plan, c, r),
            "role": role,
            "url": u,
            "alive": alive_now,
        }
        for r, (u, role, alive_now) in zip(replicas(c), health(plan, c), strict=True)
    ]
