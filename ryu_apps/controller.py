"""The controller shard as an os-ken app: a shim that wires config, store, core and servers.

meshpeer-manager ryu_apps.controller --config-file ctl1.conf

Options: meshpeer.options.CONTROLLER (docs/configuration.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import resource
import time
from typing import Any

import yaml
from os_ken.base import app_manager
from os_ken.lib import hub

from meshpeer import options, tls
from meshpeer.controller import standby
from meshpeer.controller.api import ControllerApi
from meshpeer.controller.auth import parse_operator_tokens
from meshpeer.controller.federation import Federation
from meshpeer.controller.shard import ShardState, stranded
from meshpeer.controller.speaker import Speaker
from meshpeer.directory import (
    Directory,
    DirectoryError,
    parse_directory,
    shard_doc,
    shared_shards,
)
from meshpeer.rest.admission import Limits
from meshpeer.rest.router import Api
from meshpeer.rest.server import serve
from meshpeer.store import election
from meshpeer.store.backends import leadership, open_store, ownership
from meshpeer.store.election import Leader
from meshpeer.store.etcd import (
    EtcdStore,
    Leadership,
    SharedDirectory,
    follow,
    follow_claims,
    shared_directory,
)
from meshpeer.store.settings import store_settings
from meshpeer.streaming.publisher import StreamHub

log = logging.getLogger(__name__)


class HubSignal:
    """``AppliedSignal`` on the eventlet hub: each report wakes every current waiter."""

    def __init__(self) -> None:
        self._event = hub.Event()

    def event(self) -> Any:
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, hub.Event()
        event.set()


LOST_LEAD_EXIT = 75  # EX_TEMPFAIL: restart me (as a standby)
UNREAD = object()  # a file stamp no file has: read it the first time


class Controller(app_manager.OSKenApp):  # type: ignore[misc]
    """Shim: every decision is in meshpeer.controller; this only starts and stops things."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conf = self.CONF.controller
        for opt in options.missing(options.CONTROLLER, conf):
            raise SystemExit(f"controller: [controller] {opt} is required in the config file")
        self.directory_stamp = tls.file_stamp(conf.directory_file)
        directory = _read_directory(conf.directory_file)
        me = Leader(conf.replica or conf.shard, conf.advertise_url or _own_url(conf))
        try:
            settings = store_settings(conf, conf.shard)
            self.leadership = leadership(settings, conf.shard, me, conf.leader_ttl)
        except ValueError as exc:
            raise SystemExit(f"controller: {exc}") from None
        self.term = None if self.leadership is None else self._stand_by(self.leadership)
        self.keeper: Any = None
        if self.leadership is not None:  # renewed from the win on, while the shard loads too
            self.keeper = hub.spawn(self._keep_leading)
        self.store = open_store(settings)
        if self.leadership is not None and isinstance(self.store, EtcdStore):
            assert self.term is not None
            self.store.fence(self.leadership.fence(self.term), self._lost_lead)
        self.ownership = ownership(settings)  # etcd: VPC claims, learned by a watch
        if self.ownership is not None:
            claims, _ = self.ownership.snapshot()
            directory = dataclasses.replace(directory, claims=claims, claimed=True)
        self.shared = shared_directory(settings)  # etcd: the shards there, the file a seed
        if self.shared is not None:
            directory = _read_shared(self.shared, directory, conf.shard)
        incarnation = self.store.next_incarnation()
        if conf.max_channel_subscriptions < 1:
            raise SystemExit("controller: [controller] max_channel_subscriptions must be >= 1")
        stream_hub = StreamHub(
            base_version=incarnation << 32,
            max_channel_subscriptions=conf.max_channel_subscriptions,
        )
        revoked = frozenset(_items(conf.revoked_hosts))
        self.shard = ShardState(
            conf.shard, directory, self.store, stream_hub, time.time, conf.grant_ttl, revoked
        )
        self.shard.ownership = self.ownership
        if self.shared is not None:
            _check_held(self.shared, self.shard)
        self.shard.reconcile_claims()  # orphans of a failed create or a lost release
        self.claims_watch: Any = None
        self.directory_watch: Any = None
        self.leaders_watch: Any = None
        if bool(conf.tls_cert_file) != bool(conf.tls_key_file):
            raise SystemExit("controller: [controller] tls_cert_file and tls_key_file go together")
        self.federation = Federation(self.shard, ca_file=conf.ca_file)
        self.api = ControllerApi(
            self.shard,
            conf.api_token,
            self.federation.fetch_view,
            conf.heartbeat_interval,
            applied=HubSignal(),
            readonly_token=conf.readonly_token or None,
            api_tokens=_items(conf.api_tokens),
            readonly_tokens=_items(conf.readonly_tokens),
        )
        self.speaker = Speaker(
            self.shard, conf.bgp_asn, _router_id(conf), conf.bgp_listen_host, conf.bgp_port
        )
        self.shard.listeners.append(self.speaker.sync)
        self.conf = conf
        self.tokens_stamp: object = UNREAD
        if not self._take_operator_tokens():
            raise SystemExit(f"controller: operator_tokens_file {conf.operator_tokens_file}")
        self.certificate: tls.ServerCertificate | None = None
        self.ticker: Any = None
        self.watcher: Any = None
        log.info(
            "shard %s: store version %d, incarnation %d",
            conf.shard,
            self.store.version,
            incarnation,
        )

    def start(self) -> Any:
        super().start()
        app = self.api.metrics.instrument(
            Api(
                self.api.routes(),
                self.api.guard,
                title="meshpeer controller",
                debug=self.conf.check_answers,
            )
        )
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # raised by meshpeer.manager
        limits = Limits(**{f.name: getattr(self.conf, f.name) for f in dataclasses.fields(Limits)})
        secure = None
        if self.conf.tls_cert_file:
            self.certificate = tls.ServerCertificate(
                self.conf.tls_cert_file, self.conf.tls_key_file
            )
            secure = self.certificate.context
        host, want_port = self.conf.listen_host, self.conf.listen_port
        server, port = serve(app, host, want_port, limits=limits, tls=secure)
        log.info(
            "shard %s: REST API on %s://%s:%d (%s; fd limit %d)",
            self.conf.shard,
            "https" if secure else "http",
            self.conf.listen_host,
            port,
            limits,
            fd_limit,
        )
        self.federation.sync()
        self.speaker.start()
        self.ticker = hub.spawn(self._tick)
        if self.leadership is not None:
            self.leaders_watch = hub.spawn(follow, self.leadership, self._take_leaders, hub.sleep)
        if self.ownership is not None:
            self.claims_watch = hub.spawn(
                follow_claims, self.ownership, self.shard.take_claims, hub.sleep
            )
        if self.shared is not None:
            take = self.shard.take_shared_directory
            self.directory_watch = hub.spawn(follow, self.shared, take, hub.sleep)
        if self.conf.directory_check_interval > 0:
            self.watcher = hub.spawn(self._watch_directory)
        return server

    def _stand_by(self, leadership: Leadership) -> election.Term:
        """Answer 503 naming the leader until this replica is elected (docs/store.md)."""
        conf = self.CONF.controller
        me = leadership.me.replica
        secure = None
        if conf.tls_cert_file:
            secure = tls.ServerCertificate(conf.tls_cert_file, conf.tls_key_file).context
        app = standby.app(conf.shard, me, lambda: leadership.leader)
        server, _ = serve(app, conf.listen_host, conf.listen_port, tls=secure)
        log.info("shard %s: replica %s standing by", conf.shard, me)
        term = leadership.campaign(hub.sleep)
        server.kill()
        log.info("shard %s: replica %s leads (lease %x)", conf.shard, me, term.lease_id)
        return term

    def _keep_leading(self) -> None:
        """Renew the lease; once it is lost, stop at once (a standby may lead already): the
        supervisor starts this replica again, as a standby."""
        assert self.leadership is not None and self.term is not None
        try:
            self.leadership.keep(self.term, hub.sleep)
        except Exception:  # a keeper that died unseen would leave a leader without a lease
            log.exception("shard %s: renewing the lease failed", self.CONF.controller.shard)
        self._lost_lead()

    def _lost_lead(self) -> None:
        """The lease is gone or a write found another replica's: exit (as a standby next)."""
        log.error("shard %s: lost the lead: exiting", self.CONF.controller.shard)
        logging.shutdown()
        os._exit(LOST_LEAD_EXIT)

    def _take_leaders(self, leaders: dict[str, Leader]) -> None:
        self.shard.take_leaders({name: leader.url for name, leader in leaders.items()})

    def _tick(self) -> None:
        """Re-mint grants as their lifetime buckets roll over (refresh is a no-op otherwise)."""
        while True:
            hub.sleep(self.conf.tick_interval)
            self.shard.refresh()

    def _watch_directory(self) -> None:
        """Take a changed directory file's host keys and revoked hosts (the shard decides
        what it takes: ``ShardState.adopt_directory``), a changed operator tokens file and a
        changed certificate and key; a file that does not parse is refused whole and what
        runs stays."""
        path = self.conf.directory_file
        while True:
            hub.sleep(self.conf.directory_check_interval)
            self._take_operator_tokens()
            self._take_certificate()
            stamp = tls.file_stamp(path)
            if stamp == self.directory_stamp:
                continue
            self.directory_stamp = stamp
            try:
                loaded = _read_directory(path)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.error("shard %s: directory %s not taken: %s", self.conf.shard, path, exc)
                continue
            try:
                ignored = self.shard.adopt_directory(loaded)
            except Exception:  # the watcher must outlive one bad reload: try again next tick
                log.exception("shard %s: taking directory %s failed", self.conf.shard, path)
                self.directory_stamp = None
                continue
            log.info(
                "shard %s: directory %s: host keys and revoked hosts taken", self.conf.shard, path
            )
            if ignored:
                log.warning(
                    "shard %s: directory %s changes %s: restart the shard to take them",
                    self.conf.shard,
                    path,
                    ", ".join(ignored),
                )

    def _take_certificate(self) -> None:
        """A changed certificate or key: new connections get it, open ones keep theirs."""
        if self.certificate is None:
            return
        try:
            if self.certificate.reload():
                log.info(
                    "shard %s: certificate %s taken for new connections",
                    self.conf.shard,
                    self.conf.tls_cert_file,
                )
        except OSError as exc:  # ssl.SSLError is one: say a key that does not match yet
            log.error(
                "shard %s: certificate %s and key %s not taken (the one in use stays): %s",
                self.conf.shard,
                self.conf.tls_cert_file,
                self.conf.tls_key_file,
                exc,
            )

    def _take_operator_tokens(self) -> bool:
        """(Re-)read ``operator_tokens_file`` if it changed since it was last read; False if
        it could not be taken (logged: at start the shard refuses to run, later the tokens it
        runs with stay)."""
        path = self.conf.operator_tokens_file
        stamp = tls.file_stamp(path) if path else None
        if not path or stamp == self.tokens_stamp:
            return True
        self.tokens_stamp = stamp
        try:
            with open(path, encoding="utf-8") as f:
                tokens = parse_operator_tokens(yaml.safe_load(f))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.error("shard %s: operator tokens %s not taken: %s", self.conf.shard, path, exc)
            return False
        self.api.access.from_file = tokens
        log.info(
            "shard %s: operator tokens %s taken: %d admin, %d read-only",
            self.conf.shard,
            path,
            len(tokens.admin),
            len(tokens.readonly),
        )
        return True

    def close(self) -> None:
        if self.watcher is not None:
            hub.kill(self.watcher)
        threads = (self.ticker, self.claims_watch, self.directory_watch, self.leaders_watch)
        for thread in (*threads, self.keeper):
            if thread is not None:
                hub.kill(thread)
        if self.leadership is not None and self.term is not None:
            self.leadership.resign(self.term)  # an orderly close (not SIGTERM: that exits)
        self.federation.stop()
        self.shard.flush()  # a forming group: synced and answered, not dropped by close
        self.store.close()
        super().close()


