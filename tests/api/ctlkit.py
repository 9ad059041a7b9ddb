"""Real controller shards on loopback for API tests: directory, configs, processes, HTTP helpers.

A :class:`Cluster` writes one shard directory and one config file per controller under a
temporary directory (and, with ``tls`` (the default), a CA and a certificate per shard for
127.0.0.1: the shards serve HTTPS and every helper here verifies them), starts each controller as ``python -m meshpeer.manager
ryu_apps.controller`` (no root, no namespaces: it only listens on 127.0.0.1), waits for
``GET /healthz`` and stops every process by its pid. A controller can be restarted in place
(same config, same store) with :meth:`Ctl.restart`.
"""

from __future__ import annotations

import base64
import http.client
import json
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from meshpeer import pki, tls
from meshpeer.client import Client
from meshpeer.controller.auth import shard_token
from meshpeer.controller.config import LocalShard, ShardEntry, directory_doc, host_credential
from meshpeer.lab.procs import spawn_manager
from meshpeer.protocol.messages import GRANT_HEADER
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]

# Which VPC names each shard owns, and its VNI range. Tests pick names from these lists.
DEFAULT_LAYOUT: dict[str, tuple[tuple[int, int], tuple[str, ...]]] = {
    "ctl1": (
        (1000, 1999),
        (
            "blue",
            "green",
            "amber",
            "teal",
            "cyan",
            "lime",
            "navy",
            "gold",
            "sand",
            "mint",
            "jade",
            "onyx",
            "iris",
        ),
    ),
    "ctl2": (
        (2000, 2999),
        ("red", "pink", "rose", "ruby", "plum", "wine", "coral", "sage", "fern"),
    ),
}


