"""The shard directory: which controller owns which VPC, where it listens, shared keys.

Every shard reads the same file; with the etcd store its ``shards`` are kept in etcd, where
the file only seeds them (:func:`shared_shards`, docs/store.md, "The directory in etcd"),
and its secrets stay in the file. Hosts read the same
directory without its secrets (``grant_keys``, ``host_keys``, ``federation_token``: they
never leave the shards, docs/security.md) and without the shards' list of revoked hosts
(``revoked_hosts``), as a bootstrap: their shard publishes them the rest
(``meshpeer.protocol.directory``). A shard takes a changed file's host keys and revoked hosts while it
runs (:func:`credentials_update`); the rest needs a restart. A VPC's owner is
pinned in the file or else follows from a rendezvous hash of its name (``owner_of``), so new
VPCs need no edit. VNI ranges are disjoint per shard, so VNIs are unique across shards
without coordination.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshpeer.protocol.grants import KEY_ID_RE

VNI_MAX = (1 << 24) - 1
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class DirectoryError(ValueError):
    pass


@dataclass(frozen=True)
class Shard:
    name: str
    url: str  # REST base URL, e.g. https://169.254.1.10:8080
    vni_range: tuple[int, int]
    vpcs: tuple[str, ...]
    # Every replica's URL, ``url`` first (empty: one process): a host that loses its shard
    # tries the others, where one leads and a standby answers 503 (docs/store.md, "Replicas").
    replicas: tuple[str, ...] = ()


@dataclass(frozen=True)
class Directory:
    shards: Mapping[str, Shard]
    grant_keys: Mapping[str, bytes]  # key id -> HMAC key shared by every shard
    federation_token: str  # shards derive their federation credentials from it
    host_keys: Mapping[str, bytes] = dataclasses.field(default_factory=dict)  # host credentials
    revoked_hosts: frozenset[str] = frozenset()  # refused by every shard, whatever the key
    # With the etcd store: VPC -> the shard that claimed it (``<prefix>vpcs/``, learned by a
    # watch); ``claimed``: a VPC is created where it is claimed, not where its hash points.
    claims: Mapping[str, str] = dataclasses.field(default_factory=dict)
    claimed: bool = False

    def pinned_owner(self, vpc: str) -> str | None:
        return next((s.name for s in self.shards.values() if vpc in s.vpcs), None)

    def owner_of(self, vpc: str) -> str:
        """The shard that owns ``vpc``: the one that pins it (lists it under ``vpcs``), else
        the one that claimed it in etcd, else the highest rendezvous hash of (shard, VPC).
        Every shard and host computes the same answer from the same directory, so a VPC is
        created through the API alone, at its owner, with no file edit; adding a shard moves
        only the unpinned, unclaimed VPCs it now wins."""
        owner = self.pinned_owner(vpc) or self.claims.get(vpc)
        if owner is not None and owner in self.shards:
            return owner
        return max(self.shards, key=lambda shard: (_score(shard, vpc), shard))

    def creator_conflict(self, vpc: str, shard: str) -> str | None:
        """The shard other than ``shard`` that owns ``vpc`` so that ``shard`` may not create it
        (None: it may). With claims, any shard may create an unpinned, unclaimed VPC (its
        claim in etcd then decides); without, only the owner."""
        owner = self.pinned_owner(vpc) or self.claims.get(vpc)
        if owner is None and not self.claimed:
            owner = self.owner_of(vpc)
        return None if owner in (None, shard) else owner

    def url_of(self, vpc: str) -> str:
        return self.shards[self.owner_of(vpc)].url

    def replica_urls(self, url: str) -> tuple[str, ...]:
        """The URLs of the shard that ``url`` is a replica of, the directory's ``url`` first
        (``(url,)``: a shard of one process, or a URL of no shard here)."""
        for s in self.shards.values():
            if url == s.url or url in s.replicas:
                return (s.url, *(r for r in s.replicas if r != s.url))
        return (url,)

    def canonical_url(self, url: str) -> str:
        """The directory's URL of the shard ``url`` is a replica of (a peering names where the
        peer's shard leads now; a host keeps following it under one name)."""
        return self.replica_urls(url)[0]

    @property
    def signing_key_id(self) -> str:
        """The newest key mints; every listed key still verifies (rotation)."""
        return sorted(self.grant_keys)[-1]


