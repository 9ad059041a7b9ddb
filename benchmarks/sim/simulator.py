"""Simulated hosts: one process, one eventlet green thread per stream, no OVS.

Each simulated host is a real ``ohc.agent.Agent`` with ``ohc.clients.Channels`` as its client
factory (as ``ohc/app.py`` does: one channel per shard), so it follows exactly the streams a
real OHC would, on the connections a real OHC opens. Nothing is
compiled or programmed. Run by benchmarks/scale_sim.py as

    python -m sim.simulator CONFIG.json

It reads one JSON command per line on stdin and answers one JSON line on stdout:

- ``{"cmd": "status"}``: per host, streams followed and streams holding a version.
- ``{"cmd": "watch", "ids": ["vpc/name", ...]}``: record, per host, the wall-clock time at which
  a destination stream of that VPC first contains that endpoint name.
- ``{"cmd": "arrivals"}``: those times, ``{"vpc/name": {host: t}}``.
- ``{"cmd": "received"}``: per host, ``Agent.received()`` totals (bytes, objects) and per service.
- ``{"cmd": "connections"}``: sockets open in this process (from /proc) and channels' counters.
- ``{"cmd": "stop"}``: stop every client and exit.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402
from eventlet.green import os as green_os  # noqa: E402
from eventlet.semaphore import Semaphore  # noqa: E402

from meshpeer.directory import parse_directory  # noqa: E402
from meshpeer.protocol import ServiceName  # noqa: E402
from meshpeer.protocol.messages import Delta, Snapshot  # noqa: E402
from meshpeer.protocol.stream import ReplicaState  # noqa: E402
from meshpeer.streaming.channel import Subscription  # noqa: E402
from ohc.agent import Agent  # noqa: E402
from ohc.clients import Channels  # noqa: E402
from ohc.subscriptions import Sub  # noqa: E402


class Sim:
    def __init__(self, conf: dict[str, Any]) -> None:
        with open(conf["directory_file"], encoding="utf-8") as f:
            self.directory = parse_directory(yaml.safe_load(f))
        self.credentials: dict[str, str] = conf["credentials"]  # host -> its own credential
        self.ca_file: str | None = conf.get("ca_file")  # verifies the shards (https://)
        self.urls = sorted(s.url for s in self.directory.shards.values())
        self.hosts: list[str] = conf["hosts"]
        self.heartbeat_timeout = float(conf.get("heartbeat_timeout", 15.0))
        # Connection attempts in flight in this process (connect until first message): all
        # hosts start at once here, while real hosts each have their own CPU. 0: unbounded.
        connecting = int(conf.get("max_connecting", 0))
        self.gate = Semaphore(connecting) if connecting > 0 else None
        self.agents: dict[str, Agent] = {}
        self.channels: dict[str, Channels] = {}
        self.watched: set[tuple[str, str]] = set()  # (vpc, endpoint name)
        self.arrivals: dict[tuple[str, str], dict[str, float]] = {}

    def start(self) -> None:
        for i, host in enumerate(self.hosts):
            agent = Agent(host, self.urls, self.directory.url_of, self.credentials[host],
                          self._factory(host), lambda: None)  # fmt: skip
            self.agents[host] = agent
            agent.start()
            if i % 20 == 19:
                eventlet.sleep(0)

    def _factory(self, host: str) -> Any:
        # Each host presents its own credential, and each peer stream's grant with its
        # subscription (docs/security.md), over TLS verified by the CA file, as an OHC does.
        channels = Channels(
            self.credentials[host],
            ca_file=self.ca_file,
            heartbeat_timeout=self.heartbeat_timeout,
            gate=self.gate,
        )
        self.channels[host] = channels

        def make(sub: Sub, auth: str, on_change: Any, on_close: Any, on_error: Any) -> Subscription:
            def changed(replica: ReplicaState, msg: Any) -> None:
                if self.watched and sub.service == ServiceName.DESTINATION:
                    self._seen(host, sub.key, msg)
                on_change(replica, msg)

            return channels(sub, auth, changed, on_close, on_error)

        return make

    def _seen(self, host: str, vpc: str, msg: Any) -> None:
        now = time.time()
        if isinstance(msg, Delta):
            ids: Any = msg.upserts
        elif isinstance(msg, Snapshot):
            ids = msg.objects
        else:
            return
        for oid in ids:
            key = (vpc, oid)
            if key in self.watched:
                self.arrivals.setdefault(key, {}).setdefault(host, now)

    # --- commands --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        per: dict[str, list[int]] = {}
        errors: dict[str, int] = {}
        for host, agent in self.agents.items():
            clients = list(agent.clients.values())
            ready = sum(1 for c in clients if getattr(c, "version", None) is not None)
            per[host] = [len(clients), ready]
            for c in clients:
                err = getattr(c, "last_error", None)
                if err and getattr(c, "version", None) is None:
                    errors[err[:80]] = errors.get(err[:80], 0) + 1
        return {"hosts": per, "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5])}

    def received(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for host, agent in self.agents.items():
            r = agent.received()
            by_service: dict[str, list[int]] = {}
            for sub, client in agent.clients.items():
                acc = by_service.setdefault(str(sub.service), [0, 0])
                acc[0] += client.bytes_received
                acc[1] += client.objects_received
            reconnects = sum(getattr(c, "reconnects", 0) for c in agent.clients.values())
            out[host] = {
                "bytes": r["bytes"],
                "objects": r["objects"],
                "streams": len(agent.clients),
                "reconnects": reconnects,
                "by_service": by_service,
            }
        return out

    def connections(self) -> dict[str, Any]:
        """Sockets this process holds open (every one a connection to a shard), counted by
        the kernel's file table, and what the channels say they hold."""
        fds = os.listdir("/proc/self/fd")
        sockets = 0
        for fd in fds:
            try:
                sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                continue
        channels = [c for ch in self.channels.values() for c in ch.channels.values()]
        return {
            "sockets": sockets,
            "channel_sockets": sum(c.sockets() for c in channels),
            "channels": len(channels),
            "channel_connects": sum(c.connects for c in channels),
            "keepalives_received": sum(c.keepalives_received for c in channels),
        }

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("cmd")
        if name == "status":
            return self.status()
        if name == "watch":
            for ident in cmd["ids"]:
                vpc, _, ep = ident.partition("/")
                self.watched.add((vpc, ep))
            return {"watching": len(self.watched)}
        if name == "arrivals":
            keys = [tuple(i.split("/", 1)) for i in cmd.get("ids", [])] or list(self.arrivals)
            return {"arrivals": {f"{v}/{e}": self.arrivals.get((v, e), {}) for v, e in keys}}
        if name == "received":
            return {"received": self.received()}
        if name == "connections":
            return self.connections()
        if name == "stop":
            for agent in self.agents.values():
                agent.stop()
            return {"stopped": True}
        return {"error": f"unknown command {name!r}"}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        sim = Sim(json.load(f))
    eventlet.spawn(sim.start)
    buf = b""
    while True:
        data = green_os.read(0, 65536)
        if not data:
            return 0
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd = json.loads(line)
            out = (json.dumps(sim.handle(cmd)) + "\n").encode()
            while out:
                out = out[green_os.write(1, out) :]
            if cmd.get("cmd") == "stop":
                return 0


if __name__ == "__main__":
    sys.exit(main())
