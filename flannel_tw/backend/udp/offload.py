# -*- test-case-name: tests.unit.test_offload -*-
"""
The udp backend's offloaded mode between flannel-tw hosts: pure helpers (no reactor,
no sockets).

With offload on, flannel0 is opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM |
TUN_F_TSO4): every packet read from it starts with a 10-byte C{struct virtio_net_hdr}
(little-endian, TUNSETVNETLE), and TCP arrives as GSO super-packets of up to ~64 KB
with a partial checksum.

Wire format towards a peer whose lease advertises C{"BackendData":{"FlannelTW":
{"Offload":2}}}: a TCP super-packet travels as one I{frame}, the 10-byte header
followed by the IPv4 packet, cut into MTU-sized UDP datagrams (I{segments}) that each
start with a 4-byte frame header: C{0xF7}, the frame id (u8, counting up), the segment's
index and the frame's segment count. The sender hands a whole frame to the kernel in
one UDP GSO sendmsg (UDP_SEGMENT) and the receiver reads it back in one recvmsg with
UDP_GRO, so a 64 KB packet crosses the stack once instead of as ~45 IP fragments
(raw UDP over the lab's veth and bridge: 3.9 Gbit/s fragmented vs 26.6 Gbit/s with
GSO/GRO). L{Reassembler} puts frames back together when segments arrive one by one
(no GRO on the path) and drops a frame with a missing or reordered segment. The first
byte, 0xF7 (IP version 15), tells a segment from flanneld's raw IPv4 payload (0x4N);
packets that are not super-packets go to such peers in flanneld's format. Offload 1
(one unsegmented, IP-fragmented datagram per super-packet) is no longer spoken: a
peer advertising it gets flanneld's format.

Towards a peer without that BackendData (flanneld, or flannel-tw with offload off) the
wire stays exactly flanneld's: L{vnet.finish_checksum} completes a partial checksum and
L{vnet.segment_tcp4} cuts a TCP super-packet into MTU-sized IPv4 packets in user space.

A frame comes from the network, so its header is not trusted: the receive path checks
it with L{flannel_tw.backend.udp.vnet.check_vnet} before the frame is written into the
TUN. The vnet header itself, the checksum completion and the user-space segmentation
live in L{flannel_tw.backend.udp.vnet}.
"""
from flannel_tw.backend.udp.vnet import VNET_HDR_LEN


OFFLOAD_VERSION = 2
LEASE_DATA = {"FlannelTW": {"Offload": OFFLOAD_VERSION}}

FRAME_MAGIC = 0xF7
FRAME_HDR_LEN = 4             # magic, frame id, segment index, segment count
MAX_SEGMENTS = 255
# the largest frame: a vnet header and a 64 KB IPv4 packet
MAX_FRAME = VNET_HDR_LEN + 65535


def lease_backend_data(offload: bool):
    """The BackendData our udp lease carries: L{LEASE_DATA} with offload, else None."""
    return {"FlannelTW": {"Offload": OFFLOAD_VERSION}} if offload else None