def _score(shard: str, vpc: str) -> int:
    digest = hashlib.blake2b(f"{shard}\0{vpc}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


SECRETS = ("grant_keys", "host_keys", "federation_token")
SHARD_ONLY = (*SECRETS, "revoked_hosts")  # what hosts' copies leave out


def parse_directory(raw: object, *, secrets: bool = True) -> Directory:
    """Validate a loaded directory document; raise DirectoryError naming the field.

    ``secrets=False`` (a host's copy): :data:`SHARD_ONLY` keys are neither needed nor kept."""
    if not isinstance(raw, Mapping):
        raise DirectoryError("directory: expected a mapping")
    unknown = set(raw) - {"shards", *SHARD_ONLY}
    if unknown:
        raise DirectoryError(f"directory.{sorted(unknown)[0]}: unknown key")
    shards = parse_shards(raw.get("shards"))
    if not secrets:
        return Directory(shards, {}, "")
    keys = _keys(raw.get("grant_keys"), "grant_keys")
    host_keys = _keys(raw["host_keys"], "host_keys") if "host_keys" in raw else {}
    token = raw.get("federation_token")
    if not isinstance(token, str) or len(token) < 16:
        raise DirectoryError("federation_token: a string of at least 16 characters")
    return Directory(shards, keys, token, host_keys, _revoked(raw.get("revoked_hosts", [])))


def parse_shards(shards_raw: object) -> dict[str, Shard]:
    """The directory's ``shards`` (a file's, or etcd's: :func:`shared_shards`), checked
    together: VPCs pinned once, VNI ranges disjoint, each replica URL in one shard."""
    if not isinstance(shards_raw, Mapping) or not shards_raw:
        raise DirectoryError("shards: expected a non-empty mapping of shard name to settings")
    shards: dict[str, Shard] = {}
    owners: dict[str, str] = {}
    ranges: list[tuple[int, int, str]] = []
    replica_of: dict[str, str] = {}  # a replica's URL -> its shard
    for name, s in shards_raw.items():
        shards[name] = shard = _shard(name, s)
        for r in shard.replicas:
            if replica_of.setdefault(r, name) != name:
                raise DirectoryError(
                    f"shards.{name}.replicas: {r} is a replica of shard {replica_of[r]!r} too"
                )
        for vpc in shard.vpcs:
            if vpc in owners:
                raise DirectoryError(
                    f"shards.{name}.vpcs: VPC {vpc!r} already owned by {owners[vpc]!r}"
                )
            owners[vpc] = name
        ranges.append((*shard.vni_range, name))
    ranges.sort()
    for (_, hi, a), (lo, _, b) in itertools.pairwise(ranges):
        if lo <= hi:
            raise DirectoryError(f"shards.{b}.vni_range: overlaps the range of shard {a!r}")
    return shards


def shard_doc(s: Shard) -> dict[str, Any]:
    """A shard's entry as a directory document holds it (the file's, and etcd's value)."""
    doc: dict[str, Any] = {"url": s.url, "vni_range": list(s.vni_range)}
    if s.vpcs:
        doc["vpcs"] = list(s.vpcs)
    if s.replicas:
        doc["replicas"] = list(s.replicas)
    return doc


def shared_shards(texts: Mapping[str, str], shard: str) -> dict[str, Shard]:
    """The shards of the directory kept in etcd (``<prefix>directory/shards/<name>``: name ->
    the value's text, JSON as :func:`shard_doc` makes it), checked as a file's are, and that
    they still list ``shard`` (the one reading them); DirectoryError naming the entry."""
    docs: dict[str, object] = {}
    for name, text in texts.items():
        try:
            docs[name] = json.loads(text)
        except ValueError as exc:
            raise DirectoryError(f"shards.{name}: not JSON ({exc})") from None
    shards = parse_shards(docs)
    if shard not in shards:
        raise DirectoryError(f"shards.{shard}: absent (the shard reading it is not listed)")
    return shards


def _revoked(raw: object) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(h, str) and _NAME.match(h) for h in raw):
        raise DirectoryError("revoked_hosts: expected a list of host names")
    return frozenset(raw)


