# -*- test-case-name: tests.unit.test_offload, tests.unit.test_udp_ipv6_offload -*-
"""
The virtio-net header that a TUN opened with IFF_VNET_HDR puts before each packet
(10 bytes, little-endian: TUNSETVNETLE), and what the udp backend does with it. Pure
helpers: no reactor, no sockets.

L{parse_vnet}/L{build_vnet} read and write the header; L{check_vnet} checks a header
from the network against the packet it describes before it reaches the TUN (the kernel
would otherwise act on a header that lies: segment a UDP packet as TCP, cut 64 KB into
one-byte segments, write a checksum into the IP header), and the sender applies the
same check to the kernel's super-packets. Towards a peer that does not speak the
offloaded wire (L{flannel_tw.backend.udp.offload}), L{finish_checksum} completes a
partial checksum and L{segment_tcp4} / L{segment_tcp6} cut a TCP super-packet into
MTU-sized IPv4 / IPv6 packets in user space.

IPv6 (issue 15): TCPv6 super-packets (GSO_TCPV6, the TUN opened with TUN_F_TSO6) travel
as frames between offloading flannel-tw hosts and are cut up here for any other peer,
as TCPv4 ones are; an IPv6 header here has no extension headers (the kernel's TCP
super-packets have none; a frame with one is refused).
"""
from struct import pack_into, unpack_from

from flannel_tw.backend.udp.packet import check_ipv4
from flannel_tw.backend.udp.packet6 import check_ipv6

VNET_HDR_LEN = 10
VNET_FMT = "<BBHHHH"          # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

# check_vnet's bounds on a GSO packet: no segment shorter than MIN_GSO_SIZE bytes of
# payload (gso_size 1 would have the receiving kernel cut 64 KB into 65,000 packets),
# at most MAX_GSO_SEGMENTS segments (UDP_MAX_SEGMENTS for UDP).
MIN_GSO_SIZE = 64
MAX_GSO_SEGMENTS = 1024
UDP_MAX_SEGMENTS = 64
BAD_OFFLOAD = "bad-offload"
_CSUM_FLAGS = F_NEEDS_CSUM | F_DATA_VALID
_TCP, _UDP = 6, 17
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


def parse_vnet(buf, off=0):
    """C{(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)} at C{buf[off:]}."""
    return unpack_from(VNET_FMT, buf, off)


