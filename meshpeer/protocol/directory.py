"""The directory service's objects: the shard directory's public part, which a shard publishes
to its hosts so that they learn every shard from their own (docs/protocol.md, "Directory").

One stream, ``directory/shards``, shared by every subscriber; one object per shard, keyed by
the shard's name, as the directory file (or etcd's directory) lists it: ``url``,
``vni_range``, and ``vpcs`` and ``replicas`` when it has any; its ``vpcs`` are the VPCs it
owns by name: those it pins, then those it claimed in etcd (:meth:`PublicDirectory.of`), so a
host's ``Directory.owner_of`` finds the shard's answer without knowing claims. Never a secret: the object has
no field for one (``grant_keys``, ``host_keys``, ``federation_token`` and ``revoked_hosts``
stay in the shards' file), and a field the directory does not know is refused.

The objects are checked together, as a directory file's ``shards`` are
(``meshpeer.directory.parse_shards``: names, URLs, ranges disjoint, a VPC pinned once, a
replica URL in one shard): a set that does not check out is refused whole (``BadDirectory``
naming the entry's field), and the host keeps the directory it runs with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from meshpeer.directory import DirectoryError, Shard, parse_shards, shard_doc
from meshpeer.protocol.messages import JsonObject, ProtocolError, ServiceName, StreamId

DIRECTORY_KEY = "shards"
DIRECTORY_STREAM = StreamId(ServiceName.DIRECTORY, DIRECTORY_KEY)


class BadDirectory(ProtocolError):
    """Published directory objects that cannot be used: ``field`` names the entry's field
    (``shards.ctl3.vni_range``)."""


@dataclass(frozen=True)
class PublicDirectory:
    """The shards of the directory, as a shard publishes them (by name)."""

    shards: Mapping[str, Shard]

    @classmethod
    def of(cls, shards: Mapping[str, Shard], claims: Mapping[str, str]) -> PublicDirectory:
        """``shards`` as listed, each one's ``vpcs`` followed by the VPCs it claimed
        (``claims``: VPC -> shard, etcd's; sorted), as ``Directory.owner_of`` decides: a claim
        on a VPC some shard pins is left out (the pin wins), and so is a claim by a shard not
        listed (its VPC follows its hash)."""
        pinned = {vpc for s in shards.values() for vpc in s.vpcs}
        claimed: dict[str, list[str]] = {}
        for vpc, owner in sorted(claims.items()):
            if owner in shards and vpc not in pinned:
                claimed.setdefault(owner, []).append(vpc)
        return cls(
            {
                name: replace(s, vpcs=(*s.vpcs, *claimed[name])) if name in claimed else s
                for name, s in shards.items()
            }
        )

    def to_json(self) -> dict[str, JsonObject]:
        """The stream's objects: each shard's entry, as the directory file writes it."""
        return {name: shard_doc(s) for name, s in sorted(self.shards.items())}

    @classmethod
    def parse(cls, objects: object, listing: str | None = None) -> PublicDirectory:
        """The objects of a ``directory`` stream, checked as a directory file's ``shards``;
        ``listing``: a shard they must list (the one a host learns the directory from).
        Raises BadDirectory naming the field."""
        if not isinstance(objects, Mapping):
            raise BadDirectory("objects", "must be an object of shard name to entry")
        try:
            shards = parse_shards(objects)
        except DirectoryError as exc:
            field, _, detail = str(exc).partition(": ")
            raise BadDirectory(field, detail) from None
        if listing is not None and listing not in shards:
            raise BadDirectory(
                f"shards.{listing}", "absent (the shard publishing it is not listed)"
            )
        return cls(shards)
