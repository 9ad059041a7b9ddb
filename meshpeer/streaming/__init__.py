"""Streaming transport of the subscription protocol on eventlet (see ``docs/protocol.md``).

- :mod:`.publisher`: :class:`StreamHub` (controller side): service logs, subscriber queues and
  the WSGI ``app_iter`` that writes NDJSON to each subscriber.
- :mod:`.subscriber`: :class:`StreamClient` (OHC side): one green thread per stream keeping a
  replica, reconnecting with ``since``.
"""

from meshpeer.protocol.messages import StreamId
from meshpeer.streaming.publisher import (
    StreamHub,
    StreamStats,
    StreamWriter,
    ndjson_response,
)
from meshpeer.streaming.subscriber import StreamClient, TransportError

__all__ = [
    "StreamClient",
    "StreamHub",
    "StreamId",
    "StreamStats",
    "StreamWriter",
    "TransportError",
    "ndjson_response",
]