def peer_offload(attrs) -> bool:
    """
    Whether a lease's attrs advertise the offloaded wire format we speak: BackendData
    C{{"FlannelTW":{"Offload":2}}}. Anything else (no BackendData, flanneld's leases,
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


_MAGICS = bytes((FRAME_MAGIC,)) * MAX_SEGMENTS
_INDEXES = bytes(range(256))


def pack_frame(src, n, seg, out, frame_id):
    """
    Copy the frame C{src[:n]} (vnet header and packet) into C{out} as segments of at
    most C{seg} bytes, each a L{FRAME_HDR_LEN}-byte frame header and the next piece.

    @return: C{(count, total)}: the number of segments and the bytes written; all
        segments but the last are exactly C{seg} bytes (as UDP_SEGMENT wants).
    @raise ValueError: C{seg} too small for a frame this long (over 255 segments).
    """
    chunk = seg - FRAME_HDR_LEN
    if chunk <= 0:
        raise ValueError("segment size %d leaves no room for data" % (seg,))
    count = -(-n // chunk) if n else 1
    if count > MAX_SEGMENTS:
        raise ValueError("a %d-byte frame needs %d segments of %d bytes (at most %d)"
                         % (n, count, seg, MAX_SEGMENTS))
    total = n + count * FRAME_HDR_LEN
    # the four header bytes of every segment, each as one strided copy
    out[0:total:seg] = _MAGICS[:count]
    out[1:total:seg] = bytes((frame_id & 0xFF,)) * count
    out[2:total:seg] = _INDEXES[:count]
    out[3:total:seg] = bytes((count,)) * count
    o = FRAME_HDR_LEN
    for pos in range(0, n - chunk, chunk):
        out[o:o + chunk] = src[pos:pos + chunk]
        o += seg
    pos = (count - 1) * chunk
    out[o:o + n - pos] = src[pos:n]
    return count, total


class Reassembler:
    """
    Frames back from their segments, per peer, in order. A segment that does not
    continue the peer's pending frame (lost or reordered on the way) drops that frame;
    every drop is counted in C{counters}: C{"incomplete-frame"} for a frame given up
    or a segment that belongs to none, C{"bad-header"} for an impossible frame header,
    C{"short"} for a segment with no data.

    @param counters: a dict of drop counters (the backend's).
    @param max_pending: peers with a frame in progress at once; beyond it, the oldest
        pending frame is dropped (bounds memory to about max_pending * 64 KB).
    """

    def __init__(self, counters, max_pending=256):
        self.counters = counters
        self.max_pending = max_pending
        self._pending = {}    # peer -> [frame id, count, next index, chunk, parts]

    def __len__(self):
        return len(self._pending)

    def forget(self, peer):
        """Drop C{peer}'s pending frame, if any (e.g. its lease went away)."""
        if self._pending.pop(peer, None) is not None:
            self.counters["incomplete-frame"] += 1

    def feed(self, peer, buf, off, n):
        """
        The segment C{buf[off:off+n]} from C{peer}.

        @return: the complete frame (a C{bytearray}, vnet header first) when this
            segment ends one, else None.
        """
        counters = self.counters
        if n <= FRAME_HDR_LEN:
            counters["short"] += 1
            return None
        frame = self._take(peer, buf, off, off + n, 1, n - FRAME_HDR_LEN, n - FRAME_HDR_LEN)
        if frame is None:
            counters["incomplete-frame"] += 1
        return frame if frame is not True else None

    def feed_run(self, peer, buf, off, n, seg):
        """
        A coalesced read (UDP_GRO): C{buf[off:off+n]} holds segments of C{seg} bytes,
        the last maybe shorter. When they are consecutive segments of one frame (the
        usual case: one sendmsg of ours comes out as one read), take them in one go.

        @return: C{(taken, frame)}: C{taken} False means "not one run of a frame": feed
            the segments one by one instead (a pending frame of the peer that they do
            not continue has been dropped and counted); C{frame} is the completed
            frame or None.
        """
        k = -(-n // seg)
        end = off + n
        last = n - (k - 1) * seg - FRAME_HDR_LEN
        if last <= 0 or buf[off] != FRAME_MAGIC:
            return False, None
        fid = buf[off + 1]
        idx = buf[off + 2]
        count = buf[off + 3]
        if (buf[off:end:seg] != _MAGICS[:k]
                or buf[off + 1:end:seg] != bytes((fid,)) * k
                or buf[off + 2:end:seg] != _INDEXES[idx:idx + k]
                or buf[off + 3:end:seg] != bytes((count,)) * k
                or idx + k > count or (idx + k < count and last != seg - FRAME_HDR_LEN)):
            return False, None
        frame = self._take(peer, buf, off, end, k, seg - FRAME_HDR_LEN, last)
        if frame is None:
            return False, None
        return True, frame if frame is not True else None

    def _take(self, peer, buf, off, end, k, chunk, last):
        """
        C{k} segments of one frame at C{buf[off:end]}, each C{chunk} bytes of data but
        the last (C{last}). Returns the finished frame, True when they were taken into
        a pending frame, or None when they fit no frame (the pending one, if any, is
        then dropped and counted; the caller counts the segments).
        """
        counters = self.counters
        pending = self._pending
        fid = buf[off + 1]
        idx = buf[off + 2]
        count = buf[off + 3]
        seg = chunk + FRAME_HDR_LEN
        if idx == 0:
            if count == 0 or idx + k > count or (count - 1) * chunk >= MAX_FRAME:
                counters["bad-header"] += 1
                return True     # counted here already
            if pending.pop(peer, None) is not None:
                counters["incomplete-frame"] += 1
            data = _data(buf, off, end, seg)
            if k == count:
                return bytearray(data)
            if len(pending) >= self.max_pending:
                del pending[next(iter(pending))]
                counters["incomplete-frame"] += 1
            pending[peer] = [fid, count, k, chunk, [data]]
            return True
        st = pending.get(peer)
        if (st is None or st[0] != fid or st[1] != count or st[2] != idx
                or last > st[3] or (k > 1 and chunk != st[3])
                or (idx + k < count and last != st[3])):
            if st is not None:
                del pending[peer]
                counters["incomplete-frame"] += 1
            return None
        parts = st[4]
        parts.append(_data(buf, off, end, seg))
        if idx + k == count:
            del pending[peer]
            return bytearray().join(parts)
        st[2] = idx + k
        return True


def _data(buf, off, end, seg):
    """The data of the segments of C{seg} bytes at C{buf[off:end]}, joined (a copy)."""
    if end - off <= seg:
        return buf[off + FRAME_HDR_LEN:end]
    mv = memoryview(buf)
    return b"".join([mv[o + FRAME_HDR_LEN:min(o + seg, end)] for o in range(off, end, seg)])
