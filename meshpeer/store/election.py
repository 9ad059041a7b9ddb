"""Which replica of a shard leads: decisions on an etcd lease, taking the time as an input.

The leader holds ``<etcd_prefix>leaders/<shard>`` = ``{"replica", "url"}`` on a lease of
``ttl`` seconds and renews it every ``ttl / 3``; the key goes with the lease. A standby
campaigns (a create-if-absent transaction) whenever it sees no leader. A leader whose renewal
etcd answers without a TTL (the lease is gone) stops at once: a standby may lead. One that
cannot reach etcd goes on serving reads: no replica is elected without a quorum, and every
write needs etcd anyway. The intent store compares on its own head key, so even two replicas
that both believe they lead cannot both win a version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshpeer.store import etcdplan as plan

Json = dict[str, Any]
LEADERS = "leaders/"


def leader_key(deployment_prefix: str, shard: str) -> str:
    return f"{deployment_prefix}{LEADERS}{shard}"


@dataclass(frozen=True, slots=True)
class Leader:
    replica: str
    url: str

    def value(self) -> str:
        return plan.canonical({"replica": self.replica, "url": self.url})

    @classmethod
    def parse(cls, value: str) -> Leader:
        doc = json.loads(value)
        return cls(str(doc["replica"]), str(doc["url"]))


def lease_ttl(value: object) -> int:
    """The ``leader_ttl`` option as an etcd lease TTL: etcd counts whole seconds, and the
    leader's own checks (:class:`Term`) must assume the TTL etcd applies, so a fraction is
    refused rather than rounded. ValueError naming the field."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value != value  # NaN
        or value < 1
        or value != int(value)
    ):
        raise ValueError(
            f"controller.leader_ttl: a whole number of seconds, at least 1 (an etcd lease's "
            f"TTL), not {value!r}"
        )
    return int(value)


def campaign_txn(deployment_prefix: str, shard: str, me: Leader, lease_id: int) -> Json:
    """Lead ``shard`` if nobody does; the answer says who leads either way."""
    key = leader_key(deployment_prefix, shard)
    absent = {"key": plan.b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    put = {
        "request_put": {"key": plan.b64(key), "value": plan.b64(me.value()), "lease": str(lease_id)}
    }
    return {"compare": [absent], "success": [put], "failure": [plan.range_op(key)]}


def campaign_result(answer: Json, me: Leader) -> tuple[bool, Leader | None]:
    """Whether a :func:`campaign_txn` won, and the leader after it (None: it went meanwhile;
    campaign again). Only a win is ours: a key naming ``me`` that was already there is on
    another lease (this replica before a restart): it is not ours, it expires with its lease."""
    if answer.get("succeeded"):
        return True, me
    found = plan.kvs(answer.get("responses", [{}])[0])
    return False, Leader.parse(plan.unb64(found[0]["value"])) if found else None


def fence(deployment_prefix: str, shard: str, lease_id: int) -> Json:
    """The compare that holds while ``shard``'s leader key is on ``lease_id`` (every write of
    the leader carries it: a replica that lost the lead cannot write)."""
    key = leader_key(deployment_prefix, shard)
    return {"key": plan.b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease_id)}


def resign_txn(deployment_prefix: str, shard: str, me: Leader) -> Json:
    """Delete the leader key if it is still ours (a clean stop: the standby need not wait for
    the lease to run out)."""
    key = leader_key(deployment_prefix, shard)
    mine = {
        "key": plan.b64(key),
        "target": "VALUE",
        "result": "EQUAL",
        "value": plan.b64(me.value()),
    }
    return {"compare": [mine], "success": [plan.delete_op(key)]}


def leaders(deployment_prefix: str, kvs: list[Json]) -> dict[str, Leader]:
    """Shard -> its leader, from the ``leaders/`` key-values."""
    start = len(deployment_prefix) + len(LEADERS)
    return {plan.unb64(kv["key"])[start:]: Leader.parse(plan.unb64(kv["value"])) for kv in kvs}


def apply_leaders(
    deployment_prefix: str, current: dict[str, Leader], events: list[plan.WatchEvent]
) -> dict[str, Leader]:
    return plan.apply_events(deployment_prefix + LEADERS, current, events, Leader.parse)


@dataclass(frozen=True, slots=True)
class Term:
    """A leader's hold on its lease: the lease, its TTL, and when the last renewal that etcd
    acknowledged was sent (monotonic seconds)."""

    lease_id: int
    ttl: float
    renewed_sent_at: float

    def renewal_due(self, now: float) -> float:
        """Seconds until the next renewal should be sent (0: now)."""
        return max(0.0, self.renewed_sent_at + self.ttl / 3 - now)

    def holds(self, now: float) -> bool:
        """Whether this replica may still act as the leader at ``now``."""
        return now < self.renewed_sent_at + self.ttl

    def renewed(self, sent_at: float, answer: Json) -> Term | None:
        """The term after a keepalive sent at ``sent_at`` answered ``answer`` (None: the lease
        is gone: etcd answers a lease it no longer has without a TTL)."""
        ttl = int(answer.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            return None
        return Term(self.lease_id, self.ttl, max(sent_at, self.renewed_sent_at))