def free_port() -> int:
    """A port the kernel just handed out for 127.0.0.1 (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, size: int = 4000) -> str:
    if not path.exists():
        return ""
    data = path.read_bytes()[-size:]
    return data.decode("utf-8", errors="replace")


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    def error(self) -> tuple[str | None, str | None, str]:
        """(error, field, detail) of an error body."""
        assert isinstance(self.body, dict), self.body
        assert set(self.body) == {"error", "field", "detail"}, self.body
        return self.body["error"], self.body["field"], self.body["detail"]


@dataclass
class Ctl(LocalShard):
    """One controller process: its config, store, log, and (while running) its Popen."""

    proc: subprocess.Popen[bytes] | None = None
    host_key: str = ""  # hex: the directory's host key (host credentials)
    starts: int = 0
    nofile: tuple[int, int] | None = None  # RLIMIT_NOFILE (soft, hard) to start with

    def write_conf(
        self, directory_file: Path, heartbeat: float, options: Mapping[str, Any] | None = None
    ) -> None:
        """``options``: more ``[controller]`` options (ShardConfig fields)."""
        config = replace(self.config(directory_file, heartbeat), check_answers=True)
        config = replace(config, **dict(options or {}))
        self.conf.write_text(config.text(), encoding="utf-8")

    # --- process ------------------------------------------------------------------------

    def spawn(self) -> None:
        assert self.proc is None, f"{self.name} is already running"
        cmd = [
            sys.executable, "-m", "meshpeer.manager", "ryu_apps.controller",
            "--config-file", str(self.conf),
        ]  # fmt: skip
        nofile = self.nofile

        def limit_fds() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.proc = spawn_manager(cmd, self.log, cwd=ROOT, preexec_fn=limit_fds)
        self.starts += 1

    def wait_healthy(self, timeout: float = 20.0) -> None:
        probe = Client(self.url, None, timeout=1.0, ca_file=self.ca_file)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"controller {self.name} exited with {self.proc.returncode}\n{self.tails()}"
                )
            try:
                status, _ = probe.request("GET", "/healthz")
                if status == 200:
                    return
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.03)
        raise AssertionError(f"{self.name} not healthy after {timeout}s ({last})\n{self.tails()}")

    def start(self) -> None:
        self.spawn()
        self.wait_healthy()

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM by pid, SIGKILL if it is still there after ``grace`` seconds. Idempotent.

        The grace is short: SIGTERM does not always end a controller yet (see
        test_sigterm_stops_a_busy_controller_promptly), and the store is durable per commit.
        """
        self.signal_stop()
        self.reap(time.monotonic() + grace)

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tails(self) -> str:
        """The log's tail (log records, and any startup traceback: one file per process)."""
        return f"--- {self.log} (tail) ---\n{tail(self.log)}"

    def host_token(self, host: str) -> str:
        """The credential of ``host`` (what its OHC holds)."""
        return host_credential(host, self.host_key)

    # --- HTTP ---------------------------------------------------------------------------

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        """A new connection to this shard: HTTPS verified by the cluster's CA, or plain."""
        if self.tls:
            context = tls.client_context(self.ca_file)
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def client(self, token: str | None = "", timeout: float = 10.0) -> Client:
        """A meshpeer Client of this shard; ``token=""``: this API's token."""
        return Client(self.url, self.token if token == "" else token, timeout, self.ca_file)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        token: str | None = "",
    ) -> Reply:
        """One request with full control; ``token=""`` means this API's token, None none."""
        hdrs = dict(headers or {})
        tok = self.token if token == "" else token
        if tok is not None and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Bearer {tok}"
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            got = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        parsed: Any = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data
        return Reply(resp.status, parsed, got)

    def req(self, method: str, path: str, body: Any = None, token: str | None = "") -> Reply:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        return self.raw(method, path, data, headers, token)

    def ok(self, method: str, path: str, body: Any = None, status: int | None = None) -> Any:
        """A request that must succeed (2xx, or exactly ``status``); returns the JSON body."""
        r = self.req(method, path, body)
        if status is not None:
            assert r.status == status, f"{method} {path} -> {r.status} {r.body}"
        else:
            assert 200 <= r.status < 300, f"{method} {path} -> {r.status} {r.body}"
        return r.body

    def get(self, path: str) -> Any:
        return self.ok("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.ok("POST", path, body, 201)

    def put(self, path: str, body: Any) -> Any:
        return self.ok("PUT", path, body, 200)

    def delete(self, path: str) -> Any:
        return self.ok("DELETE", path, None, 200)

    def version(self) -> int:
        v: int = self.get("/healthz")["version"]
        return v

    # --- intent shortcuts ---------------------------------------------------------------

    def vpc(self, name: str, *cidrs: str, vni: int | None = None) -> Any:
        body: dict[str, Any] = {"name": name, "subnets": [{"cidr": c} for c in cidrs]}
        if vni is not None:
            body["vni"] = vni
        return self.post("/v1/vpcs", body)

    def vm(self, vpc: str, name: str, ip: str, host: str = "hv1") -> Any:
        return self.post(f"/v1/vpcs/{vpc}/endpoints", {"name": name, "ip": ip, "host": host})

    def peer(self, vpc: str, peer_vpc: str, name: str | None = None, **extra: Any) -> Any:
        body = {"name": name or f"to-{peer_vpc}", "peer_vpc": peer_vpc, **extra}
        return self.post(f"/v1/vpcs/{vpc}/peerings", body)

    def peering(self, vpc: str, name: str) -> Any:
        return self.get(f"/v1/vpcs/{vpc}/peerings/{name}")

    def wait_state(self, vpc: str, name: str, state: str, timeout: float = 30.0) -> Any:
        def check() -> Any:
            p = self.peering(vpc, name)
            return p if p["state"] == state else None

        return wait_for(check, timeout, what=f"{self.name} {vpc}/{name} {state}")


@dataclass
class Cluster:
    """Controllers sharing one directory; stopped (by pid) by :meth:`stop_all`."""

    workdir: Path
    token: str
    federation_token: str
    grant_key: str
    host_key: str
    layout: Mapping[str, tuple[tuple[int, int], Sequence[str]]]
    heartbeat: float = 0.5
    options: Mapping[str, Any] = field(default_factory=dict)  # more [controller] options
    ctls: dict[str, Ctl] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        workdir: Path,
        layout: Mapping[str, tuple[tuple[int, int], Sequence[str]]] | None = None,
        heartbeat: float = 0.5,
        token: str | None = None,
        options: Mapping[str, Any] | None = None,
        nofile: tuple[int, int] | None = None,
        tls: bool = True,
    ) -> Cluster:
        """``options``: more ``[controller]`` options for every shard; ``nofile``: the
        RLIMIT_NOFILE (soft, hard) each shard process starts with; ``tls``: HTTPS with a CA
        made here (False: plain HTTP)."""
        workdir.mkdir(parents=True, exist_ok=True)
        c = cls(
            workdir,
            token=token or "api-" + secrets.token_hex(16),
            federation_token="fed-" + secrets.token_hex(16),
            grant_key=secrets.token_hex(32),
            host_key=secrets.token_hex(32),
            layout=dict(layout or DEFAULT_LAYOUT),
            heartbeat=heartbeat,
            options=dict(options or {}),
        )
        for name in c.layout:
            c.ctls[name] = Ctl(
                name, free_port(), workdir, c.token, tls, host_key=c.host_key, nofile=nofile
            )
        if tls:
            ca = pki.make_ca(str(workdir / "pki"), "meshpeer API tests CA")
            for ctl in c:
                pki.issue_server(ca, str(ctl.tls_prefix), ctl.name, ["127.0.0.1", "localhost"])
        c.write()
        return c

    @property
    def directory_file(self) -> Path:
        return self.workdir / "directory.yaml"

    def directory_doc(self) -> dict[str, Any]:
        shards = {
            name: ShardEntry(self.ctls[name].url, vni_range, vpcs)
            for name, (vni_range, vpcs) in self.layout.items()
        }
        return directory_doc(shards, self.grant_key, self.federation_token, self.host_key)

    def host_token(self, host: str) -> str:
        return host_credential(host, self.host_key)

    def shard_token(self, shard: str) -> str:
        """What shard ``shard`` presents for federation."""
        return shard_token(shard, self.federation_token)

    def write(self) -> None:
        self.directory_file.write_text(yaml.safe_dump(self.directory_doc()), encoding="utf-8")
        for ctl in self.ctls.values():
            ctl.write_conf(self.directory_file, self.heartbeat, self.options)

    def __getitem__(self, name: str) -> Ctl:
        return self.ctls[name]

    def __iter__(self) -> Iterator[Ctl]:
        return iter(self.ctls.values())

    def start_all(self) -> None:
        for ctl in self:  # spawn all first: their imports overlap
            ctl.spawn()
        for ctl in self:
            ctl.wait_healthy()

    def stop_all(self, grace: float = 1.0) -> None:
        """Stop every controller by pid (SIGTERM to all, then SIGKILL what is left)."""
        errors: list[BaseException] = []
        for ctl in self:
            try:
                ctl.signal_stop()
            except BaseException as exc:  # stop the others all the same
                errors.append(exc)
        deadline = time.monotonic() + grace
        for ctl in self:
            try:
                ctl.reap(deadline)
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def tails(self) -> str:
        return "\n".join(ctl.tails() for ctl in self)

    def replica(self, name: str, replica: str) -> Ctl:
        """Another process for shard ``name`` (``store = etcd``: a standby until it leads),
        with its own port and files in ``workdir/<replica>``; stopped with the others. Plain
        HTTP: the cluster's certificates name the first replica's port only."""
        assert not self.ctls[name].tls, "replicas: create the cluster with tls=False"
        workdir = self.workdir / replica
        workdir.mkdir(parents=True, exist_ok=True)
        other = Ctl(name, free_port(), workdir, self.token, False, host_key=self.host_key)
        options = {**self.options, "replica": replica}
        other.write_conf(self.directory_file, self.heartbeat, options)
        self.ctls[f"{name}/{replica}"] = other
        return other


