"""One controller shard's state and its publication: the shell around the pure core.

Writes go store first (one transaction, one version), then into the in-memory intent, then
the pure core recomputes what the shard publishes (peering states, service sets, federation
views) and the stream hub sends only the differences. Remote shards' federation views
arrive through ``set_remote_view``; the os-ken app owns the clients that feed it. The last
view of each remote VPC is kept in the store's meta (not intent: no version bump), so that a
restarted shard keeps its peerings ACTIVE while it waits for the peer shard to answer: fail
static across its own restarts too, not only across the peer's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import eventlet
import eventlet.event

from meshpeer.controller import bgp
from meshpeer.controller.model import (
    Endpoint,
    Host,
    Intent,
    JsonObject,
    Peering,
    Resource,
    Vpc,
    store_key,
)
from meshpeer.controller.mux import (
    ALL,
    GrantSettings,
    Publication,
    Scope,
    desired_streams,
    destination,
    endpoint_id,
    endpoint_object,
    must_apply,
)
from meshpeer.controller.peering import (
    MAX_VIEW_HOSTS,
    Status,
    View,
    federation_view,
    statuses,
    view_hosts,
    without_hosts,
)
from meshpeer.controller.routing import effective_routes
from meshpeer.directory import Directory, DirectoryError, Shard, credentials_update, shared_shards
from meshpeer.protocol import ServiceName
from meshpeer.protocol.directory import DIRECTORY_STREAM, PublicDirectory
from meshpeer.protocol.messages import (
    PEER_SERVICES,
    CloseReason,
    ProtocolError,
    StreamId,
    parse_stream_name,
    stream_name,
)
from meshpeer.store.contract import GroupCommit, IntentStore, VpcClaims
from meshpeer.store.sqlite import Change, CommitFailed, canonical_json
from meshpeer.streaming.publisher import StreamHub
from policies.export import ExportPolicy

log = logging.getLogger(__name__)

UNPUBLISHED = 1 << 63  # the version a host must hold of a stream not published: never reached
REMOTE_VIEW = "remote_view/"  # store meta name prefix: the last federation view of a remote VPC
BGP_LEARNED = "bgp_learned"  # store meta: the routes the on-prem routers announced (bgp.to_text)


def restored_views(meta: Mapping[str, str], wanted: Iterable[str]) -> dict[str, View]:
    """The remote views a previous run kept, for the VPCs still followed. A value that does
    not parse as a view is dropped (logged): the federation stream brings the view anyway."""
    views: dict[str, View] = {}
    for vpc in wanted:
        text = meta.get(REMOTE_VIEW + vpc)
        if text is None:
            continue
        try:
            view = json.loads(text)
        except ValueError:
            view = None
        if isinstance(view, dict) and all(isinstance(o, dict) for o in view.values()):
            views[vpc] = view
        else:
            log.warning("store meta %s%s is not a federation view: ignored", REMOTE_VIEW, vpc)
    return views


@dataclass(frozen=True)
class Delete:
    kind: str
    key: str


ResourceKey = tuple[str, str]
GROUP_MAX = 64  # writes per group commit at most (docs/store.md "Group commit")


@dataclass(frozen=True)
class _Applied:
    """One change set applied to the intent and not yet published."""

    version: int
    puts: list[Resource]
    deletes: list[Delete]
    keys: list[ResourceKey]
    old: list[Resource | None]  # what each delete removed
    replaced: list[Resource | None]  # what each put replaced
    gone: list[Endpoint]
    places: set[tuple[str, str | None]]
    held: set[tuple[str, str]]  # (vpc, host) pairs the write can empty
    fast: bool  # the endpoint fast path, as far as the intent before the write tells


@dataclass
class _Group:
    """Writes staged in one open store transaction, synced together (``ShardState.flush``)."""

    done: Any  # eventlet.event.Event: sent once the group is synced (or failed) and published
    writes: list[_Applied] = field(default_factory=list)
    error: CommitFailed | None = None


class WriteLock:
    """One write request at a time, from its checks against the in-memory intent to its apply
    there: the store's I/O (etcd; a VPC claim) yields to other requests in between, which
    would otherwise pass the same checks (two creates of one name). Green under eventlet
    (``meshpeer.manager`` patches ``threading``). :meth:`done` lets go early (before a wait)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        self._lock.acquire()
        self._owner = threading.get_ident()
        try:
            yield
        finally:
            self.done()

    def done(self) -> None:
        """Release it if this thread holds it (else nothing)."""
        if self._owner == threading.get_ident():
            self._owner = None
            self._lock.release()


