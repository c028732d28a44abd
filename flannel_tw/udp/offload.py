# -*- test-case-name: tests.test_offload -*-
"""
The udp backend's offloaded mode between flannel-tw hosts: pure helpers (no reactor,
no sockets).

With offload on, flannel0 is opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM |
TUN_F_TSO4): every packet read from it starts with a 10-byte C{struct virtio_net_hdr}
(little-endian, TUNSETVNETLE), and TCP arrives as GSO super-packets of up to ~64 KB
with a partial checksum.

Wire format towards a peer whose lease advertises C{"BackendData":{"FlannelTW":
{"Offload":1}}}: the UDP payload is that 10-byte header followed by the IPv4 packet,
one super-packet per datagram (the kernel fragments it on the underlay). The first
byte (the header's flags, below 0x10) tells it apart from flanneld's raw IPv4 payload
(first byte 0x4N); the receiver writes header and packet into its own TUN as they came,
and its kernel segments or checksums them.

Towards a peer without that BackendData (flanneld, or flannel-tw with offload off) the
wire stays exactly flanneld's: L{finish_checksum} completes a partial checksum and
L{segment_tcp4} cuts a TCP super-packet into MTU-sized IPv4 packets in user space.
"""
from struct import pack_into, unpack_from

VNET_HDR_LEN = 10
VNET_FMT = "<BBHHHH"          # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_ECN = 0x80

# the largest UDP payload over IPv4: 65535 - 20 (IP) - 8 (UDP). A super-packet from
# the TUN can be up to 65535 bytes: the few that do not fit with their header are
# split in two (L{split_gso}); lowering the TUN's gso_max_size instead would make the
# kernel segment every forwarded 64 KB packet in software (their size is chosen by the
# sending container's stack, not by flannel0).
MAX_DATAGRAM = 65507

OFFLOAD_VERSION = 1
LEASE_DATA = {"FlannelTW": {"Offload": OFFLOAD_VERSION}}

_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


def lease_backend_data(offload: bool):
    """The BackendData our udp lease carries: L{LEASE_DATA} with offload, else None."""
    return {"FlannelTW": {"Offload": OFFLOAD_VERSION}} if offload else None


def peer_offload(attrs) -> bool:
    """
    Whether a lease's attrs advertise the offloaded wire format we speak: BackendData
    C{{"FlannelTW":{"Offload":1}}}. Anything else (no BackendData, flanneld's leases,
    another version, junk) means flanneld's plain format.
    """
    data = getattr(attrs, "backend_data", None)
    if not isinstance(data, dict):
        return False
    tw = data.get("FlannelTW")
    if not isinstance(tw, dict):
        return False
    v = tw.get("Offload")
    return type(v) is int and v == OFFLOAD_VERSION


def offload_option(backend: dict) -> bool:
    """
    The udp Backend config's C{Offload} flag (any key case, as Go's JSON): default True.

    @raise ValueError: naming Backend.Offload when it is not a boolean.
    """
    backend = backend or {}
    value = backend.get("Offload")
    if value is None:
        for k, v in backend.items():
            if isinstance(k, str) and k.lower() == "offload":
                value = v
                break
        else:
            return True
    if not isinstance(value, bool):
        raise ValueError("Backend.Offload must be true or false, got %r" % (value,))
    return value


def env_allows_offload(environ) -> bool:
    """C{FLANNEL_TW_UDP_OFFLOAD=0} (or false/no/off) turns offload off on this host."""
    v = (environ.get("FLANNEL_TW_UDP_OFFLOAD") or "").strip().lower()
    return v not in ("0", "false", "no", "off")


def parse_vnet(buf, off=0):
    """C{(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)} at C{buf[off:]}."""
    return unpack_from(VNET_FMT, buf, off)


def build_vnet(flags=0, gso_type=GSO_NONE, hdr_len=0, gso_size=0, csum_start=0,
               csum_offset=0) -> bytes:
    out = bytearray(VNET_HDR_LEN)
    pack_into(VNET_FMT, out, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return bytes(out)


def check_vnet(buf, off, n):
    """
    Sanity checks on a received header at C{buf[off:]} with C{n} bytes of packet after
    it (the kernel checks again when we write it).

    @return: None when usable, else a drop reason (C{"bad-header"}).
    """
    flags, gso, hdr_len, gso_size, cstart, coff = unpack_from(VNET_FMT, buf, off)
    if flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        return "bad-header"
    if flags & F_NEEDS_CSUM and cstart + coff + 2 > n:
        return "bad-header"
    g = gso & ~GSO_ECN
    if g == GSO_NONE:
        return None
    if g != GSO_TCPV4 or not gso_size or not flags & F_NEEDS_CSUM:
        return "bad-header"
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


def split_gso(buf, n, max_len=MAX_DATAGRAM):
    """
    Split the vnet-headed TCP super-packet C{buf[:n]} (header at 0, IPv4 at
    L{VNET_HDR_LEN}) into super-packets of at most C{max_len} bytes with their headers,
    on segment boundaries, as the kernel would: headers copied, IP ID and sequence
    advanced, FIN/PSH only on the last part, CWR only on the first, IP checksum
    recomputed, and the TCP checksum field set to the partial (pseudo-header) sum for
    the part's length, as CHECKSUM_PARTIAL expects.

    @return: a list of C{bytearray}s, each a vnet header plus an IPv4 packet.
    """
    H = VNET_HDR_LEN
    flags, gso, hdr_len, gso_size, cstart, coff = unpack_from(VNET_FMT, buf, 0)
    hl = (buf[H] & 0x0F) << 2
    tcp = H + hl
    thl = (buf[tcp + 12] >> 4) << 2
    data = tcp + thl
    per = (max_len - (data)) // gso_size * gso_size
    if per <= 0:
        raise ValueError("gso_size %d too large to split" % gso_size)
    ipid = (buf[H + 4] << 8) | buf[H + 5]
    seq = unpack_from("!I", buf, tcp + 4)[0]
    tflags = buf[tcp + 13]
    pseudo = int.from_bytes(buf[H + 12:H + 20], "big") + 6
    head = bytearray(buf[:data])
    out = []
    pos = data
    k = 0
    while pos < n:
        end = min(pos + per, n)
        part = head + buf[pos:end]
        total = len(part) - H
        part[H + 2] = total >> 8
        part[H + 3] = total & 0xFF
        i = (ipid + (pos - data) // gso_size) & 0xFFFF
        part[H + 4] = i >> 8
        part[H + 5] = i & 0xFF
        part[H + 10] = part[H + 11] = 0
        c = ~csum_add(part, H, H + hl) & 0xFFFF
        part[H + 10] = c >> 8
        part[H + 11] = c & 0xFF
        pack_into("!I", part, hl + H + 4, (seq + (pos - data)) & 0xFFFFFFFF)
        f = tflags
        if end < n:
            f &= ~(_FIN | _PSH)
        if k:
            f &= ~_CWR
        part[H + hl + 13] = f
        ps = (pseudo + total - hl) % 0xFFFF
        part[H + hl + 16] = ps >> 8
        part[H + hl + 17] = ps & 0xFF
        if end - pos <= gso_size:      # a single segment: no GSO left
            pack_into(VNET_FMT, part, 0, flags, GSO_NONE, hdr_len, 0, cstart, coff)
        out.append(part)
        k += 1
        pos = end
    return out
