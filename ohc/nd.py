"""The IPv6 neighbour responder: a solicitation in, the advertisement that answers it out.

Pure (bytes in, bytes out) on os-ken's packet library. The ``nd_target`` flow (see
docs/pipeline.md) sends a neighbour solicitation for a known address of the VPC to the OHC
with eth_dst rewritten to the target's MAC, so nothing here needs the OHC's state: the answer
says "``target`` is at ``eth_dst``" to the asker, from the target. ARP is answered in the
switch; neighbour discovery is not, because OpenFlow 1.3's OXM fields can neither change the
option type (source to target link-layer address) nor set the advertisement's flags (OVS has
extension fields for both, which os-ken does not encode).
"""

from __future__ import annotations

import ipaddress

from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

ND_HOP_LIMIT = 255  # RFC 4861 7.1.1: anything else did not come from the link
FLAG_ROUTER, FLAG_SOLICITED, FLAG_OVERRIDE = 0b100, 0b010, 0b001  # os-ken's ``res``


def advertisement(frame: bytes, router: bool) -> bytes | None:
    """The neighbour advertisement answering ``frame``, or None when ``frame`` is not a valid
    solicitation from an address (duplicate address detection, from ``::``, gets no answer:
    the address it probes is known to belong to someone)."""
    try:
        pkt = packet.Packet(frame)
    except Exception:  # os-ken raises assorted errors on truncated or odd frames
        return None
    eth = pkt.get_protocol(ethernet.ethernet)
    ip6 = pkt.get_protocol(ipv6.ipv6)
    icmp = pkt.get_protocol(icmpv6.icmpv6)
    if eth is None or ip6 is None or icmp is None:
        return None
    ns = icmp.data
    if icmp.type_ != icmpv6.ND_NEIGHBOR_SOLICIT or not isinstance(ns, icmpv6.nd_neighbor):
        return None
    asker, target = ipaddress.IPv6Address(ip6.src), ipaddress.IPv6Address(ns.dst)
    if ip6.hop_limit != ND_HOP_LIMIT or asker.is_unspecified or target.is_multicast:
        return None
    flags = FLAG_SOLICITED | FLAG_OVERRIDE | (FLAG_ROUTER if router else 0)
    reply = packet.Packet()
    reply.add_protocol(ethernet.ethernet(dst=eth.src, src=eth.dst, ethertype=0x86DD))
    reply.add_protocol(ipv6.ipv6(src=str(target), dst=str(asker), nxt=58, hop_limit=ND_HOP_LIMIT))
    reply.add_protocol(
        icmpv6.icmpv6(
            type_=icmpv6.ND_NEIGHBOR_ADVERT,
            data=icmpv6.nd_neighbor(
                res=flags, dst=str(target), option=icmpv6.nd_option_tla(hw_src=eth.dst)
            ),
        )
    )
    reply.serialize()
    return bytes(reply.data)