def register(cluster: Cluster, *hosts: str) -> None:
    """Register ``hosts`` (hv1 at 192.0.2.1, hv2 at .2, ...) with every shard of ``cluster``."""
    for ctl in cluster:
        for host in hosts:
            ctl.put(f"/v1/hosts/{host}", {"underlay_ip": f"192.0.2.{host.removeprefix('hv')}"})


def health(ctl: Ctl) -> tuple[int, Any]:
    """``GET /healthz``'s status and body (0: nothing listens yet)."""
    try:
        r = ctl.req("GET", "/healthz")
    except OSError:
        return 0, None
    return r.status, r.body


def standing_by(ctl: Ctl) -> Any:
    """A standby replica's 503 body once it names a leader (None until then)."""
    status, body = health(ctl)
    return body if status == 503 and body["leader"] is not None else None


# --- state snapshots ------------------------------------------------------------------------


def state_of(ctl: Ctl) -> dict[str, Any]:
    """Everything a shard serves about its intent (with versions), for before/after checks."""
    out: dict[str, Any] = {
        "healthz": ctl.get("/healthz"),
        "vpcs": ctl.get("/v1/vpcs"),
        "hosts": ctl.get("/v1/hosts"),
    }
    for vpc in out["vpcs"]["vpcs"]:
        name = vpc["name"]
        for part in ("subnets", "endpoints", "peerings", "routes", "routes/effective"):
            out[f"{name}/{part}"] = ctl.get(f"/v1/vpcs/{name}/{part}")
    return out