def _read_directory(path: str) -> Directory:
    with open(path, encoding="utf-8") as f:
        return parse_directory(yaml.safe_load(f))


def _read_shared(shared: SharedDirectory, directory: Directory, shard: str) -> Directory:
    """``directory`` with etcd's shards, after seeding etcd with the file's entries if it was
    never seeded; entries that do not check out stop the shard, naming them (docs/store.md)."""
    seeded = shared.seed({name: shard_doc(s) for name, s in directory.shards.items()})
    if seeded:
        log.info("shard %s: directory in etcd seeded from the file: %s", shard, ", ".join(seeded))
    texts, _ = shared.snapshot()
    try:
        shards = shared_shards(texts, shard)
    except DirectoryError as exc:
        raise _refused(shared, exc) from None
    return dataclasses.replace(directory, shards=shards)


def _check_held(shared: SharedDirectory, shard: ShardState) -> None:
    """Stop (naming the entry) on a directory in etcd that strands a VPC the shard's store
    holds, as a running shard refuses such a change (docs/store.md)."""
    try:
        stranded(shard.directory.shards, shard.name, shard.intent.vpcs.values())
    except DirectoryError as exc:
        raise _refused(shared, exc) from None


def _refused(shared: SharedDirectory, exc: DirectoryError) -> SystemExit:
    where = f"{shared.prefix}directory/shards/"
    return SystemExit(f"controller: the directory in etcd ({where}) is refused: {exc}")


def _items(text: str | None) -> list[str]:
    """A comma-separated option's items (blanks dropped)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _router_id(conf: Any) -> str | None:
    """The configured BGP router id, else the REST address if IPv4 (None: the speaker takes
    its first session's local address)."""
    if conf.bgp_router_id:
        return str(conf.bgp_router_id)
    try:
        return str(ipaddress.IPv4Address(conf.listen_host))
    except ValueError:
        return None


def _own_url(conf: Any) -> str:
    """This replica's URL when no ``advertise_url`` is set."""
    scheme = "https" if conf.tls_cert_file else "http"
    return f"{scheme}://{conf.listen_host}:{conf.listen_port}"
