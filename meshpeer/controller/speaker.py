"""The shard's BGP speaker: a thin shim over os-ken 4.2.2's ``BGPSpeaker`` (docs/routing.md).

Every decision is in ``meshpeer.controller.bgp``; this only makes the speaker hold the sessions
and announce the prefixes the shard's intent wants, and hands what the routers announce to
``ShardState.set_learned``. It runs on the controller's eventlet hub (os-ken needs
``OSKEN_HUB_TYPE=eventlet`` and ``eventlet.monkey_patch()`` before it is imported, which
``meshpeer.manager`` does), and os-ken allows one speaker per process: it is made once, with
the first session wanted, and lives as long as the process.

The os-ken 4.2.2 bugs this works around (each covered by tests/e2e/test_bgp_e2e.py):

- A route refresh (the router's ``birdc reload in``) resets the session unless the neighbor has
  a MED to send: every neighbor is added with ``multi_exit_disc=MED``.
- The speaker is transit by default (it re-announces what one router sent to every other),
  and tightening an out filter on a live session withdraws nothing: each neighbor gets its out
  filter (the prefixes its VPC announces and won, exactly; then deny) right after
  ``neighbor_add``, before a session can come up, and a session whose prefixes change is
  deleted and added again (its learned routes kept, stale, until the router announces them
  again on the new session, or ``STALE_TIME`` passes).
- ``neighbor_del`` leaves the peer's routes as best paths in the speaker's table: the learned
  routes here are never read from that table, only from the per-neighbor adjacency-RIB-in
  events, and the neighbor's entries are dropped when it is removed or goes down.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from os_ken.lib import hub
from os_ken.services.protocols.bgp.bgpspeaker import BGPSpeaker
from os_ken.services.protocols.bgp.info_base.base import PrefixFilter
from os_ken.services.protocols.bgp.info_base.ipv4 import Ipv4Path

from meshpeer.controller import bgp
from meshpeer.controller.shard import ShardState

log = logging.getLogger(__name__)

MED = 100  # sent on every announcement: without one, a route refresh resets the session
# After a restart, how long a route learned before it stays without its router announcing it
# again (the routers' sessions come back within a few seconds; BIRD's connect retry is 2 s in
# the lab, 120 s by default, hence a margin).
STALE_TIME = 60.0
RETRY_TIME = 2.0  # a burst the shard failed to take (store locked or full) is handed over again
MED_ATTR = 4  # BGP_ATTR_TYPE_MULTI_EXIT_DISC


class _BGPSpeaker(BGPSpeaker):  # type: ignore[misc]
    """os-ken's speaker, telling its peer-up handler the router's address: 4.2.2 passes its
    BGP identifier instead (the router id, which need not be the session's address)."""

    def _notify_peer_up(self, peer: Any) -> None:
        if self._peer_up_handler:
            self._peer_up_handler(peer.ip_address, peer.remote_as)


class Speaker:
    """Holds the shard's BGP sessions as its intent wants them (a shard listener)."""

    def __init__(
        self, shard: ShardState, asn: int, router_id: str | None, listen: str, port: int
    ) -> None:
        self.shard = shard
        self.asn = asn
        self.router_id = router_id
        self.listen = listen
        self.port = port
        self.speaker: Any = None
        self.held: dict[str, bgp.Session] = {}
        self.announced: dict[str, str] = {}  # prefix -> next hop
        self.conflicts: list[str] = []
        self.permits: dict[str, tuple[str, ...]] = {}  # router address -> its out filter
        self.pending: list[bgp.Event] = []  # route events not yet handed to the shard
        self.grace: dict[str, int] = {}  # router address -> its latest stale grace time
        self.flush_due = False  # a _flush is scheduled

    def start(self) -> None:
        """The sessions the store's intent wants (none: no speaker yet), and the end of the
        grace time of the routes kept from before a restart."""
        self.sync()
        for ip, routes in sorted(self.shard.learned.items()):
            if any(r.stale for r in routes.values()):
                self._expire_later(ip)

    def _expire_later(self, peer_ip: str) -> None:
        """In STALE_TIME, drop what is still stale of ``peer_ip``'s routes (unless they were
        made stale again meanwhile: that grace time ends later)."""
        self.grace[peer_ip] = self.grace.get(peer_ip, 0) + 1
        hub.spawn_after(STALE_TIME, self._expire, peer_ip, self.grace[peer_ip])

    def _expire(self, peer_ip: str, grace: int) -> None:
        if self.grace.get(peer_ip) == grace:
            log.info("bgp: dropping the routes of %s not announced again in time", peer_ip)
            self._queue(bgp.Expire(peer_ip))

    # --- intent -> speaker -------------------------------------------------------------------

    def sync(self) -> None:
        wanted = self.shard.bgp_sessions()
        if wanted == self.held:
            return
        if self.speaker is None:
            self.speaker = self._start(wanted)
        announce, conflicts = bgp.announcements(wanted)
        for c in sorted(set(conflicts) - set(self.conflicts)):
            log.warning("bgp: %s", c)
        self.conflicts = conflicts
        permits = {ip: bgp.permitted(s, announce) for ip, s in wanted.items()}
        before = dict(self.held)
        dropped = [
            ip
            for ip, old in sorted(self.held.items())
            if wanted.get(ip) != old or permits.get(ip) != self.permits.get(ip)
        ]
        for ip in dropped:
            log.info("bgp: session to %s %s", ip, "reset" if ip in wanted else "removed")
            self.speaker.neighbor_del(ip)
            del self.held[ip]
            del self.permits[ip]
            self.shard.bgp_established.discard(ip)
            # what the old session sent and the shard has not taken yet is out of date
            self.pending = [
                u for u in self.pending if u.peer_ip != ip or not isinstance(u, bgp.Update)
            ]
        for prefix, hop in sorted(self.announced.items()):
            if announce.get(prefix) != hop:
                self.speaker.prefix_del(prefix)
                del self.announced[prefix]
        for prefix, hop in sorted(announce.items()):
            if prefix not in self.announced:
                self.speaker.prefix_add(prefix, next_hop=hop)
                self.announced[prefix] = hop
        for ip, s in sorted(wanted.items()):
            if self.held.get(ip) != s:
                self._add_neighbor(s, permits[ip])
        table = self.shard.learned
        for ip in dropped:
            if ip not in table:
                continue
            if _same_endpoint(wanted.get(ip), before[ip]):
                # A reset on purpose: the routes stay published, stale, until the router
                # announces them again on the new session (or their grace time ends).
                table = bgp.mark_stale(table, ip)
                self._expire_later(ip)
            else:
                table = bgp.forget_peer(table, ip)
        if table != self.shard.learned:  # last: this refreshes the shard, which calls sync
            self.shard.set_learned(table)  # again (a no-op)

    def _start(self, wanted: dict[str, bgp.Session]) -> Any:
        router_id = self.router_id or min(wanted.values(), key=lambda s: s.peer_ip).local_ip
        log.info("bgp: speaker AS %d, router id %s, on %s:%d", self.asn, router_id,
                 self.listen, self.port)  # fmt: skip
        return _BGPSpeaker(
            as_number=self.asn,
            router_id=router_id,
            bgp_server_hosts=(self.listen,),
            bgp_server_port=self.port,
            adj_rib_in_change_handler=self._on_route,
            peer_down_handler=self._on_down,
            peer_up_handler=self._on_up,
        )

    def _add_neighbor(self, s: bgp.Session, permit: tuple[str, ...]) -> None:
        log.info("bgp: session %s/%s to %s AS %d (local %s AS %d), announcing %s",
                 s.vpc, s.endpoint, s.peer_ip, s.peer_asn, s.local_ip, s.local_asn,
                 ", ".join(s.announce) or "nothing")  # fmt: skip
        self.speaker.neighbor_add(
            s.peer_ip,
            s.peer_asn,
            enable_ipv4=True,
            enable_ipv6=False,
            enable_vpnv4=False,
            enable_vpnv6=False,
            enable_evpn=False,
            multi_exit_disc=MED,
            local_address=s.local_ip,
            local_as=s.local_asn,
        )
        # Before the session can come up (no hub switch since neighbor_add): a filter
        # tightened on a live session would withdraw nothing.
        self.speaker.out_filter_set(s.peer_ip, out_filters(permit))
        self.held[s.peer_ip] = s
        self.permits[s.peer_ip] = permit

    # --- speaker -> shard (os-ken callbacks, on the hub) -------------------------------------
    # They only take note and queue: the shard's work (a store write, a refresh, its
    # listeners) runs in a green thread of its own. os-ken calls them from its FSM's state
    # change, inside connection_lost, and catches nothing: an exception there would stop it
    # before it reconnects, and the session would never come back (found by a review).

    def _on_route(self, ev: Any, peer_ip: str, peer_as: int) -> None:
        if not isinstance(ev.path, Ipv4Path) or peer_ip not in self.held:
            return
        med_attr = ev.path.get_pattr(MED_ATTR)
        med = None if med_attr is None else int(med_attr.value)
        log.debug("bgp: %s from %s AS %s %s", "withdraw" if ev.is_withdraw else "announce",
                  peer_ip, peer_as, ev.prefix)  # fmt: skip
        self._queue(bgp.Update(peer_ip, ev.prefix, ev.is_withdraw, med))

    def _on_down(self, peer_ip: str, peer_as: int) -> None:
        log.info("bgp: session to %s AS %s down", peer_ip, peer_as)
        self.shard.bgp_established.discard(peer_ip)
        self._queue(bgp.Down(peer_ip))

    def _on_up(self, peer_ip: str, peer_as: int) -> None:
        log.info("bgp: session to %s AS %s up", peer_ip, peer_as)
        self.shard.bgp_established.add(peer_ip)

    def _queue(self, event: bgp.Event) -> None:
        self.pending.append(event)
        self._flush_after(0)  # the first of a burst: hand the whole burst over at once

    def _flush_after(self, delay: float) -> None:
        if not self.flush_due:
            self.flush_due = True
            hub.spawn_after(delay, self._flush)

    def _flush(self) -> None:
        """One table change, one store write and one republication per burst of route events
        (os-ken reports one event per prefix: a router's full table is thousands). If the
        shard fails to take them (the store is locked or full), they stay queued, ahead of
        what came since, and are handed over again in RETRY_TIME."""
        events = [u for u in self.pending if u.peer_ip in self.held]
        self.pending = []
        try:
            if events:
                log.info("bgp: %d route events (%d withdrawals)", len(events),
                         sum(isinstance(u, bgp.Update) and u.withdraw for u in events))  # fmt: skip
                self.shard.set_learned(bgp.apply(self.shard.learned, events))
        except Exception:
            log.exception("bgp: the shard did not take %d route events: again in %.0f s",
                          len(events), RETRY_TIME)  # fmt: skip
            self.pending = events + self.pending
            self.flush_due = False
            self._flush_after(RETRY_TIME)
            return
        self.flush_due = False
        if self.pending:  # what came in during the write
            self._flush_after(0)


def _same_endpoint(new: bgp.Session | None, old: bgp.Session) -> bool:
    """Is ``new`` the session ``old`` was, reset on purpose (what it announces changed)?"""
    return new is not None and (new.vpc, new.endpoint) == (old.vpc, old.endpoint)


def out_filters(permit: tuple[str, ...]) -> list[PrefixFilter]:
    """Announce the ``permit``ted prefixes, exactly, and nothing else (no transit)."""
    exact = [
        PrefixFilter(p, PrefixFilter.POLICY_PERMIT, ge=n, le=n)
        for p in permit
        for n in [ipaddress.ip_network(p).prefixlen]
    ]
    return [*exact, PrefixFilter("0.0.0.0/0", PrefixFilter.POLICY_DENY)]