class ShardState:
    """Intent + derived state of one shard. Single-threaded (one eventlet hub)."""

    def __init__(
        self,
        name: str,
        directory: Directory,
        store: IntentStore,
        hub: StreamHub,
        clock: Callable[[], float],
        grant_ttl: float = 3600.0,
        revoked_hosts: frozenset[str] = frozenset(),
        group_commit: bool = True,
    ) -> None:
        self.name = name
        self.directory = directory
        self.store = store
        self.hub = hub
        self.clock = clock
        self.revoked_here = revoked_hosts  # this shard's option, beside the directory's list
        self.ownership: VpcClaims | None = None  # store = etcd: VPC claims (set by the app)
        self.leader_urls: dict[str, str] = {}  # store = etcd: each shard's leader's, last seen
        self.leading: frozenset[str] = frozenset()  # the shards that have a leader now
        # The directory's shards as listed (the file's, or etcd's), without the leaders' URLs:
        # what the shard publishes to its hosts (the ``directory`` stream, docs/protocol.md).
        self.listed: Mapping[str, Shard] = directory.shards
        self.writes = WriteLock()  # held by each write request (ControllerApi.routes)
        grouped = store if group_commit and isinstance(store, GroupCommit) else None
        self._stage = None if grouped is None else grouped.stage
        self._sync = None if grouped is None else grouped.sync
        self._rollback = None if grouped is None else grouped.rollback
        self._group: _Group | None = None  # staged writes waiting for their sync
        self.on_fatal: Callable[[], None] = lambda: os._exit(70)  # memory ahead of the store
        self.grants = GrantSettings(directory, grant_ttl, self.revoked_hosts)
        snap = store.load()
        self.store_version = snap.version  # kept here: /healthz answers without the store
        self.intent = Intent.from_records({k: r.body for k, r in snap.records.items()})
        self.versions: dict[tuple[str, str], int] = {k: r.version for k, r in snap.records.items()}
        self.remote_views: dict[str, View] = restored_views(snap.meta, self.remote_peer_vpcs())
        for name in snap.meta:  # views of VPCs no peering names any more
            if name.startswith(REMOTE_VIEW) and name[len(REMOTE_VIEW) :] not in self.remote_views:
                store.set_meta(name, None)
        self.own_views: dict[str, dict[str, JsonObject]] = {}
        self._view_hosts: dict[str, tuple[View, frozenset[str] | None]] = {}
        self.states: dict[tuple[str, str], Status] = {}
        self.service_sets: dict[tuple[str, str], list[str]] = {}
        self.listeners: list[Callable[[], None]] = []  # e.g. federation client sync
        # Soft state for "is it programmed?": what each host reported applying, per stream,
        # and the stream versions each resource's last write produced.
        self.applied: dict[str, dict[str, int]] = {}
        # host -> its OHC's last status report (GET /v1/hosts/{name}); soft state, one per host
        self.host_status: dict[str, dict[str, Any]] = {}
        self.targets: dict[tuple[str, str], dict[StreamId, int]] = {}
        # ... and the hosts that must hold a stream's version whether they follow it or not.
        self.required: dict[tuple[str, str], dict[StreamId, tuple[int, frozenset[str]]]] = {}
        # From the BGP speaker (meshpeer.controller.speaker): what each on-prem router
        # announced, and the VPCs' dynamic routes made of it (docs/routing.md). Kept in the
        # store's meta, so a restarted shard publishes them (stale) until the routers announce
        # them again: its hosts keep forwarding (fail static across the shard's restart).
        self.learned: bgp.LearnedTable = bgp.restored(snap.meta.get(BGP_LEARNED))
        self.bgp_established: set[str] = set()  # router addresses with a session up
        self.dynamic: dict[str, tuple[bgp.DynamicRoute, ...]] = {}
        self.refresh()

    # --- writes -------------------------------------------------------------------------

    def commit(self, puts: Iterable[Resource] = (), deletes: Iterable[Delete] = ()) -> int:
        """Persist in one change set (one version), apply and republish; returns the version.

        With a store that groups commits (SQLite, docs/store.md "Group commit") the change set
        is staged and applied to the intent under the write lock, which is then let go; the
        first writer of a group lets the other ready writers join, syncs them all in one
        commit, then publishes each write in order. Every writer returns (and answers) only
        after that sync; a failed sync raises ``CommitFailed`` in each of them."""
        puts, deletes = list(puts), list(deletes)
        keys = [store_key(r) for r in puts]
        changes = [Change(*k, r.to_json()) for k, r in zip(keys, puts, strict=True)]
        changes += [Change(d.kind, d.key, None) for d in deletes]
        if self._stage is None:  # etcd (a compare on head per commit), or grouping off
            version = self.store_version = self.store.commit(changes)
            self._publish(self._apply(puts, deletes, keys, version))
            return version
        version = self._stage(changes)
        try:
            applied = self._apply(puts, deletes, keys, version)
        except Exception as exc:  # staged, half applied: the whole group must not commit
            self.flush(failed=exc)
            raise
        group, leader = self._group, self._group is None
        if group is None:
            group = self._group = _Group(eventlet.event.Event())
        group.writes.append(applied)
        self.writes.done()  # the next write's checks see this one in memory
        if leader:
            joined = 0  # let the writers that are ready join, while they keep coming
            try:
                while self._group is group and joined < len(group.writes) < GROUP_MAX:
                    joined = len(group.writes)
                    eventlet.sleep(0)
            finally:
                if self._group is group:  # else a refresh flushed it meanwhile
                    self.flush()
        group.done.wait()  # at once if it is done
        if group.error is not None:
            raise group.error
        return version

    def flush(self, failed: Exception | None = None) -> None:
        """Sync the staged group, then publish its writes in order and answer its writers.
        Anything that publishes calls this first (``refresh``), and so does anything else that
        calls the store (meta writes): nothing staged is seen by a host or peer shard before it
        is durable, and a group is always exactly one transaction. Any failure of the sync
        (or ``failed``: a write that broke between its stage and joining the group, which
        rolls the group back) fails every write of the group and reloads the intent from the
        store, which has none of them."""
        group, self._group = self._group, None
        if group is None:
            if failed is None:
                return
            group = _Group(eventlet.event.Event())
        try:
            if failed is not None:
                assert self._rollback is not None
                self._rollback()
                raise CommitFailed(failed)
            assert self._sync is not None
            self._sync()
        except Exception as exc:
            error = exc if isinstance(exc, CommitFailed) else CommitFailed(exc)
            log.error(
                "shard %s: group commit of %d writes failed: %s", self.name, len(group.writes), exc
            )
            group.error = error
            self._reload()
        else:
            self.store_version = group.writes[-1].version
            for applied in group.writes:
                try:
                    self._publish(applied)
                except Exception:  # committed: its writer is answered, the others published
                    log.exception(
                        "shard %s: publishing version %d failed", self.name, applied.version
                    )
        finally:
            group.done.send()

    def settled(self) -> None:
        """Wait for the group being formed, if any, and raise its error: an answer read from
        memory (a no-op write, ``?wait=programmed``) must not go out before the sync of the
        staged writes it may rest on."""
        group = self._group
        if group is not None:
            group.done.wait()
            if group.error is not None:
                raise group.error

    def _reload(self) -> None:
        """Memory back to what the store holds (after a failed group commit). If the store
        cannot even be read, the shard exits (``on_fatal``), as on a lost etcd lease."""
        try:
            snap = self.store.load()
        except Exception:
            log.critical("shard %s: cannot reload the store after a failed commit", self.name)
            self.on_fatal()
            raise
        self.store_version = snap.version
        self.intent = Intent.from_records({k: r.body for k, r in snap.records.items()})
        self.versions = {k: r.version for k, r in snap.records.items()}
        self.refresh()

    def _apply(
        self, puts: list[Resource], deletes: list[Delete], keys: list[ResourceKey], version: int
    ) -> _Applied:
        """A change set into the in-memory intent; what it replaced, for :meth:`_publish`."""
        old = [self.intent.get(d.kind, d.key) for d in deletes]
        replaced = [self.intent.get(*k) for k in keys]
        gone = [o for o in old if isinstance(o, Endpoint)]
        changed = [r for r in puts if isinstance(r, Endpoint)] + gone
        places = {(e.vpc, e.host) for e in changed}
        # (vpc, host) pairs this write can empty: only those are looked at (O(1) per write).
        moved = {(o.vpc, o.host) for o in replaced if isinstance(o, Endpoint)}
        held = {(v, h) for v, h in places | moved if h and self.intent.placed(v, h)}
        fast = (
            self._endpoints_only(puts, old)
            and all(o is not None for o in old)
            and not any(o is not None for o in replaced)  # all puts new
            and places <= held
        )
        for r, k in zip(puts, keys, strict=True):
            self.intent.put(r)
            self.versions[k] = version
        for d in deletes:
            self.intent.drop(d.kind, d.key)
            self.versions.pop((d.kind, d.key), None)
        return _Applied(version, puts, deletes, keys, old, replaced, gone, places, held, fast)

    def _publish(self, a: _Applied) -> None:
        """Republish what an applied change set altered (after its sync: ``flush``). In a
        group the intent may already hold later writes of the same group (all synced): a put
        a later write replaced takes the full path, which publishes the intent as it is."""
        current = all(self.intent.get(*k) is r for k, r in zip(a.keys, a.puts, strict=True))
        fast = a.fast and current and all(self.intent.placed(*p) for p in a.places)
        produced = self._patch_endpoints(a.puts, a.gone) if fast else None
        old = a.old + a.replaced
        if produced is None:
            produced = self.refresh(self.scope_of([*a.puts, *(o for o in old if o is not None)]))
        for vpc, host in sorted(p for p in a.held if not self.intent.placed(*p)):
            self._host_left(vpc, [host])
        for key in a.keys + [(d.kind, d.key) for d in a.deletes]:
            self.targets[key] = produced
        written = [(r, False) for r in a.puts] + [(o, True) for o in a.old if o]
        # an endpoint's depends on its host alone (mux.must_apply): once per host, shared
        per_host: dict[tuple[str | None, bool], dict[StreamId, tuple[int, frozenset[str]]]] = {}
        for r, deleted in written:
            if not isinstance(r, Endpoint):
                self.required[store_key(r)] = self._must_apply(r, deleted)
                continue
            if (r.host, deleted) not in per_host:
                per_host[(r.host, deleted)] = self._must_apply(r, deleted)
            self.required[store_key(r)] = per_host[(r.host, deleted)]

    def _must_apply(
        self, written: Resource, deleted: bool
    ) -> dict[StreamId, tuple[int, frozenset[str]]]:
        """``mux.must_apply`` with the stream versions the hosts must hold, as of now."""
        views = self.views() if isinstance(written, Peering) else {}  # endpoints need none
        must = must_apply(self.intent, self.states, views, written, deleted)
        return {
            sid: (self.hub.version(sid) if sid in self.hub else UNPUBLISHED, hosts)
            for sid, hosts in must.items()
        }

    # --- the endpoint fast path ------------------------------------------------------------
    # Adding or removing a VM in a VPC that already has endpoints on that host changes only
    # that endpoint's destination objects and its host's endpoint stream. Recomputing the
    # VPC's services would cost O(VPC size) per write; patching costs O(1).

    def _endpoints_only(self, puts: list[Resource], old: list[Resource | None]) -> bool:
        """Only plain endpoints: an ILB, or one holding a BGP session (its learned routes are
        in the forwarding streams), takes the full path."""
        return all(
            isinstance(r, Endpoint) and r.kind != "ilb" and r.bgp is None for r in [*puts, *old]
        )

    def _patch_endpoints(
        self, puts: list[Resource], gone: list[Endpoint]
    ) -> dict[StreamId, int] | None:
        added = [r for r in puts if isinstance(r, Endpoint)]
        produced: dict[StreamId, int] = {}
        for vpc in sorted({e.vpc for e in [*added, *gone]}):
            # each added endpoint's destination object once, for every policy's stream
            objs = {e.name: (e, destination(self.intent, e)) for e in added if e.vpc == vpc}
            policies: dict[str | None, ExportPolicy | None] = {None: None}
            for p in self.intent.peerings_of(vpc):
                st = self.states.get((vpc, p.name))
                if st is not None and st.active:
                    policies[p.export.policy_id] = p.export
            for pid, policy in policies.items():
                sid = StreamId(ServiceName.DESTINATION, vpc, pid)
                if sid not in self.hub:
                    return None  # not published yet: take the full path
                ups = {
                    name: obj
                    for name, (e, obj) in objs.items()
                    if policy is None or policy.exports_ip(e.ip)
                }
                delta = self.hub.patch(sid, ups, [e.name for e in gone if e.vpc == vpc])
                if delta is not None:
                    produced[sid] = delta.version
        for host in sorted({e.host for e in [*added, *gone] if e.host}):
            sid = StreamId(ServiceName.ENDPOINT, host)
            if sid not in self.hub:
                return None
            ups = {endpoint_id(e): endpoint_object(self.intent, e) for e in added if e.host == host}
            delta = self.hub.patch(sid, ups, [endpoint_id(e) for e in gone if e.host == host])
            if delta is not None:
                produced[sid] = delta.version
        return produced

    # --- credentials ---------------------------------------------------------------------

    @property
    def revoked_hosts(self) -> frozenset[str]:
        """Hosts whose credentials every request is refused: the directory's, and this
        shard's own option (kept: contracts are not renamed)."""
        return self.directory.revoked_hosts | self.revoked_here

    def adopt_directory(self, loaded: Directory) -> list[str]:
        """A changed directory file: take its host keys and revoked hosts now; return the
        fields that differ and need a restart. A newly revoked host's open subscriptions are
        closed (``host-revoked``) and its peering streams mint no more grants; so are those
        opened with a host key the file no longer has, or has with another secret (each new
        request with it is refused)."""
        before, keys = self.revoked_hosts, dict(self.directory.host_keys)
        if self.directory.claimed:  # etcd: the shards and claims are etcd's, the file a seed
            loaded = replace(
                loaded, claims=self.directory.claims, claimed=True, shards=self.directory.shards
            )
        self.directory, ignored = credentials_update(self.directory, loaded)
        now = self.directory.host_keys
        dropped = sorted(k for k, secret in keys.items() if now.get(k) != secret)  # or changed
        if dropped:
            closed = self.hub.close_keys(dropped, CloseReason.HOST_REVOKED)
            log.warning("host keys %s removed: %d subscriptions closed", dropped, closed)
        self.grants = replace(self.grants, directory=self.directory, revoked=self.revoked_hosts)
        for host in sorted(self.revoked_hosts - before):
            closed = self.hub.close_held(host, CloseReason.HOST_REVOKED)
            log.warning("host %s revoked: %d subscriptions closed", host, closed)
        if self.revoked_hosts != before:
            self.refresh()  # peering streams: grants for revoked hosts go, restored ones come
        return ignored

    # --- VPC ownership claimed in etcd (store = etcd; docs/store.md) -----------------------

    def claim_vpc(self, vpc: str) -> str:
        """Claim ``vpc`` for this shard where claims are kept; returns its owner."""
        return self.name if self.ownership is None else self.ownership.claim(vpc, self.name)

    def release_vpc(self, vpc: str) -> None:
        if self.ownership is not None:
            self.ownership.release(vpc, self.name)

    def reconcile_claims(self) -> None:
        """At start, before serving: release this shard's claims on VPCs it does not have (a
        create whose commit failed after its claim, a release lost after a delete). Only the
        leader runs it, and no write is in flight yet (docs/store.md)."""
        if self.ownership is None:
            return
        for vpc, owner in sorted(self.directory.claims.items()):
            if owner == self.name and vpc not in self.intent.vpcs:
                log.warning("shard %s: claim on VPC %s it does not have: released", self.name, vpc)
                self.ownership.release(vpc, self.name)

    def take_claims(self, claims: Mapping[str, str]) -> None:
        """The claims as the watch last saw them: owners (and so peerings' states) follow."""
        if claims == self.directory.claims:
            return
        self.directory = replace(self.directory, claims=dict(claims), claimed=True)
        self.grants = replace(self.grants, directory=self.directory)
        self.refresh()

    def take_leaders(self, urls: Mapping[str, str]) -> None:
        """Each shard's current leader's URL (replicas, docs/store.md): federation follows.
        A shard with no leader now keeps its last one's URL while that is still one of its
        entry's URLs (``url``, ``replicas``); else the entry's ``url``."""
        self.leader_urls = {**self.leader_urls, **urls}
        self.leading = frozenset(urls)
        self._take_shards(self.listed)

    def take_shared_directory(self, texts: Mapping[str, str]) -> bool:
        """The directory's shards as etcd holds them now (its watch; docs/store.md, "The
        directory in etcd"): owners, URLs and VNI ranges follow. Entries that do not check
        out as a directory file's would, or that strand what this shard holds (one of its
        VPCs' VNIs outside its range or inside another's, one of its VPCs pinned elsewhere),
        are refused whole, logged, and what runs stays (False)."""
        try:
            shards = shared_shards(texts, self.name)
            stranded(shards, self.name, self.intent.vpcs.values())
        except DirectoryError as exc:
            log.error(
                "shard %s: directory in etcd refused, the running one stays: %s", self.name, exc
            )
            return False
        self._take_shards(shards)
        return True

    def _take_shards(self, shards: Mapping[str, Shard]) -> None:
        """``shards`` with each one's URL its leader's, if it has one (``take_leaders``); the
        hosts are sent them as listed."""
        led = {n: replace(s, url=self._url(n, s)) for n, s in shards.items()}
        if led != self.directory.shards or shards != self.listed:
            self.listed = shards
            self.directory = replace(self.directory, shards=led)
            self.grants = replace(self.grants, directory=self.directory)
            self.refresh()

    def _url(self, name: str, entry: Shard) -> str:
        last = self.leader_urls.get(name)
        if last is None or (name not in self.leading and last not in (entry.url, *entry.replicas)):
            return entry.url
        return last

    # --- a host leaves a VPC --------------------------------------------------------------

    def _host_left(self, vpc: str, hosts: Iterable[str]) -> None:
        """``hosts`` hold no endpoint of ``vpc`` any more: close what their own credentials
        follow here for it (a subscription is checked when it is made; this is the other
        half): ``vpc``'s own services if it is this shard's, and the services of its peers
        here that they follow with a grant for ``vpc`` (the peering stream that lists those
        grants is gone with the host's last endpoint). For a VPC of another shard, its
        federation view's host list says who left (``set_remote_view``)."""
        streams = [StreamId(s, vpc, None) for s in PEER_SERVICES]
        peers = [
            StreamId(s, p.vpc, p.export.policy_id)
            for p in self.intent.peerings.values()
            if p.peer_vpc == vpc
            for s in PEER_SERVICES
        ]
        for host in hosts:
            closed = self.hub.close_held(host, CloseReason.HOST_LEFT, streams)
            closed += self.hub.close_held(host, CloseReason.HOST_LEFT, peers, tag=vpc)
            if closed:
                log.info("host %s left VPC %s: %d subscriptions closed", host, vpc, closed)

    def scope_of(self, resources: Iterable[Resource]) -> Scope:
        """The VPCs and hosts whose streams a change to these resources can alter."""
        vpcs: set[str] = set()
        hosts: set[str] = set()
        for r in resources:
            if isinstance(r, Vpc):
                vpcs.add(r.name)
            elif isinstance(r, Host):  # its underlay IP is in every destination on it
                hosts.add(r.name)
                on = {e.vpc for e in self.intent.endpoints_on(r.name)}
                vpcs |= on
                for vpc in on:  # and in the spillover entries of ILBs spilling into them
                    vpcs |= self.intent.spilling_into(vpc)
                if r.role == "gateway":  # listed in every peering object (docs/gateways.md)
                    vpcs |= {p.vpc for p in self.intent.peerings.values()}
            else:
                vpcs.add(r.vpc)
                vpcs |= self.intent.spilling_into(r.vpc)  # their ILBs' spillover objects
                if isinstance(r, Endpoint) and r.host:
                    hosts.add(r.host)
                if isinstance(r, Peering):  # whom the gateways relay for (their endpoint stream)
                    hosts.update(self.intent.gateway_hosts())
        return Scope(frozenset(vpcs), frozenset(hosts))

    def adopt_fetched_view(self, vpc: str, view: View) -> None:
        """A peer VPC's view fetched for a peering write, kept until its federation stream
        delivers (a view the stream already delivered wins). No refresh here: the write's
        commit that follows recomputes the states it touches. Kept in the store too: the
        stream may then deliver the same view, which ``set_remote_view`` does not write."""
        if vpc not in self.remote_views:
            self.remote_views[vpc] = view
            self._set_meta(REMOTE_VIEW + vpc, canonical_json(view))

    def set_remote_view(self, vpc: str, view: View | None) -> None:
        old = self.remote_views.get(vpc)
        if view is None:
            self.remote_views.pop(vpc, None)
        else:
            self.remote_views[vpc] = view
        if old != view:
            self._set_meta(REMOTE_VIEW + vpc, None if view is None else canonical_json(view))
        now_hosts = view_hosts(view)
        if old is not None and view is not None and len(now_hosts) < MAX_VIEW_HOSTS:
            self._host_left(vpc, sorted(set(view_hosts(old)) - set(now_hosts)))
        if old is not None and without_hosts(old) == without_hosts(view):
            return  # only its hosts changed: no state or stream depends on them
        peers = {p.vpc for p in self.intent.peerings.values() if p.peer_vpc == vpc}
        self.refresh(Scope(frozenset(peers), frozenset()))

    def forget_remote_view(self, vpc: str) -> None:
        """No local peering names ``vpc`` any more: drop its view, kept one included."""
        self.remote_views.pop(vpc, None)
        self._view_hosts.pop(vpc, None)
        self._set_meta(REMOTE_VIEW + vpc, None)

    def _set_meta(self, name: str, value: str | None) -> None:
        """A meta write in its own transaction: the staged group is synced first, so that it
        never commits (or loses) the group's writes on their behalf."""
        self.flush()
        self.store.set_meta(name, value)

    def listed_in_view(self, vpc: str, host: str) -> bool | None:
        """Does remote VPC ``vpc``'s last view list ``host`` among its hosts? None: no view
        yet, or its host list was cut at MAX_VIEW_HOSTS (it cannot say). The set is built
        once per view, not per subscription."""
        view = self.remote_views.get(vpc)
        if view is None:
            return None
        have = self._view_hosts.get(vpc)
        if have is None or have[0] is not view:
            hosts = view_hosts(view)
            have = (view, None if len(hosts) >= MAX_VIEW_HOSTS else frozenset(hosts))
            self._view_hosts[vpc] = have
        return None if have[1] is None else host in have[1]

    # --- derived state ------------------------------------------------------------------

    def owner_map(self) -> dict[str, str]:
        vpcs = {p.peer_vpc for p in self.intent.peerings.values()} | set(self.intent.vpcs)
        return {v: self.directory.owner_of(v) for v in vpcs}

    def views(self) -> dict[str, View]:
        """Federation views of every VPC this shard knows: its own and replicated ones."""
        return {**self.remote_views, **self.own_views}

    def _update_own_views(self, scope: Scope) -> None:
        """A VPC's view depends on its subnets, peerings and routes only: recompute those in
        scope (every write's scope holds the VPCs it touched)."""
        for vpc in list(self.own_views):
            if vpc not in self.intent.vpcs:
                del self.own_views[vpc]
        for vpc in self.intent.vpcs:
            if scope.has_vpc(vpc) or vpc not in self.own_views:
                dynamic = self.dynamic.get(vpc, ())
                self.own_views[vpc] = federation_view(self.intent, self.name, vpc, dynamic)

    def remote_peer_vpcs(self) -> set[str]:
        """Peer VPCs owned by other shards, whose federation views this shard must follow."""
        return {
            p.peer_vpc
            for p in self.intent.peerings.values()
            if self.directory.owner_of(p.peer_vpc) != self.name
        }

    def refresh(self, scope: Scope = ALL) -> dict[StreamId, int]:
        """Recompute and publish what ``scope`` covers (plus the VPCs whose peering state
        changed); returns the stream versions this refresh produced. A staged group is synced
        (and published) first: what is published never holds a write that could be lost."""
        self.flush()
        wanted = self.bgp_sessions()
        known = self.views() if wanted else {}  # one merge per refresh, none without BGP
        peers = {
            vpc: bgp.peer_prefixes(self.intent, vpc, self.states, known, False)
            for vpc in {s.vpc for s in wanted.values()}
        }
        dynamic = bgp.dynamic_routes(wanted, self.learned, peers)
        learned = bgp.changed_vpcs(self.dynamic, dynamic)
        self.dynamic = dynamic
        if scope.vpcs is not None and learned - scope.vpcs:
            scope = Scope(scope.vpcs | learned, scope.hosts)
        self._update_own_views(scope)
        views = self.views()
        before_states = self.states
        before = self.active_peers()
        self.states = statuses(self.intent, views, self.owner_map(), before_states, scope.vpcs)
        changed = {k[0] for k in set(before_states) | set(self.states)
                   if before_states.get(k) != self.states.get(k)}  # fmt: skip
        if scope.vpcs is not None and changed - scope.vpcs:
            scope = Scope(scope.vpcs | changed, scope.hosts)
        for vpc, peer_vpc, pid in before - self.active_peers():
            for service in PEER_SERVICES:  # only that peer's subscribers of a shared stream
                sid = StreamId(service, vpc, pid)
                self.hub.close_subscribers(sid, peer_vpc, CloseReason.PEERING_GONE)
        pub = desired_streams(
            self.intent, self.states, self.grants, self.clock(), scope, self.dynamic
        )
        for vpc in self.intent.vpcs:  # small (ranges and peerings, no endpoints): always
            pub.streams[StreamId(ServiceName.FEDERATION, vpc)] = {
                k: dict(v) for k, v in views[vpc].items()
            }
        # a few shards, with the VPCs each claimed: a claim taken (``take_claims``) is sent
        public = PublicDirectory.of(self.listed, self.directory.claims)
        pub.streams[DIRECTORY_STREAM] = public.to_json()
        produced: dict[StreamId, int] = {}
        for sid, objects in pub.streams.items():
            delta = self.hub.publish(sid, objects)
            if delta is not None:
                produced[sid] = delta.version
        for old in self.hub.stream_ids():
            sid = StreamId(*old)
            gone_vpc = sid.service == ServiceName.FEDERATION and sid.key not in self.intent.vpcs
            if (scope.covers(sid) and sid not in pub.streams) or gone_vpc:
                # A peer stream ends when no ACTIVE peering uses its policy any more.
                reason = CloseReason.PEERING_GONE if sid.policy else "gone"
                self.hub.close_stream(old, reason)
        for key in [k for k in self.service_sets if scope.has_vpc(k[0])]:
            del self.service_sets[key]
        self.service_sets.update(pub.service_sets)
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # a committed write must not be reported as failed
                log.exception("shard %s: listener %r failed", self.name, listener)
        return produced

    def bgp_sessions(self) -> dict[str, bgp.Session]:
        """The BGP sessions this shard's intent wants, by router address."""
        if not self.intent.bgp_endpoints():
            return {}  # most shards: no views to merge on every refresh
        return bgp.sessions(self.intent, self.states, self.views())

    def set_learned(self, table: bgp.LearnedTable) -> None:
        """The speaker's news: republish the VPCs whose dynamic routes it changed."""
        if bgp.to_text(table) != bgp.to_text(self.learned):
            self._set_meta(BGP_LEARNED, bgp.to_text(table) if table else None)
        self.learned = table
        self.refresh(Scope(frozenset(), frozenset()))

    def bgp_status(self, vpc: str) -> list[JsonObject]:
        established = self.bgp_established
        routes = self.dynamic.get(vpc, ())
        return bgp.status(vpc, self.bgp_sessions(), self.learned, established, routes)

    def active_peers(self) -> set[tuple[str, str, str]]:
        """(vpc, peer VPC, export policy id) of every ACTIVE peering."""
        return {
            (p.vpc, p.peer_vpc, p.export.policy_id)
            for key, p in self.intent.peerings.items()
            if (st := self.states.get(key)) is not None and st.active
        }

    # --- programmed? ------------------------------------------------------------------------

    def report_applied(self, host: str, streams: dict[str, int]) -> None:
        """An OHC says which stream versions its switch now holds. Only streams this shard
        publishes are kept, and the host's entries for streams since removed are dropped, so
        what is held is bounded by (reporting hosts) x (published streams)."""
        # Reports travel on separate connections: a late older one must not lower a version.
        before = self.applied.get(host, {})
        held = before | {name: max(v, before.get(name, v)) for name, v in streams.items()}
        kept = {name: v for name, v in held.items() if self._publishes(name)}
        if kept:
            self.applied[host] = kept
        else:
            self.applied.pop(host, None)

    def _publishes(self, name: str) -> bool:
        try:
            return StreamId(*parse_stream_name(name)) in self.hub
        except ProtocolError:
            return False

    def pending_hosts(self, kind: str, keys: str | Iterable[str]) -> list[str]:
        """Hosts that must act on the last write of a resource (or of each of ``keys``: a
        batch) and have not reported applying it yet (OVN's --wait=hv, per resource): every
        host subscribed to a stream the write changed, and the hosts ``mux.must_apply`` names
        whether they follow it yet or not (after a restart, for a resource not written since:
        its streams' versions now, which the hosts report again as they resubscribe). The keys
        of one batch share their changed streams: each is looked at once (a batch of 5,000 on
        a shard with 300 subscribed hosts took 3 s of the hub per look, found by a review)."""
        want: dict[tuple[StreamId, str], int] = {}  # (stream, host) -> version it must hold
        seen: set[int] = set()  # the targets of one commit, shared by its keys
        seen_required: set[int] = set()  # and what its endpoints on one host must apply

        def need(sid: StreamId, version: int, hosts: Iterable[str]) -> None:
            for h in hosts:
                if want.get((sid, h), -1) < version:
                    want[(sid, h)] = version

        for key in [keys] if isinstance(keys, str) else keys:
            targets = self.targets.get((kind, key))
            if targets is not None and id(targets) not in seen:
                seen.add(id(targets))
                for sid, version in targets.items():
                    need(sid, version, self.hub.subscriber_hosts(sid))
            required = self.required.get((kind, key))
            if required is None:  # not written since this shard started: as of now
                found = self.intent.get(kind, key)
                required = self._must_apply(found, False) if found is not None else {}
            elif id(required) in seen_required:
                continue
            else:
                seen_required.add(id(required))
            for sid, (version, hosts) in required.items():
                need(sid, version, hosts)
        names = {sid: stream_name(*sid) for sid, _ in want}
        return sorted(
            {h for (sid, h), v in want.items() if self.applied.get(h, {}).get(names[sid], -1) < v}
        )

    # --- reads for the REST API ----------------------------------------------------------

    def version_of(self, kind: str, key: str) -> int | None:
        return self.versions.get((kind, key))

    def peering_status(self, vpc: str, name: str) -> Status | None:
        return self.states.get((vpc, name))

    def effective_routes(self, vpc: str) -> list[JsonObject]:
        dynamic = self.dynamic.get(vpc, ())
        return effective_routes(self.intent, vpc, self.states, self.views(), dynamic)

    def counts(self) -> dict[str, Any]:
        stats = self.hub.stats()
        per_service = {
            f"{sid.service}/{sid.key}/{sid.policy or 'own'}"
            + (f"/{sid.host}" if sid.host else ""): st.subscribers
            for sid, st in sorted(stats.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
        }
        return {
            **Publication({}, self.service_sets).counts(),
            "peerings": len(self.intent.peerings),
            "streams": len(stats),
            "subscribers": per_service,
            "service_sets_by_vpc": _sets_by_vpc(self.service_sets),
        }


def _sets_by_vpc(sets: Mapping[tuple[str, str], list[str]]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for (vpc, pid), names in sorted(sets.items()):
        out.setdefault(vpc, {})[pid] = names
    return out


def stranded(shards: Mapping[str, Shard], name: str, held: Iterable[Vpc]) -> None:
    """DirectoryError naming the entry if ``shards`` would strand a VPC that shard ``name``
    holds: its VNI outside ``name``'s range (the ranges are disjoint, so another shard's
    next new VPC could get it), or the VPC pinned to another shard."""
    lo, hi = shards[name].vni_range
    for vpc in sorted(held, key=lambda v: v.name):
        if not lo <= vpc.vni <= hi:
            raise DirectoryError(
                f"shards.{name}.vni_range: leaves out VNI {vpc.vni} of its VPC {vpc.name!r}"
            )
        elsewhere = next((o for o, s in sorted(shards.items()) if vpc.name in s.vpcs), name)
        if elsewhere != name:
            raise DirectoryError(
                f"shards.{elsewhere}.vpcs: pins VPC {vpc.name!r}, held by {name!r}"
            )
