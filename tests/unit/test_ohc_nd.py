"""The IPv6 neighbour responder (ohc/nd.py), checked byte by byte against RFC 4861.

Frames are built with os-ken's packet library as a VM's kernel would send them, after the
nd_target flow rewrote eth_dst to the target's MAC. The answer is decoded by hand (struct),
including its ICMPv6 checksum over the IPv6 pseudo-header, so a bug shared with os-ken's
serializer would still show.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

from ohc.nd import advertisement

ASKER_MAC, TARGET_MAC = "02:00:00:00:00:11", "02:6d:70:00:03:e8"
ASKER, TARGET = "fd00:1::11", "fd00:1::1"


def solicitation(
    src: str = ASKER, target: str = TARGET, hop_limit: int = 255, type_: int = 135
) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=TARGET_MAC, src=ASKER_MAC, ethertype=0x86DD))
    pkt.add_protocol(ipv6.ipv6(src=src, dst="ff02::1:ff00:1", nxt=58, hop_limit=hop_limit))
    option = icmpv6.nd_option_sla(hw_src=ASKER_MAC)
    pkt.add_protocol(icmpv6.icmpv6(type_=type_, data=icmpv6.nd_neighbor(dst=target, option=option)))
    pkt.serialize()
    return bytes(pkt.data)


def mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def decode(frame: bytes) -> dict[str, object]:
    dst, src, ethertype = frame[0:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    ip6 = frame[14:54]
    payload_len, nxt, hlim = struct.unpack("!HBB", ip6[4:8])
    ip_src, ip_dst = ip6[8:24], ip6[24:40]
    icmp = frame[54 : 54 + payload_len]
    pseudo = ip_src + ip_dst + struct.pack("!IxxxB", payload_len, nxt)
    type_, code, _csum, flags = struct.unpack("!BBHI", icmp[:8])
    target = icmp[8:24]
    opt_type, opt_len = icmp[24], icmp[25]
    return {
        "eth_dst": mac(dst),
        "eth_src": mac(src),
        "ethertype": ethertype,
        "hop_limit": hlim,
        "ip_src": str(ipaddress.IPv6Address(ip_src)),
        "ip_dst": str(ipaddress.IPv6Address(ip_dst)),
        "type": type_,
        "code": code,
        "checksum_ok": checksum(pseudo + icmp) == 0xFFFF,
        "flags": flags >> 29,  # R, S, O
        "target": str(ipaddress.IPv6Address(target)),
        "option": (opt_type, opt_len, mac(icmp[26:32])),
    }


def test_a_gateway_answers_as_a_router_from_the_target_to_the_asker() -> None:
    reply = advertisement(solicitation(), router=True)
    assert reply is not None
    assert decode(reply) == {
        "eth_dst": ASKER_MAC,
        "eth_src": TARGET_MAC,
        "ethertype": 0x86DD,
        "hop_limit": 255,
        "ip_src": TARGET,
        "ip_dst": ASKER,
        "type": 136,
        "code": 0,
        "checksum_ok": True,
        "flags": 0b111,
        "target": TARGET,
        "option": (2, 1, TARGET_MAC),  # target link-layer address, 8 bytes
    }


def test_an_endpoint_answers_solicited_and_override_without_the_router_flag() -> None:
    reply = advertisement(solicitation(target="fd00:1::13"), router=False)
    assert reply is not None
    got = decode(reply)
    assert got["flags"] == 0b011 and got["target"] == "fd00:1::13" and got["checksum_ok"]


@pytest.mark.parametrize(
    "frame",
    [
        solicitation(src="::"),  # duplicate address detection
        solicitation(hop_limit=64),  # not from the link
        solicitation(target="ff02::1"),
        solicitation(type_=136),  # an advertisement, not a solicitation
        solicitation()[:40],  # truncated
        b"",
    ],
    ids=["dad", "hop-limit", "multicast-target", "not-a-solicitation", "truncated", "empty"],
)
def test_anything_but_a_valid_solicitation_gets_no_answer(frame: bytes) -> None:
    assert advertisement(frame, router=True) is None