def public_doc(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A directory document without its secrets and revocations: the copy hosts get."""
    return {k: v for k, v in raw.items() if k not in SHARD_ONLY}


RELOADED = ("host_keys", "revoked_hosts")  # what a running shard takes from a changed file


def credentials_update(running: Directory, loaded: Directory) -> tuple[Directory, list[str]]:
    """``running`` with ``loaded``'s host keys and revoked hosts, and the other fields that
    differ (those need a restart: VPC owners, URLs and grant keys must change at every shard
    together)."""
    updated = dataclasses.replace(
        running, host_keys=loaded.host_keys, revoked_hosts=loaded.revoked_hosts
    )
    ignored = [
        f.name
        for f in dataclasses.fields(Directory)
        if f.name not in RELOADED and getattr(running, f.name) != getattr(loaded, f.name)
    ]
    return updated, ignored


def _keys(keys_raw: object, field: str) -> dict[str, bytes]:
    if not isinstance(keys_raw, Mapping) or not keys_raw:
        raise DirectoryError(f"{field}: expected a mapping of key id to hex key")
    keys: dict[str, bytes] = {}
    for kid, hexkey in keys_raw.items():
        if not KEY_ID_RE.fullmatch(str(kid)):  # a credential splits on "." (auth.identify)
            raise DirectoryError(f"{field}.{kid}: a key id is 1-64 of A-Z a-z 0-9 _ -")
        try:
            keys[str(kid)] = bytes.fromhex(str(hexkey))
        except ValueError as exc:
            raise DirectoryError(f"{field}.{kid}: not hex") from exc
        if len(keys[str(kid)]) < 32:
            raise DirectoryError(f"{field}.{kid}: at least 32 bytes (64 hex digits)")
    return keys


def _shard(name: object, s: Any) -> Shard:
    if not isinstance(name, str) or not _NAME.match(name):
        raise DirectoryError(f"shards.{name}: bad shard name")
    p = f"shards.{name}"
    if not isinstance(s, Mapping):
        raise DirectoryError(f"{p}: expected a mapping")
    unknown = set(s) - {"url", "vni_range", "vpcs", "replicas"}
    if unknown:
        raise DirectoryError(f"{p}.{sorted(unknown)[0]}: unknown key")
    url = s.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise DirectoryError(f"{p}.url: expected https://HOST:PORT (or http://)")
    vr = s.get("vni_range")
    if (
        not isinstance(vr, list)
        or len(vr) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in vr)
        or not 1 <= vr[0] <= vr[1] <= VNI_MAX
    ):
        raise DirectoryError(f"{p}.vni_range: expected [low, high] within 1..{VNI_MAX}")
    vpcs = s.get("vpcs", [])
    if not isinstance(vpcs, list) or not all(isinstance(v, str) and _NAME.match(v) for v in vpcs):
        raise DirectoryError(f"{p}.vpcs: expected a list of VPC names")
    replicas = s.get("replicas", [])
    if not isinstance(replicas, list) or not all(
        isinstance(r, str) and r.startswith(("http://", "https://")) for r in replicas
    ):
        raise DirectoryError(f"{p}.replicas: expected a list of https://HOST:PORT (or http://)")
    replicas = [r.rstrip("/") for r in replicas]
    twice = next((r for i, r in enumerate(replicas) if r in replicas[:i]), None)
    if twice is not None:  # a channel would rotate between fewer replicas than it thinks
        raise DirectoryError(f"{p}.replicas: {twice} listed twice")
    if replicas and url.rstrip("/") not in replicas:
        raise DirectoryError(f"{p}.replicas: lists every replica, the shard's url too")
    return Shard(name, url.rstrip("/"), (vr[0], vr[1]), tuple(vpcs), tuple(replicas))
