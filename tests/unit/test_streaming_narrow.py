"""An on-demand host narrows its peer destination subscription again as pairs come and go
(``Subscription.set_only``): over a real loopback channel to a hub that narrows, the replica
is exactly the stream's objects of the new set each time, also across a reconnect (review
gw2, G5: the host-side re-narrowing had no test)."""

from __future__ import annotations

from typing import Any

from meshpeer.protocol import ServiceName
from meshpeer.streaming import StreamHub, StreamId
from meshpeer.streaming.channel import Channel, Subscription
from tests.unit.test_streaming import Recorder, Server, wait_until
from tests.unit.test_streaming_channels import channel, serve

PEER = StreamId(ServiceName.DESTINATION, "peer", "p-1", "hv1")  # as channel_app keys it


def dests(*names: str) -> dict[str, dict[str, Any]]:
    ips = {"a": "10.2.0.1", "b": "10.2.0.2", "c": "10.2.0.3"}
    return {n: {"ip": ips[n]} for n in names}


def narrowed_to_a(
    cleanup: list[Any],
) -> tuple[StreamHub, Server, Channel, Subscription]:
    """A hub with a, b, c and a subscription narrowed to a's address, holding a."""
    hub = StreamHub()
    hub.publish(PEER, dests("a", "b", "c"))
    server = serve(cleanup, hub)
    ch = channel(cleanup, server.url)
    sub = ch.subscription(
        PEER.service, PEER.key, policy="p-1", host="hv1", auth="g", on_change=Recorder().on_change
    )
    sub.narrow(frozenset({"10.2.0.1"}))
    sub.start()
    wait_until(lambda: dict(sub.replica.objects) == dests("a"))
    return hub, server, ch, sub


def test_renarrow_replaces_the_replica(cleanup: list[Any]) -> None:
    hub, _, _, sub = narrowed_to_a(cleanup)
    hub.publish(PEER, dests("a", "b"))  # c deleted: a delete of a filtered-out key
    wait_until(lambda: sub.version == 1)
    sub.set_only(frozenset({"10.2.0.1", "10.2.0.2"}))
    wait_until(lambda: dict(sub.replica.objects) == dests("a", "b"))
    sub.set_only(frozenset({"10.2.0.2"}))
    wait_until(lambda: dict(sub.replica.objects) == dests("b"))
    hub.publish(PEER, {"a": {"ip": "10.2.0.9"}, "b": {"ip": "10.2.0.1"}})  # b leaves, a stays out
    wait_until(lambda: sub.version == 2)
    assert dict(sub.replica.objects) == {}


def test_renarrow_while_down_then_resume(cleanup: list[Any]) -> None:
    hub, server, ch, sub = narrowed_to_a(cleanup)
    server.stop()
    wait_until(lambda: not ch.connected)
    sub.set_only(frozenset({"10.2.0.1", "10.2.0.3"}))
    hub.publish(PEER, dests("a", "c"))
    serve(cleanup, hub, port=server.port)
    wait_until(lambda: dict(sub.replica.objects) == dests("a", "c"))
