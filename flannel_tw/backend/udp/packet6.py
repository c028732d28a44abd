# -*- test-case-name: tests.unit.test_udp_packet6 -*-
"""
IPv6 header handling for the udp backend's data path (issue 15): flannel-tw's udp
backend carries inner IPv6 packets between flannel-tw hosts (flanneld's udp backend
cannot: it reads every packet as IPv4). The wire stays flanneld's: the UDP payload is the
raw inner packet, the outer packet IPv4 to the peer's PublicIP. Pure: no reactor.

Like L{flannel_tw.backend.udp.packet}, everything works on C{bytes}, C{bytearray} or
C{memoryview} without copying; only L{icmp6_no_route} allocates.
"""
from struct import pack_into, unpack_from

IPV6_HEADER = 40
IPPROTO_ICMPV6 = 58
ICMP6_DST_UNREACH = 1
ICMP6_NO_ROUTE = 0
ICMP6_REPLY_HOPS = 64
MIN_MTU = 1280               # an ICMPv6 error never makes a packet longer (RFC 4443 2.4(c))

SHORT = "short"
BAD_HEADER = "bad-header"


def check_ipv6(buf, length=None):
    """
    Validate an IPv6 header at the start of C{buf} (version 6 assumed checked).

    @param length: how many bytes of C{buf} belong to the packet (default len(buf)).
    @return: None when the header is usable, else C{"short"} (under 40 bytes) or
        C{"bad-header"} (not version 6, or the payload length runs past the data).
        A payload length of 0 is only a 40-byte packet: a jumbogram cannot cross an
        overlay with a 1472-byte MTU.
    """
    n = len(buf) if length is None else length
    if n < IPV6_HEADER:
        return SHORT
    if buf[0] >> 4 != 6:
        return BAD_HEADER
    if IPV6_HEADER + ((buf[4] << 8) | buf[5]) > n:
        return BAD_HEADER
    return None


def payload_length(buf) -> int:
    return (buf[4] << 8) | buf[5]


def src_ip6(buf) -> int:
    """The source address as an int (no validation; needs 40 bytes)."""
    hi, lo = unpack_from("!QQ", buf, 8)
    return (hi << 64) | lo


def dst_ip6(buf) -> int:
    """The destination address as an int (no validation; needs 40 bytes)."""
    hi, lo = unpack_from("!QQ", buf, 24)
    return (hi << 64) | lo


def decrement_hop_limit(buf) -> bool:
    """
    Decrement the hop limit of the IPv6 header at the start of the writable C{buf} in
    place (IPv6 has no header checksum).

    @return: False, leaving C{buf} untouched, when the hop limit is 0 or 1 (it would
        reach 0: the caller drops the packet); True otherwise.
    """
    hops = buf[7]
    if hops <= 1:
        return False
    buf[7] = hops - 1
    return True


def _no_error_to(addr: int) -> bool:
    """True for a source no ICMPv6 error may be sent to: unspecified or multicast."""
    return addr == 0 or addr >> 120 == 0xFF


def icmp6_no_route(offender, src_ip):
    """
    The ICMPv6 Destination Unreachable, code 0 (no route to destination) that the send
    path writes back into the TUN for an IPv6 packet it cannot route (the IPv6 form of
    flanneld's ICMP net-unreachable).

    The reply: hop limit 64, source C{src_ip} (our TUN's v6 address, an int),
    destination the offender's source; the ICMPv6 message (type 1, code 0, 4 unused
    bytes) quotes as much of the offender as fits in 1280 bytes. The checksum covers
    the pseudo-header.

    @return: the reply as C{bytes}, or None when no reply is due (RFC 4443 2.4(e)): the
        offender is malformed, is itself an ICMPv6 error message (type < 128, when
        ICMPv6 is its first next header), was sent to a multicast address, or comes
        from the unspecified or a multicast address.
    """
    if check_ipv6(offender) is not None:
        return None
    if offender[6] == IPPROTO_ICMPV6 and len(offender) > IPV6_HEADER \
            and offender[IPV6_HEADER] < 128:
        return None
    osrc = src_ip6(offender)
    if _no_error_to(osrc) or offender[24] == 0xFF:
        return None
    total = IPV6_HEADER + payload_length(offender)
    quoted = min(total, MIN_MTU - IPV6_HEADER - 8)
    icmp_len = 8 + quoted
    out = bytearray(IPV6_HEADER + icmp_len)
    pack_into("!IHBB", out, 0, 0x60000000, icmp_len, IPPROTO_ICMPV6, ICMP6_REPLY_HOPS)
    pack_into("!QQQQ", out, 8, src_ip >> 64, src_ip & 0xFFFFFFFFFFFFFFFF,
              osrc >> 64, osrc & 0xFFFFFFFFFFFFFFFF)
    out[40] = ICMP6_DST_UNREACH
    out[41] = ICMP6_NO_ROUTE
    out[48:48 + quoted] = offender[:quoted]
    pack_into("!H", out, 42, icmp6_checksum(out))
    return bytes(out)


def icmp6_checksum(pkt) -> int:
    """The ICMPv6 checksum of the IPv6 packet C{pkt} whose next header is ICMPv6 and
    whose checksum field (offset 42) is zero: the sum covers the pseudo-header
    (source, destination, upper-layer length, next header 58) and the message."""
    n = len(pkt) - IPV6_HEADER
    s = sum(unpack_from("!16H", pkt, 8)) + (n >> 16) + (n & 0xFFFF) + IPPROTO_ICMPV6
    words = n >> 1
    s += sum(unpack_from("!%dH" % words, pkt, IPV6_HEADER)) if words else 0
    if n & 1:
        s += pkt[-1] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
