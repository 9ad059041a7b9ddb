"""What an OHC tells its shards and writes for its operators; best effort, never in a sync.

- registration: where this host's tunnel endpoint is (``PUT /v1/hosts/{name}``);
- applied reports: which stream versions the switch holds, for ``?wait=programmed`` (with
  the host's credential; to a peer's shard, each stream also with its grant);
- status reports: how the host stands (``PUT /v1/hosts/{name}/status``, docs/api.md);
- the status file (tests and operators wait on ``last_sync.applied``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from eventlet.greenpool import GreenPool

from meshpeer.client import ApiFailure, Client
from meshpeer.protocol.gateways import DEFAULT_ROLE
from meshpeer.protocol.messages import stream_name
from ohc.agent import Agent
from ohc.subscriptions import Sub

log = logging.getLogger(__name__)
T = TypeVar("T")
TIMEOUT = 2.0  # seconds per report: a slow shard delays only the next report


def synced_versions(versions: Mapping[Sub, int]) -> dict[str, dict[str, int]]:
    """Shard URL -> stream name -> the version a sync put on the switch, for the status file.
    The applied reports to the shards may say less: they hold a peering stream back until its
    peers' services are in (``agent.applied_versions``)."""
    out: dict[str, dict[str, int]] = {}
    for sub, version in sorted(versions.items(), key=lambda kv: kv[0].sort_key()):
        out.setdefault(sub.url, {})[stream_name(sub.service, sub.key, sub.policy, sub.host)] = (
            version
        )
    return out


class Reporter:
    def __init__(
        self,
        host: str,
        underlay_ip: str,
        api_token: str,
        agent: Agent,
        ca_file: str | None = None,
        role: str = DEFAULT_ROLE,
        replicas: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        """``ca_file``: verifies the shards' certificates (https:// URLs); ``role``: what the
        host registers as (hypervisor or gateway, docs/gateways.md); ``replicas``: a shard's
        URL to every replica's (a report goes to the one that leads)."""
        self.host = host
        self.replicas = replicas or (lambda url: (url,))
        self.leading: dict[str, str] = {}  # a shard's URL -> the replica that last answered
        self.role = role
        self.underlay_ip = underlay_ip
        self.api_token = api_token
        self.agent = agent
        self.ca_file = ca_file

    def register(self, url: str) -> None:
        """Tell one shard where this host's tunnel endpoint is, and its role; raises if it
        did not answer."""
        self._to_leader(
            url,
            self.api_token,
            f"/v1/hosts/{self.host}",
            {"underlay_ip": self.underlay_ip, "role": self.role},
        )

    def applied(
        self, versions: Mapping[Sub, int], objects: Mapping[Sub, Mapping[str, Any]]
    ) -> list[str]:
        """Report to each shard which of its stream versions the switch holds; the failures."""
        reports = self.agent.applied_reports(versions, objects)

        def send(url: str) -> str | None:
            path = f"/v1/hosts/{self.host}/applied"
            return self._put(url, self.api_token, path, {"streams": reports[url]}, "applied report")

        return [f for f in _each(sorted(reports), send) if f is not None]

    def status(self, body: Mapping[str, Any]) -> None:
        """Tell the host's own shards how it stands (the host's credential)."""
        path = f"/v1/hosts/{self.host}/status"
        _each(
            self.agent.shard_urls,
            lambda url: self._put(url, self.api_token, path, body, "status report"),
        )

    def offload(self, url: str, body: Mapping[str, Any]) -> Any:
        """Report an on-demand side's busy pairs to its VPC's own shard; the answer carries
        the grant for them (docs/protocol.md "Offload grants"). Raises if none took it."""
        return self._to_leader(url, self.api_token, f"/v1/hosts/{self.host}/offload", body)

    def _put(
        self, url: str, token: str | None, path: str, body: Mapping[str, Any], what: str
    ) -> str | None:
        try:
            self._to_leader(url, token, path, body)
            return None
        except Exception as exc:
            log.info("ohc %s: %s to %s failed: %s", self.host, what, url, exc)
            return f"{what} to {url} failed: {exc}"

    def _to_leader(self, url: str, token: str | None, path: str, body: Mapping[str, Any]) -> Any:
        """PUT at the shard's replica that answered last, else at each other in turn (a
        standby answers 503); raises the last failure if none took it. Any other refusal
        (403, 409..) is the leader's and is raised at once: the others are standbys."""
        urls = list(self.replicas(url))
        last = self.leading.get(url)
        if last in urls:
            urls.remove(last)
            urls.insert(0, last)
        failure: Exception | None = None
        for u in urls:
            try:
                answer = Client(u, token, timeout=TIMEOUT, ca_file=self.ca_file).put(path, body)
            except ApiFailure as exc:
                if exc.status != 503:  # the leader's verdict, not a standby's 503 (review s6)
                    self.leading[url] = u
                    raise
                failure = exc
                continue
            except Exception as exc:
                failure = exc
                continue
            self.leading[url] = u
            return answer
        assert failure is not None
        raise failure


def _each(urls: Iterable[str], send: Callable[[str], T]) -> list[T]:
    """``send`` to every shard at once, so that one that does not answer (a partition: each
    try waits TIMEOUT) does not hold back the reports to the others (the chaos suite saw
    `?wait=programmed` answer seconds late at a reachable shard)."""
    return list(GreenPool().imap(send, urls))


def write_status_file(path: str, doc: Mapping[str, Any]) -> None:
    """Replace the status file at once (readers never see half of it)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