def build_vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0,
               csum_offset=0) -> bytes:
    out = bytearray(VNET_HDR_LEN)
    pack_into(VNET_FMT, out, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return bytes(out)


def check_vnet(buf, off, n, mtu):
    """
    Check a received frame: the virtio-net header at C{buf[off:off+10]} must describe
    the IPv4 packet of C{n} bytes after it exactly, as the kernel would write it,
    before the frame goes into a TUN.

      - the packet: a sane IPv4 header (L{check_ipv4}) whose total length is C{n}, or
        an IPv6 header (L{check_ipv6}) whose payload length is C{n} - 40, its next
        header the L4 protocol (no extension headers with NEEDS_CSUM or GSO);
      - flags: only NEEDS_CSUM and DATA_VALID;
      - NEEDS_CSUM: a TCP or UDP packet, not a fragment, its L4 header inside the
        packet, C{csum_start} the IP header length and C{csum_offset} the L4 checksum
        field (16 for TCP, 6 for UDP); without it both are 0;
      - gso_type: NONE (then C{hdr_len} and C{gso_size} are 0), TCPV4 on TCP (ECN bit
        allowed; TCPV6 for IPv6) or UDP_L4 on IPv4 UDP (its length field C{n} minus
        the IP header); GSO
        needs NEEDS_CSUM, C{hdr_len} at most C{n}, C{gso_size} at least
        L{MIN_GSO_SIZE} with every segment fitting C{mtu}, and at most
        L{MAX_GSO_SEGMENTS} segments (L{UDP_MAX_SEGMENTS} for UDP). Anything else
        (legacy UFO, TCPV6 on IPv4 or TCPV4 on IPv6, unknown types) is refused: no
        flannel-tw sender makes it.

    Pure; reads only the 10 + C{n} bytes.

    @param mtu: the TUN MTU (the segments the kernel cuts must fit it).
    @return: None when the frame may be written; C{check_ipv4}'s reason for a bad
        IPv4 header; L{BAD_OFFLOAD} for a header that does not match its packet.
    """
    ip = off + VNET_HDR_LEN
    v6 = n >= 1 and buf[ip] >> 4 == 6
    if v6:
        reason = check_ipv6(memoryview(buf)[ip:ip + n], n)
    else:
        reason = check_ipv4(memoryview(buf)[ip:ip + n], n) if n >= 20 else "short"
    if reason is not None:
        return reason
    flags, gso, hdr_len, gso_size, cstart, coff = unpack_from(VNET_FMT, buf, off)
    if v6:
        if flags & ~_CSUM_FLAGS or 40 + (buf[ip + 4] << 8 | buf[ip + 5]) != n:
            return BAD_OFFLOAD
        hl = 40
        proto = buf[ip + 6]             # no extension headers: TCP or UDP, or refused
        fragment = False
    else:
        if flags & ~_CSUM_FLAGS or (buf[ip + 2] << 8 | buf[ip + 3]) != n:
            return BAD_OFFLOAD
        hl = (buf[ip] & 0x0F) << 2
        proto = buf[ip + 9]
        fragment = (buf[ip + 6] << 8 | buf[ip + 7]) & 0x3FFF        # MF or offset
    if flags & F_NEEDS_CSUM:
        if cstart != hl or fragment:
            return BAD_OFFLOAD
        if proto == _TCP:
            if coff != 16 or hl + 20 > n:
                return BAD_OFFLOAD
            l4 = (buf[ip + hl + 12] >> 4) << 2
            if l4 < 20 or hl + l4 > n:
                return BAD_OFFLOAD
        elif proto == _UDP:
            if coff != 6 or hl + 8 > n:
                return BAD_OFFLOAD
            l4 = 8
        else:
            return BAD_OFFLOAD
    elif cstart or coff:
        return BAD_OFFLOAD
    if gso == GSO_NONE:
        return BAD_OFFLOAD if hdr_len or gso_size else None
    if not flags & F_NEEDS_CSUM or hdr_len > n:
        return BAD_OFFLOAD
    g = gso & ~GSO_ECN
    if g == (GSO_TCPV6 if v6 else GSO_TCPV4):
        if proto != _TCP:
            return BAD_OFFLOAD
        most = MAX_GSO_SEGMENTS
    elif gso == GSO_UDP_L4 and not v6:      # no ECN bit with UDP; no UDP GSO over IPv6
        if proto != _UDP or (buf[ip + hl + 4] << 8 | buf[ip + hl + 5]) != n - hl:
            return BAD_OFFLOAD
        most = UDP_MAX_SEGMENTS
    else:
        return BAD_OFFLOAD
    if gso_size < MIN_GSO_SIZE or hl + l4 + gso_size > mtu:
        return BAD_OFFLOAD
    if n - hl - l4 > most * gso_size:
        return BAD_OFFLOAD
    return None


def csum_add(buf, start, end, acc=0):
    """
    C{acc} plus the big-endian 16-bit words of C{buf[start:end]}, modulo 0xFFFF (the
    one's complement sum, unfolded: 2**16 == 1 mod 0xFFFF, so one big integer does it).
    An odd last byte is padded with zero.
    """
    n = end - start
    if n & 1:
        end -= 1
        acc += buf[end] << 8
    if end > start:
        acc += int.from_bytes(buf[start:end], "big")
    return acc % 0xFFFF


def finish_checksum(buf, ip_off, n, csum_start, csum_offset):
    """
    Complete a partial (CHECKSUM_PARTIAL) checksum in place: the field at
    C{csum_start + csum_offset} holds the pseudo-header sum; add everything from
    C{csum_start} to the end of the packet and store the complement.
    """
    start = ip_off + csum_start
    field = start + csum_offset
    s = csum_add(buf, start, ip_off + n)
    c = ~s & 0xFFFF
    if c == 0 and buf[ip_off + 9] == 17:   # UDP: 0 means "no checksum"
        c = 0xFFFF
    buf[field] = c >> 8
    buf[field + 1] = c & 0xFF


def _ip_checksum(hdr, hl):
    hdr[10] = hdr[11] = 0
    c = ~csum_add(hdr, 0, hl) & 0xFFFF
    hdr[10] = c >> 8
    hdr[11] = c & 0xFF


def segment_tcp4(buf, ip_off, n, gso_size):
    """
    Cut the IPv4/TCP super-packet C{buf[ip_off:ip_off+n]} into packets of at most
    C{gso_size} payload bytes, as the kernel's tcp_gso_segment does: the same headers,
    IP ID counting up, sequence numbers advanced, FIN and PSH only on the last segment,
    CWR only on the first, and both checksums computed in full.

    @return: a list of C{bytearray} packets (one when the payload fits a segment).
    """
    hl = (buf[ip_off] & 0x0F) << 2
    tcp = ip_off + hl
    thl = (buf[tcp + 12] >> 4) << 2
    data = tcp + thl
    end = ip_off + n
    ipid = (buf[ip_off + 4] << 8) | buf[ip_off + 5]
    seq = unpack_from("!I", buf, tcp + 4)[0]
    flags = buf[tcp + 13]
    pseudo = (int.from_bytes(buf[ip_off + 12:ip_off + 20], "big") + 6)   # src, dst, proto
    head = bytearray(buf[ip_off:data])
    out = []
    pos = data
    k = 0
    while True:
        chunk_end = min(pos + gso_size, end) if gso_size else end
        seg = head + buf[pos:chunk_end]
        total = len(seg)
        seg[2] = total >> 8
        seg[3] = total & 0xFF
        i = (ipid + k) & 0xFFFF
        seg[4] = i >> 8
        seg[5] = i & 0xFF
        _ip_checksum(seg, hl)
        pack_into("!I", seg, hl + 4, (seq + (pos - data)) & 0xFFFFFFFF)
        f = flags
        if chunk_end < end:
            f &= ~(_FIN | _PSH)
        if k:
            f &= ~_CWR
        seg[hl + 13] = f
        seg[hl + 16] = seg[hl + 17] = 0
        c = ~csum_add(seg, hl, total, pseudo + total - hl) & 0xFFFF
        seg[hl + 16] = c >> 8
        seg[hl + 17] = c & 0xFF
        out.append(seg)
        k += 1
        pos = chunk_end
        if pos >= end:
            return out


def segment_tcp6(buf, ip_off, n, gso_size):
    """
    L{segment_tcp4} for the IPv6/TCP super-packet C{buf[ip_off:ip_off+n]} (no extension
    headers): the same headers with the payload length set, sequence numbers advanced,
    FIN and PSH only on the last segment, CWR only on the first, the TCP checksum
    computed in full over the IPv6 pseudo-header.

    @return: a list of C{bytearray} packets (one when the payload fits a segment).
    """
    tcp = ip_off + 40
    thl = (buf[tcp + 12] >> 4) << 2
    data = tcp + thl
    end = ip_off + n
    seq = unpack_from("!I", buf, tcp + 4)[0]
    flags = buf[tcp + 13]
    pseudo = int.from_bytes(buf[ip_off + 8:ip_off + 40], "big") + _TCP   # src, dst, next
    head = bytearray(buf[ip_off:data])
    out = []
    pos = data
    k = 0
    while True:
        chunk_end = min(pos + gso_size, end) if gso_size else end
        seg = head + buf[pos:chunk_end]
        total = len(seg)
        seg[4] = (total - 40) >> 8
        seg[5] = (total - 40) & 0xFF
        pack_into("!I", seg, 44, (seq + (pos - data)) & 0xFFFFFFFF)
        f = flags
        if chunk_end < end:
            f &= ~(_FIN | _PSH)
        if k:
            f &= ~_CWR
        seg[53] = f
        seg[56] = seg[57] = 0
        c = ~csum_add(seg, 40, total, pseudo + total - 40) & 0xFFFF
        seg[56] = c >> 8
        seg[57] = c & 0xFF
        out.append(seg)
        k += 1
        pos = chunk_end
        if pos >= end:
            return out
