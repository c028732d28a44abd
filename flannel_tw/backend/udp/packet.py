# -*- test-case-name: tests.unit.test_udp_packet -*-
"""
IPv4 header handling for the udp backend's data path (flannel-compat.md section 6).
Pure: no reactor, no sockets.

Everything here works on C{bytes}, C{bytearray} or C{memoryview} without copying
the packet; only L{icmp_net_unreachable} allocates (the reply it returns).
"""
from struct import pack_into, unpack_from

IPPROTO_ICMP = 1
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_REPLY_TTL = 8          # flanneld's proxy_amd64.c uses TTL 8 for its replies
IPV4_MIN_HEADER = 20

# Reasons returned by check_ipv4 (also the udp backend's drop counter names).
SHORT = "short"
NOT_IPV4 = "not-ipv4"
BAD_HEADER = "bad-header"


def check_ipv4(buf, length=None):
    """
    Validate an IPv4 header at the start of C{buf}.

    @param length: how many bytes of C{buf} belong to the packet (default len(buf)).
    @return: None when the header is usable, else the reason: C{"short"} (under 20
        bytes), C{"not-ipv4"} (version is not 4) or C{"bad-header"} (IHL < 5, the header
        longer than the data, or a total length below the header length or above the
        data).
    """
    n = len(buf) if length is None else length
    if n < IPV4_MIN_HEADER:
        return SHORT
    b0 = buf[0]
    if b0 >> 4 != 4:
        return NOT_IPV4
    hl = (b0 & 0x0F) << 2
    if hl < IPV4_MIN_HEADER or hl > n:
        return BAD_HEADER
    total = (buf[2] << 8) | buf[3]
    if total < hl or total > n:
        return BAD_HEADER
    return None


def header_length(buf) -> int:
    """IHL in bytes (no validation)."""
    return (buf[0] & 0x0F) << 2


def total_length(buf) -> int:
    """The total length field (no validation)."""
    return (buf[2] << 8) | buf[3]


def src_ip(buf) -> int:
    """Source address as an int (no validation; needs 20 bytes)."""
    return unpack_from("!I", buf, 12)[0]


def dst_ip(buf) -> int:
    """Destination address as an int (no validation; needs 20 bytes)."""
    return unpack_from("!I", buf, 16)[0]


def decrement_ttl(buf) -> bool:
    """
    Decrement the TTL of the IPv4 header at the start of the writable C{buf} in place
    and patch the header checksum incrementally (RFC 1624, eqn. 3:
    C{HC' = ~(~HC + ~m + m')}).

    @return: False, leaving C{buf} untouched, when the TTL is 0 or 1 (it would reach 0:
        the caller drops the packet); True otherwise.
    """
    ttl = buf[8]
    if ttl <= 1:
        return False
    proto = buf[9]
    m = (ttl << 8) | proto
    m2 = m - 0x100                      # the same 16-bit word with TTL - 1
    hc = (buf[10] << 8) | buf[11]
    s = (~hc & 0xFFFF) + (~m & 0xFFFF) + m2
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    hc = ~s & 0xFFFF
    buf[8] = ttl - 1
    buf[10] = hc >> 8
    buf[11] = hc & 0xFF
    return True


def ones_complement_sum(buf, start=0, end=None) -> int:
    """The folded 16-bit one's complement sum of C{buf[start:end]} (odd length padded)."""
    if end is None:
        end = len(buf)
    n = end - start
    words = n >> 1
    s = sum(unpack_from("!%dH" % words, buf, start)) if words else 0
    if n & 1:
        s += buf[end - 1] << 8
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def internet_checksum(buf, start=0, end=None) -> int:
    """The RFC 1071 checksum of C{buf[start:end]} (checksum field assumed zeroed)."""
    return ~ones_complement_sum(buf, start, end) & 0xFFFF


def icmp_net_unreachable(offender, src_ip):
    """
    Build the ICMP Destination Unreachable, code 0 (net unreachable) reply that flanneld
    writes back into the tun when it has no route for C{offender}.

    The reply's IP header: version 4, IHL 5, TOS 0, ID 0, no fragmentation, TTL 8,
    protocol ICMP, source C{src_ip} (the tun's .0 address), destination the offender's
    source. The ICMP message: type 3, code 0, 4 unused zero bytes, then the offender's
    IP header plus (up to) 8 bytes of its payload. Both checksums are filled in.

    @param offender: the packet that could not be routed (bytes-like).
    @param src_ip: our tun address as an int.
    @return: the reply as C{bytes}, or None when no reply is due: the offender is
        malformed (see L{check_ipv4}), is itself ICMP, is a non-first fragment, or
        comes from an address no reply can go to (0.0.0.0, multicast, class E or
        broadcast; RFC 1122 3.2.2).
    """
    if check_ipv4(offender) is not None:
        return None
    if offender[9] == IPPROTO_ICMP:
        return None
    if ((offender[6] << 8) | offender[7]) & 0x1FFF:      # fragment offset != 0
        return None
    osrc = unpack_from("!I", offender, 12)[0]
    if osrc == 0 or osrc >= 0xE0000000:
        return None
    hl = (offender[0] & 0x0F) << 2
    total = (offender[2] << 8) | offender[3]
    quoted = min(hl + 8, total)
    icmp_len = 8 + quoted
    reply_len = 20 + icmp_len
    out = bytearray(reply_len)
    pack_into("!BBHHHBBHII", out, 0,
              0x45, 0, reply_len, 0, 0, ICMP_REPLY_TTL, IPPROTO_ICMP, 0,
              src_ip & 0xFFFFFFFF, osrc)
    out[20] = ICMP_DEST_UNREACH
    out[21] = ICMP_NET_UNREACH
    out[28:28 + quoted] = offender[:quoted]
    pack_into("!H", out, 22, internet_checksum(out, 20, reply_len))
    pack_into("!H", out, 10, internet_checksum(out, 0, 20))
    return bytes(out)
