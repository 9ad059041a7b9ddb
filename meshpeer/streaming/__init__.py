"""Streaming transport of the subscription protocol on eventlet (see ``docs/protocol.md``).

- :mod:`.publisher`: :class:`StreamHub` (controller side): service logs, subscriber queues and
  the WSGI ``app_iter`` that writes NDJSON to each subscriber.
- :mod:`.channel`: :class:`Channel` (OHC and federation side): one connection per shard
  carrying many :class:`Subscription` s, each keeping its replica and resuming with ``since``.
- :mod:`.subscriber`: :class:`StreamClient`: one stream on its own connection (tools, tests).
"""

from meshpeer.protocol.messages import StreamId
from meshpeer.streaming.channel import Channel, Subscription
from meshpeer.streaming.publisher import (
    ChannelWriter,
    StreamHub,
    StreamStats,
    StreamWriter,
    ndjson_response,
)
from meshpeer.streaming.subscriber import StreamClient, TransportError

__all__ = [
    "Channel",
    "ChannelWriter",
    "StreamClient",
    "StreamHub",
    "StreamId",
    "StreamStats",
    "StreamWriter",
    "Subscription",
    "TransportError",
    "ndjson_response",
]