# --- subscription streams -------------------------------------------------------------------


class Stream:
    """A blocking NDJSON subscription (``GET /v1/subscribe``) read line by line."""

    def __init__(
        self,
        ctl: Ctl,
        query: Mapping[str, str | int],
        token: str | None,
        credential: str | None = "",
    ) -> None:
        """A peer stream (``policy`` in the query) takes ``token`` as its grant, presented by
        ``credential`` ("": the credential of the host the query names; None: the grant alone,
        as the bearer token). Any other stream presents ``token`` as the bearer token."""
        self.conn = ctl.connection()
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if "policy" in query and credential is not None:
            who = ctl.host_token(str(query.get("host", ""))) if credential == "" else credential
            headers = {"Authorization": f"Bearer {who}"}
            if token is not None:
                headers[GRANT_HEADER] = token
        path = "/v1/subscribe?" + urllib.parse.urlencode({k: str(v) for k, v in query.items()})
        self.conn.request("GET", path, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type", "")
        self.body: Any = None
        self.heartbeats = 0
        if self.status != 200:
            raw = self.resp.read()
            self.body = json.loads(raw) if raw else None
            self.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def read(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next message, heartbeat or not; None at the end of the stream."""
        sock = self.conn.sock
        if sock is not None:
            sock.settimeout(timeout)
        line = self.resp.readline()
        if not line:
            return None
        assert line.endswith(b"\n"), line
        msg: dict[str, Any] = json.loads(line)
        return msg

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message that is not a heartbeat (fails on end of stream or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message within {timeout}s")
            msg = self.read(left)
            assert msg is not None, "stream ended"
            if msg["type"] != "heartbeat":
                return msg
            self.heartbeats += 1

    def quiet(self, duration: float, timeout: float = 30.0) -> int:
        """Read for at least ``duration`` seconds expecting only heartbeats, and on until a
        heartbeat has arrived after that (within ``timeout``): return its version. On a slow
        machine the window stretches; it never ends without a heartbeat to report."""
        start = time.monotonic()
        version = -1
        while version < 0 or time.monotonic() - start < duration:
            left = start + timeout - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no heartbeat within {timeout}s")
            msg = self.read(left)
            assert msg is not None, "stream ended"
            assert msg["type"] == "heartbeat", f"expected only heartbeats, got {msg}"
            self.heartbeats += 1
            version = msg["version"]
        return version


def stream(
    ctl: Ctl,
    token: str | None,
    service: str,
    key: str,
    credential: str | None = "",
    **extra: str | int,
) -> Stream:
    return Stream(ctl, {"service": service, "key": key, **extra}, token, credential)


def tamper(grant: str, host: str = "hv1", to: str = "hv2") -> str:
    """``grant`` rewritten to name host ``to`` instead of ``host``, its signature kept."""
    prefix, kid, payload, sig = grant.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    forged = raw.replace(f'"host":"{host}"'.encode(), f'"host":"{to}"'.encode())
    assert forged != raw
    p2 = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    return f"{prefix}.{kid}.{p2}.{sig}"


# A host status report (PUT /v1/hosts/{name}/status) as an OHC sends it.
HOST_STATUS = {
    "complete": False,
    "fail_static": True,
    "streams": [
        {"stream": "endpoint/hv9//", "shard": "http://x", "state": "delivered", "version": 3,
         "detail": None},
        {"stream": "destination/pink/p-1/", "shard": "http://y", "state": "waiting",
         "version": None, "detail": None},
    ],
    "skipped": [{"what": "port", "name": "tap9", "reason": "no vpc"}],
    "last_error": {"at": 1.5e9, "what": "sync failed: boom"},
    "syncs": 2, "flows": 40, "groups": 0, "last_sync_at": 1.5e9,
}  # fmt: skip
