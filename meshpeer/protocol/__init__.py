"""Sans-I/O subscription protocol shared by controllers (publishers) and OHCs (subscribers).

- :mod:`.messages`: message types, service names, the subscribe request and its parser.
- :mod:`.codec`: NDJSON encode / incremental decode with validation of untrusted input.
- :mod:`.stream`: publisher log and bounded subscriber queue, subscriber replica, heartbeat timing.
- :mod:`.grants`: minting and verifying subscription grants (HMAC-SHA256, rotating key ids).
- :mod:`.objects`, :mod:`.peering`: the services' objects, one type each for the shard that
  writes them and the OHC that parses them.

See ``docs/protocol.md``.
"""

from meshpeer.protocol.codec import Decoder, encode
from meshpeer.protocol.grants import Grant, GrantError, Rejection, mint, verify
from meshpeer.protocol.messages import (
    Close,
    CloseReason,
    Delta,
    ErrorMsg,
    Heartbeat,
    JsonObject,
    Message,
    ProtocolError,
    ServiceName,
    Snapshot,
    SubscribeRequest,
    parse_subscribe_request,
)
from meshpeer.protocol.stream import (
    Outcome,
    ReplicaState,
    ServiceLog,
    SubscriberQueue,
    heartbeat_due,
    peer_dead,
)

__all__ = [
    "Close",
    "CloseReason",
    "Decoder",
    "Delta",
    "ErrorMsg",
    "Grant",
    "GrantError",
    "Heartbeat",
    "JsonObject",
    "Message",
    "Outcome",
    "ProtocolError",
    "Rejection",
    "ReplicaState",
    "ServiceLog",
    "ServiceName",
    "Snapshot",
    "SubscribeRequest",
    "SubscriberQueue",
    "encode",
    "heartbeat_due",
    "mint",
    "parse_subscribe_request",
    "peer_dead",
    "verify",
]
