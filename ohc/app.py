"""The on-host controller as an os-ken app: a shim around the agent, compiler and syncer.

    meshpeer-manager ohc.app --config-file hv1.conf \\
        --ofp-switch-address-list 127.0.0.1:6653 --ofp-tcp-listen-port 6654

Options: meshpeer.options.OHC (docs/configuration.md).

Handlers only translate: OpenFlow replies go to the waiting green thread, connects and
stream updates become sync triggers. One worker thread compiles the host's view and syncs
br-int: on (re)connect it reads what is installed and sends the difference in one bundle
(never a flush); afterwards only deltas, against its model of the switch.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import subprocess
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import eventlet.queue
import eventlet.tpool
import yaml
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from meshpeer import options
from meshpeer.directory import SECRETS, parse_directory
from meshpeer.heap import release_free_heap
from meshpeer.protocol import ServiceName
from meshpeer.protocol.gateways import HOST_ROLES, choice
from ohc import bfd, nd, offload, ofio, ports, reporting, spillover, status
from ohc.agent import Agent
from ohc.clients import Channels
from ohc.cookies import HASH_MASK, Kind, cookie_of_kind, kind_of
from ohc.directory_updates import DirectoryFollower, HostDirectory, Update
from ohc.engine import FlowEngine
from ohc.metrics import OhcMetrics
from ohc.model import Offload, Skipped
from ohc.offload_grants import OffloadGrants
from ohc.pipeline import LB_DELIVER, ND_TARGET, OFFLOAD_COUNT
from ohc.ports import SwitchPorts
from ohc.session import SwitchSession
from ohc.subscriptions import Sub

log = logging.getLogger(__name__)


PORT_REREAD_DELAY = 1.0  # seconds, while an interface waits for its OpenFlow port number
FULL_GC_INTERVAL = 600.0  # seconds between full garbage collections (see _freeze_heap)
TRIM_AFTER_CHANGES = 10_000  # a sync that sent this many changes gives its free heap back
RETRY_DELAY = 1.0  # seconds before a failed sync is tried again (from a read-back)
READ_BACK_GRACE = 10.0  # seconds a read-back waits for every followed stream (_defer_read_back)

REPLY_EVENTS = [
    ofp_event.EventOFPErrorMsg,
    ofp_event.EventOFPBarrierReply,
    ofp_event.EventONFBundleCtrlMsg,
    ofp_event.EventOFPFlowStatsReply,
    ofp_event.EventOFPGroupDescStatsReply,
    ofp_event.EventOFPPortDescStatsReply,
]


def read_ports(ovsdb: str) -> SwitchPorts:
    """VM ports, the tunnel port and skipped interfaces, from OVSDB's Interface table."""
    out = subprocess.run(
        ["ovs-vsctl", f"--db={ovsdb}", "--format=json", f"--columns={','.join(ports.COLUMNS)}",
         "list", "Interface"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    return ports.classify(ports.parse_rows(json.loads(out)))


class OnHostController(app_manager.OSKenApp):  # type: ignore[misc]
    OFP_VERSIONS: ClassVar[list[int]] = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conf = self.CONF.ohc
        for opt in options.missing(options.OHC, conf):
            raise SystemExit(f"ohc: [ohc] {opt} is required in the config file")
        if choice(conf.role, HOST_ROLES) is None:
            raise SystemExit(f"ohc: [ohc] role: expected one of {', '.join(HOST_ROLES)}")
        self.conf = conf
        with open(conf.directory_file, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        held = [k for k in SECRETS if isinstance(raw, dict) and k in raw]
        if held:
            log.warning("ohc %s: the directory holds shard secrets %s: ignored", conf.host, held)
        # the bootstrap: then what the host's own shard publishes (ohc/directory_updates.py)
        self.directory = HostDirectory(parse_directory(raw, secrets=False))
        urls = self.directory.urls()
        # a shard with replicas: its channel and reports find the leader (docs/decisions.md)
        replicas = self.directory.replica_urls
        self.channels = channels = Channels(conf.api_token, ca_file=conf.ca_file, replicas=replicas)
        self.agent = Agent(
            conf.host,
            urls,
            self.directory.url_of,
            conf.api_token,
            channels,
            self._update,
            self.directory.canonical_url,
        )
        self.directory_follower = DirectoryFollower(
            conf.host, self.directory, channels, conf.api_token, self._take_directory
        )
        self.reporter = reporting.Reporter(
            conf.host,
            conf.underlay_ip,
            conf.api_token,
            self.agent,
            conf.ca_file,
            conf.role,
            replicas,
        )
        # an on-demand side's busy pairs: reported to the VPC's shard for a grant for them
        self.offload_grants = OffloadGrants(conf.host, self.reporter.offload, self.directory.url_of)
        self.replies = ofio.Replies()
        self.datapath: Any = None
        self.ports = SwitchPorts({}, None, ())
        self.live: frozenset[int] = frozenset()  # live ofports (the BFD ports': ohc/bfd.py)
        self.logged_skips: frozenset[Skipped] = frozenset()  # logged once, while they last
        self.busy = False
        self.syncs = 0
        self.last: dict[str, Any] = {}
        self.skipped: tuple[Skipped, ...] = ()  # what the last sync left out, and why
        self.last_error: dict[str, Any] | None = None  # {"at", "what"}: for the status report
        self.triggers: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        # The reporter sends the latest applied versions and status after syncs: one thread,
        # the newest state only, so a slow or absent shard never piles up senders.
        self.reports: eventlet.queue.LightQueue = eventlet.queue.LightQueue()
        self.to_report: tuple[dict[Sub, int], dict[Sub, Mapping[str, Any]]] | None = None
        # What the switch should hold (kept up to date from the agent's stream changes) and
        # what it holds (ohc/session.py).
        self.engine = FlowEngine(conf.underlay_ip, conf.role)
        self.session = SwitchSession(self.engine)
        self.engine_failed = False  # an update raised: start the engine afresh next sync
        self.full_gc_at = time.monotonic()
        self.read_back_by = 0.0  # monotonic time until which a read-back waits for the streams
        self.deferred: set[str] = set()  # reasons of the syncs deferred meanwhile
        self.ports_read_for: Any = None  # the datapath whose ports a deferred sync read
        self.grace_timer: Any = None  # ends a deferral (_defer_read_back)
        # on-demand sides (ohc/offload.py): the pairs sent direct, and the counters' readings
        self.offload_state = offload.State()
        self.offload_thresholds = offload.Thresholds(
            conf.offload_pps, idle_s=float(conf.offload_idle_s)
        )
        # ILBs with spillover backends (ohc/spillover.py): the shares and the loads' readings
        self.spill_state = spillover.State()
        try:
            spill_conf = {name: getattr(conf, name) for name in spillover.OPTIONS}
            self.spill_thresholds = spillover.thresholds(spill_conf)
        except ValueError as e:
            raise SystemExit(f"ohc: {e}") from None
        self.metrics = OhcMetrics(
            self.agent.stream_states, lambda: self.last.get("applied", {})
        )  # docs/metrics.md

    def start(self) -> Any:
        thread = super().start()
        self.threads.append(hub.spawn(self._register))
        self.threads.append(hub.spawn(self._worker))
        self.threads.append(hub.spawn(self._canary))
        self.threads.append(hub.spawn(self._reporter))
        self.threads.append(hub.spawn(self._offload))
        self.threads.append(hub.spawn(self._spillover))
        if self.conf.metrics_port:
            try:
                served = self.metrics.serve(self.conf.metrics_host, self.conf.metrics_port)
                self.threads.append(served[0])
            except OSError as exc:  # optional: a taken port must not stop the OHC (a review)
                log.error("ohc %s: no metrics on port %s: %s",
                          self.conf.host, self.conf.metrics_port, exc)  # fmt: skip
                self._error(f"metrics port {self.conf.metrics_port}: {exc}")
        self.agent.start()
        self.directory_follower.start()
        return thread

    def close(self) -> None:
        self.directory_follower.stop()
        self.agent.stop()
        super().close()

    # --- subscriptions -------------------------------------------------------------------

    def _update(self) -> None:
        self.metrics.changed()
        self.triggers.put("update")

    def _take_directory(self, update: Update) -> None:
        """A directory from the host's shard: follow and register with the shards it lists."""
        self.agent.shard_urls = self.directory.urls()
        self.channels.take_replicas()  # a shard's replicas changed: its open channel too
        self.agent.resync()
        if update.added:
            self.threads.append(hub.spawn(self._register, update.added))
        self._update()

    def _register(self, names: tuple[str, ...] | None = None) -> None:
        """Tell every shard (or those ``names``) where this host's tunnel endpoint is; retry
        until each answers (or leaves the directory)."""
        pending = {
            s.name: s.url
            for s in self.directory.shards.values()
            if names is None or s.name in names
        }
        delay = 0.2
        while pending:
            for name, url in sorted(pending.items()):
                if name not in self.directory.shards:
                    del pending[name]
                    continue
                try:
                    self.reporter.register(url)
                    del pending[name]
                except Exception as exc:
                    self._error(f"registering with {name} failed: {exc}")
                    log.info("ohc %s: registering with %s failed (%s); retrying",
                             self.conf.host, name, exc)  # fmt: skip
            hub.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- OpenFlow: handlers only translate ---------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])  # type: ignore[untyped-decorator]
    def state_change(self, ev: Any) -> None:
        if ev.state == MAIN_DISPATCHER:
            self.datapath = ev.datapath
            # OVS sends no packet-ins to a connection accepted on a passive (ptcp) target
            # until it sets a nonzero miss_send_len; the ND responder needs them.
            ofp, parser = ev.datapath.ofproto, ev.datapath.ofproto_parser
            ev.datapath.send_msg(
                parser.OFPSetConfig(ev.datapath, ofp.OFPC_FRAG_NORMAL, ofp.OFPCML_MAX)
            )
            self.session.installed = None
            self.read_back_by = time.monotonic() + READ_BACK_GRACE
            self.deferred = set()  # a sync compiles the whole view: no reason is lost
            self._end_grace()
            self.triggers.put("connect")
        elif ev.datapath is self.datapath:
            self.replies.abort(ev.datapath)
            self.datapath = None

    @set_ev_cls(REPLY_EVENTS, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def reply(self, ev: Any) -> None:
        if not self.replies.dispatch(ev.msg) and isinstance(ev, ofp_event.EventOFPErrorMsg):
            log.warning("ohc %s: unexpected OpenFlow error %s", self.conf.host, ev.msg)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def packet_in(self, ev: Any) -> None:
        """The IPv6 neighbour responder: only nd_target flows send packets here; the flow set
        eth_dst to the answer's MAC, and its cookie kind says if the target is a gateway."""
        msg = ev.msg
        if msg.table_id != ND_TARGET:
            return
        reply = nd.advertisement(bytes(msg.data), router=kind_of(msg.cookie) == Kind.VPC)
        if reply is None:
            return
        dp = msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        out = [parser.OFPActionOutput(msg.match["in_port"])]
        dp.send_msg(parser.OFPPacketOut(dp, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER, out, reply))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)  # type: ignore[untyped-decorator]
    def port_status(self, ev: Any) -> None:
        self.triggers.put("ports")

    # --- the worker ------------------------------------------------------------------------

    def _canary(self) -> None:
        """An OVS restart loses every flow: find out (canary flow gone) and resync fully."""
        while True:
            hub.sleep(self.conf.canary_interval)
            dp = self.datapath
            if (
                dp is None
                or self.busy
                or self.session.installed is None
                or not self.triggers.empty()
            ):
                continue
            try:
                if not ofio.has_canary(self.replies, dp, 5):
                    self.triggers.put("canary-missing")
            except Exception:
                log.exception("ohc %s: canary check failed", self.conf.host)

    def _offload(self) -> None:
        """On-demand sides: read the switch's pair counters, decide which pairs go direct or
        back (ohc/offload.py), and sync when that changed."""
        while True:
            hub.sleep(self.conf.offload_interval)
            dp, sides = self.datapath, self.engine.on_demand
            if dp is None or (not sides and not self.offload_state.offloaded):
                continue
            try:
                rows = ofio.read_counts(self.replies, dp, OFFLOAD_COUNT, Kind.OFFLOAD, 5)
            except Exception:
                log.exception("ohc %s: reading the on-demand counters failed", self.conf.host)
                continue
            counts = {
                (*sides[c], str(ipaddress.ip_address(m.get("ipv4_dst") or m["ipv6_dst"]))): n
                for c, m, n in rows
                if c in sides and ("ipv4_dst" in m or "ipv6_dst" in m)
            }
            got = offload.decide(
                self.offload_state, counts, time.monotonic(), self.offload_thresholds
            )
            self.offload_state = got.state
            try:  # a bug here must not end the loop (review gw2, G6)
                busy = offload.busy_sides(got.state.offloaded)
                granted = self.offload_grants.update(busy, time.time())  # ohc/offload_grants
                if got.moved or got.returned or granted:
                    log.info("ohc %s: on-demand: direct %s, back to the gateways %s",
                             self.conf.host, sorted(got.moved), sorted(got.returned))  # fmt: skip
                    # the busy pairs' peer destinations alone are followed (subscriptions.py)
                    self.agent.offloaded = self.offload_grants.following(busy)
                    self.agent.resync()
                    self.triggers.put("offload")
            except Exception:
                log.exception("ohc %s: following the busy pairs failed", self.conf.host)

    def _spillover(self) -> None:
        """ILBs with spillover backends: decide each one's share of new connections for the
        peer from its local backends' load (ohc/spillover.py), and sync when a share moved."""
        while True:
            hub.sleep(self.conf.spillover_interval)
            loads = self._spill_loads()
            if loads is None:
                continue
            try:
                now = time.monotonic()
                got = spillover.decide(self.spill_state, loads, now, self.spill_thresholds)
            except Exception:  # one bad reading must not stop the loop (as _offload's)
                log.exception("ohc %s: the spillover decision failed", self.conf.host)
                continue
            self.spill_state = got.state
            if got.changed:
                log.info("ohc %s: spillover shares %s", self.conf.host,
                         {f"{c:#x}": got.state.shares.get(c, 0) for c in got.changed})  # fmt: skip
                self.triggers.put("spillover")

    def _spill_loads(self) -> dict[int, spillover.Load] | None:
        """Per ILB cookie, its local backends' counters summed and how many (lb_deliver,
        cookie kind LB, one flow per local backend), and its spillover backends' summed
        (kind SPILL, same owner: the demand is measured from both, ohc/spillover.py); None:
        no switch or no answer."""
        if self.datapath is None:
            return None
        try:
            local = ofio.read_counts(self.replies, self.datapath, LB_DELIVER, Kind.LB, 5)
            spill = ofio.read_counts(self.replies, self.datapath, LB_DELIVER, Kind.SPILL, 5)
        except Exception:
            log.exception("ohc %s: reading the ILB backends' counters failed", self.conf.host)
            return None
        loads: dict[int, spillover.Load] = {}
        for c, m, n in local:
            if "eth_dst" in m:  # a backend's flow (the table's miss has no eth_dst)
                was = loads.get(c, spillover.Load(0, 0))
                loads[c] = spillover.Load(was.packets + n, was.backends + 1, was.spilled)
        for c, _, n in spill:
            lb = cookie_of_kind(Kind.LB) | (c & HASH_MASK)  # its ILB's (same owner)
            if lb in loads:
                was = loads[lb]
                loads[lb] = spillover.Load(was.packets, was.backends, was.spilled + n)
        return loads

    def _worker(self) -> None:
        while True:
            reasons = {self.triggers.get()}
            hub.sleep(0.01)  # coalesce a burst of stream updates into one sync
            while not self.triggers.empty():
                reasons.add(self.triggers.get())
            dp = self.datapath
            if dp is None:
                continue
            reasons |= self.deferred
            if self._defer_read_back():
                if "ports" in reasons or ("connect" in reasons and self.ports_read_for is not dp):
                    self._read_ports_early(dp, reasons)
                self.deferred = reasons
                continue
            self.deferred = set()
            self._end_grace()
            self.busy = True
            try:
                gc.disable()  # see _freeze_heap
                self.metrics.started()
                self._sync(dp, reasons)
                self.metrics.synced(self.last)
            except Exception as exc:
                self.metrics.failed()
                log.exception("ohc %s: sync failed", self.conf.host)
                self._error(f"sync failed: {type(exc).__name__}: {exc}")
                self.session.installed = None
                hub.spawn_after(RETRY_DELAY, self.triggers.put, "retry")
            finally:
                gc.enable()
                self.busy = False
            self.reports.put("sync")

    def _error(self, what: str) -> None:
        self.last_error = {"at": time.time(), "what": what}

    def _defer_read_back(self) -> bool:
        """Read the switch back only once every followed stream has delivered, or
        READ_BACK_GRACE seconds after connecting (a shard that does not answer). An installed
        flow that matches no desired flow is parsed one by one (ohc/readback.py): at 50k peer
        endpoints, a restart's read-back before the peer's stream arrived took 11 s instead of
        ~1.5 s. The stream's arrival triggers the next sync; a timer ends the wait."""
        wait = self.read_back_by - time.monotonic()
        if self.session.installed is not None or wait <= 0 or self.agent.complete():
            return False
        if self.grace_timer is None:
            self.grace_timer = hub.spawn_after(wait, self.triggers.put, "read-back-grace")
        return True

    def _end_grace(self) -> None:
        if self.grace_timer is not None:
            hub.kill(self.grace_timer)
            self.grace_timer = None

    def _read_ports_early(self, dp: Any, reasons: set[str]) -> None:
        """The ports, read while a sync waits for the streams rather than after them (~20 ms
        of an OHC's start, measured). A failure leaves them to the sync, which reports it."""
        try:
            self._read_ports(dp)
        except Exception as exc:  # ovs-vsctl failed or the switch went away: the sync retries
            log.warning("ohc %s: ports not read yet: %s", self.conf.host, exc)
            self.ports_read_for = None
            return
        self.ports_read_for = dp
        reasons.discard("ports")

    def _read_ports(self, dp: Any) -> None:
        self.ports = read_ports(self.conf.ovsdb)
        if self.ports.numbering:
            hub.spawn_after(PORT_REREAD_DELAY, self.triggers.put, "ports")
        # BFD ports' liveness (a session coming up or going down sends a port status)
        self.live = ofio.read_live_ports(self.replies, dp) if self.ports.bfd else frozenset()
        if self.ports.bfd and not bfd.watched(self.ports.bfd, self.live):
            hub.spawn_after(PORT_REREAD_DELAY, self.triggers.put, "ports")  # none up yet

    def _sync(self, dp: Any, reasons: set[str]) -> None:
        # read while this sync waited for the streams (_worker); a port status since then
        # added "ports" again
        fresh = self.ports_read_for is dp and "ports" not in reasons
        self.ports_read_for = None
        if not fresh and (reasons & {"connect", "ports"} or not self.ports.vms):
            self._read_ports(dp)
        if "canary-missing" in reasons:
            self.session.installed = None  # the switch lost its flows: read back, resync
        # One snapshot, taken without yielding: what changed in the streams, their versions
        # (for the applied reports) and whether every followed stream had delivered. The
        # changes are copies, so streams that change while the engine compiles are in the
        # next sync, not half in this one; ``complete`` describes these changes, not the
        # agent's state seconds later: deleting flows of streams that arrived meanwhile
        # because they are missing here would cut the traffic they carry.
        versions = dict(self.agent.versions)
        peerings: dict[Sub, Mapping[str, Any]] = {
            s: dict(o) for s, o in self.agent.streams(ServiceName.PEERING).items()
        }
        complete = self.agent.complete()
        if self.engine_failed:
            # Half an update leaves the engine unknown: a fresh one fed every stream whole
            # (until an update succeeds, however many tries), and a read-back of the switch.
            self.engine = FlowEngine(self.conf.underlay_ip, self.conf.role)
            self.session = SwitchSession(self.engine)
        changes = self.agent.take_changes(everything=self.engine_failed)
        vms, tunnel = dict(self.ports.vms), self.ports.tunnel
        t0 = time.monotonic()
        self.engine_failed = True
        on_demand = Offload(
            offload.by_side(self.offload_state.offloaded),
            self.conf.offload_idle_s,
            dict(self.spill_state.shares),
            self.conf.spillover_affinity_s,
        )
        inputs = (vms, tunnel, bfd.watched(self.ports.bfd, self.live), on_demand)
        off_hub = eventlet.tpool.execute
        if self.engine.fresh and self.session.installed is None:
            # compiled while the switch takes it (session.first_sync); an error in the sync
            # leaves the engine unknown too: it starts afresh
            update, synced = self.session.first_sync(
                self.replies, dp, self.engine, changes, inputs, complete, off_hub
            )
            self.engine_failed = False
            assert synced.compile_s is not None
            compile_s = synced.compile_s
        else:
            update = off_hub(self.engine.update, changes, *inputs)
            self.engine_failed = False
            compile_s = time.monotonic() - t0
            synced = self.session.sync(self.replies, dp, update, complete, off_hub)
        self._bfd_ports()
        skipped = self.ports.skipped + self.engine.skipped()
        self._log_skips(skipped)
        self.skipped = skipped
        installed = self.session.installed
        assert installed is not None
        self.to_report = (versions, peerings)
        self.syncs += 1
        self.last = {
            "n": self.syncs,
            "reasons": sorted(reasons),
            "complete": complete,
            "at": time.time(),
            "counts": dict(synced.plan.counts),
            "flows": installed.count,
            "groups": len(installed.groups),
            "compile_s": round(compile_s, 4),
            # units the engine compiled (ohc/engine.py); rebuilt: the VPC contexts were
            "units": {"compiled": update.units, "rebuilt": update.skeleton},
            "read_s": round(synced.read_s, 4),
            "plan_s": round(synced.plan_s, 4),
            "send_s": round(synced.send_s, 4),
            "total_s": round(synced.read_s + synced.plan_s + synced.send_s, 4),
            # the bundle went out as the engine compiled (session.first_sync): compile_s is
            # part of send_s, not before it
            "streamed": synced.streamed,
            # read back from the switch (a full sync): installed flows that were not desired
            # ones, so parsed one by one (ohc.readback); 0 on a restart with nothing changed
            "read_unmatched": synced.read_unmatched,
            "skipped": [str(s) for s in skipped][:20],
            "applied": reporting.synced_versions(versions),
        }
        if not synced.plan.empty:
            log.info("ohc %s: sync %s", self.conf.host, json.dumps(self.last))
        self._write_status()
        self._freeze_heap()
        if sum(synced.plan.counts.values()) >= TRIM_AFTER_CHANGES:
            release_free_heap()

    def _bfd_ports(self) -> None:
        """One BFD port per gateway the view sends through (ohc/bfd.py); adding one makes OVS
        send a port status, so the next sync reads its ofport and the buckets watch it."""
        args = bfd.plan(self.engine.gateways, self.ports.bfd_names, self.conf.bfd_interval_ms)
        if not args:
            return
        try:
            subprocess.run(["ovs-vsctl", f"--db={self.conf.ovsdb}", "--timeout=10", *args],
                           capture_output=True, text=True, check=True, timeout=15)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            self._error(f"BFD ports: {exc}")
            log.warning("ohc %s: BFD ports not changed: %s", self.conf.host, exc)

    def _log_skips(self, skipped: tuple[Skipped, ...]) -> None:
        new, self.logged_skips = ports.new_skips(skipped, self.logged_skips)
        for level, s in new:
            log.log(level, "ohc %s: skipped %s %s: %s", self.conf.host, s.service, s.key, s.reason)

    def _freeze_heap(self) -> None:
        """Keep the cyclic GC off the long-lived state. At 50k peer endpoints the OHC holds
        millions of small objects (flows, memos), and CPython's full collections rescanned all
        of them during syncs: 2-3 s pauses, measured. The state is acyclic (freed by refcount),
        so after each sync it is frozen out of the collector's sight; young cyclic garbage is
        collected first, and a full collection every FULL_GC_INTERVAL bounds what a freeze
        could hold on to. During a sync the collector is off (``_worker``): a first sync at 50k
        allocates millions of acyclic objects (the engine's units, the plan, the bundle), and
        collections rescanning them tripled its compile (measured, docs/decisions.md)."""
        now = time.monotonic()
        if now - self.full_gc_at >= FULL_GC_INTERVAL:
            gc.unfreeze()
            gc.collect()
            self.full_gc_at = now
        else:
            gc.collect(1)
        gc.freeze()

    def _reporter(self) -> None:
        while True:
            self.reports.get()
            while not self.reports.empty():  # a burst of syncs: report the last one once
                self.reports.get()
            if self.to_report is not None:
                versions, objects = self.to_report
                self.to_report = None
                self._report(versions, objects)
            self._report_status()

    def _report(self, versions: dict[Sub, int], objects: dict[Sub, Mapping[str, Any]]) -> None:
        """Applied versions to every shard, for `?wait=programmed`; a lost report only delays
        that answer."""
        for failure in self.reporter.applied(versions, objects):
            self._error(failure)

    def _report_status(self) -> None:
        """How the host stands, after each sync attempt (GET /v1/hosts/{name})."""
        self.reporter.status(
            status.report(self.agent.stream_states(), self.skipped, self.last_error, self.last)
        )

    def _write_status(self) -> None:
        if not self.conf.status_file:
            return
        doc = {
            "host": self.conf.host,
            "last_sync": self.last,
            "received": self.agent.received(),
            "refused": self.agent.refusals(),
            "vpcs_known": {k: sorted(v) for k, v in self.agent.vpcs_known().items()},
            "ports": {f"{v}/{n}": p for (v, n), p in sorted(self.ports.vms.items())},
            "tunnel_port": self.ports.tunnel,
        }
        reporting.write_status_file(self.conf.status_file, doc)
