# -*- test-case-name: tests.unit.test_udp_backend, tests.unit.test_offload, tests.unit.test_fuzz, tests.unit.test_udp_ipv6 -*-
"""
The udp backend's receive path, socket -> TUN: L{UdpReceiver} is the datagram
protocol on our Port (8285). Its L{flannel_tw.backend.udp.port.DrainingPort} reads the
datagrams into the receiver's buffer and hands them over one by one, or as a run
coalesced by UDP_GRO; each is checked and written into flannel0:

  - its inner IPv4 header must be sane (L{flannel_tw.backend.udp.packet.check_ipv4});
  - with C{filter_sources} (the default) a datagram is only accepted from the PublicIP
    of a current lease, and only if its inner source lies in that lease's subnet;
  - its inner destination must lie in our own subnet ("foreign-destination" otherwise:
    flanneld would hand the kernel packets for the host itself or for any address) and
    its inner source must not ("spoofed-source": our own pods never come from the wire);
  - a packet with TTL 0 or 1 is dropped (flanneld wraps TTL 0 to 255).

In offloaded mode a datagram starting with the frame magic is a segment of an offload
frame (L{flannel_tw.backend.udp.offload}): the reassembler puts the frame together and
it reaches the TUN only if its vnet header describes its packet exactly
(L{flannel_tw.backend.udp.vnet.check_vnet}; "bad-offload" otherwise). A plain packet
gets a zero vnet header in that mode.
"""
import struct

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.backend.udp import packet as _pkt
from flannel_tw.backend.udp import packet6 as _pkt6
from flannel_tw.backend.udp import vnet as _vnet
from flannel_tw.backend.udp.counters import count_error
from flannel_tw.backend.udp.offload import FRAME_MAGIC
from flannel_tw.interfaces import IDatagramRunReceiver

READ_BUFFER = 65535
VNET = _vnet.VNET_HDR_LEN
_ZERO_VNET = bytes(VNET)
_SRC_DST = struct.Struct("!II").unpack_from   # an IPv4 header's addresses, at offset 12
_check_ipv4 = _pkt.check_ipv4
_decrement_ttl = _pkt.decrement_ttl
_NOT_IPV4 = _pkt.NOT_IPV4


@implementer(IDatagramRunReceiver)
class UdpReceiver(DatagramProtocol):
    """
    The receive path of one backend: C{routes} (the source filter), C{counters},
    C{writer} (a L{flannel_tw.backend.udp.tun_io.TunWriter}), C{reassembler} (a
    L{flannel_tw.backend.udp.offload.Reassembler}), C{offload} (the TUN has vnet
    headers), C{mtu} (the overlay MTU, for the frame checks).
    """

    noisy = False   # no "Starting protocol <...>" / "Stopping protocol" lines
    log = Logger()

    def __init__(self, routes, counters, writer, reassembler, offload=False, mtu=None,
                 filter_sources=True):
        self.routes = routes
        self.counters = counters
        self._writer = writer
        self.reassembler = reassembler
        self.offload = offload
        self.mtu = mtu
        self.filter_sources = filter_sources
        # our subnet as (network int, mask int); until set_own_subnet no address
        # matches (-1 is never an address & mask)
        self._own_net = -1
        self._own_mask = 0xFFFFFFFF
        # our IPv6 subnet (issue 15): None while the config has no IPv6 (then an IPv6
        # packet is dropped as "not-ipv4", as before)
        self._own_net6 = None
        self._own_mask6 = 0
        # datagrams land at offset VNET; the 10 bytes before a plain packet are zeroed
        # to be its header when it is written into a vnet TUN
        self._rbuf = bytearray(VNET + READ_BUFFER + 1)
        self._rview = memoryview(self._rbuf)

    def set_own_subnet(self, network, mask):
        """Our subnet (ints): the only destination delivered, never a source."""
        self._own_net = network
        self._own_mask = mask

    def set_own_subnet6(self, network, mask):
        """Our IPv6 subnet (ints), or None: IPv6 packets are then not delivered."""
        self._own_net6 = network
        self._own_mask6 = mask if network is not None else 0

    # -- IDatagramRunReceiver ------------------------------------------------------

    def receiveBuffer(self):
        return self._rview[VNET:]

    def runReceived(self, n, seg, addr):
        """C{n} bytes read into L{receiveBuffer} from C{addr}: one datagram, or with
        0 < C{seg} < C{n} datagrams of C{seg} bytes coalesced (the last may be
        shorter): a run of one frame's segments in one go, else one by one."""
        try:
            if 0 < seg < n:
                if self.offload and self._frame_run(n, seg, addr):
                    return
                handle = self._from_udp_at
                for off in range(VNET, VNET + n, seg):
                    handle(off, min(seg, VNET + n - off), addr)
            else:
                self._from_udp_at(VNET, n, addr)
        except Exception:
            count_error(self.counters, self.log,
                        "udp backend: error handling a datagram from {addr}", addr=addr)

    def truncatedReceived(self, n, addr):
        counters = self.counters
        counters["packets_in"] += 1
        counters["bytes_in"] += n
        counters["bad-header"] += 1

    def datagramReceived(self, data, addr):
        """One datagram given as bytes."""
        n = len(data)
        if n > READ_BUFFER:
            data = data[:READ_BUFFER]
            n = READ_BUFFER
        self._rbuf[VNET:VNET + n] = data
        self.runReceived(n, 0, addr)

    # -- the checks and the delivery -------------------------------------------------

    def _frame_run(self, n, seg, addr):
        """
        A coalesced read at C{self._rbuf[VNET:VNET+n]} that may be consecutive segments
        of one frame: taken whole when it is (True), else False and nothing counted.
        """
        if self._rbuf[VNET] != FRAME_MAGIC:
            return False
        if self.filter_sources and not self.routes.is_peer(addr[0]):
            return False            # counted datagram by datagram
        taken, frame = self.reassembler.feed_run(addr[0], self._rbuf, VNET, n, seg)
        if not taken:
            return False
        counters = self.counters
        counters["packets_in"] += -(-n // seg)
        counters["bytes_in"] += n
        if frame is not None:
            self._deliver_frame(frame, addr)
        return True

    def _deliver_frame(self, frame, addr):
        self.counters["frames_in"] += 1
        plen = len(frame) - VNET
        reason = _vnet.check_vnet(frame, 0, plen, self.mtu)
        if reason is None and frame[VNET] >> 4 == 6:       # a TCPv6 super-packet
            if self._own_net6 is None:
                self.counters["not-ipv4"] += 1
                return
            self._deliver6(memoryview(frame), VNET, plen, 0, addr)
            return
        self._deliver(frame, memoryview(frame), VNET, plen, 0, addr, reason)

    def _from_udp_at(self, base, n, addr):
        """
        The datagram C{self._rbuf[base:base+n]} from C{addr} (C{base} >= VNET: the
        bytes before it may be overwritten, the datagrams of a coalesced read are
        handled in order).
        """
        counters = self.counters
        counters["packets_in"] += 1
        counters["bytes_in"] += n
        rbuf = self._rbuf
        if n and rbuf[base] == FRAME_MAGIC and self.offload:
            if self.filter_sources and not self.routes.is_peer(addr[0]):
                counters["unknown-peer"] += 1
                return
            frame = self.reassembler.feed(addr[0], rbuf, base, n)
            if frame is not None:
                self._deliver_frame(frame, addr)
            return
        start = base - VNET
        if self.offload:
            rbuf[start:base] = _ZERO_VNET     # a zero vnet header before the plain packet
        else:
            start = base
        self._deliver(rbuf, self._rview, base, n, start, addr, None)

    def _deliver(self, buf, view, ip, plen, start, addr, reason):
        """
        Check the IPv4 packet C{buf[ip:ip+plen]} from C{addr} and write
        C{buf[start:ip+plen]} (with its vnet header in offloaded mode) into the TUN.
        The checks: the header (unless C{reason} already says why it is dropped), the
        source filter, the destination in our subnet, no source in it.
        """
        counters = self.counters
        pkt = view[ip:ip + plen]
        if reason is None:
            reason = _check_ipv4(pkt, plen)
            if reason is _NOT_IPV4 and self._own_net6 is not None and buf[ip] >> 4 == 6:
                return self._deliver6(view, ip, plen, start, addr)
        if reason is None:
            src, dst = _SRC_DST(buf, ip + 12)
            if self.filter_sources:
                reason = self.routes.check_source(addr[0], src)
            if reason is None:
                mask = self._own_mask
                if dst & mask != self._own_net:
                    reason = "foreign-destination"
                elif src & mask == self._own_net:
                    reason = "spoofed-source"
        if reason is not None:
            counters[reason] += 1
            return
        if not _decrement_ttl(pkt):
            counters["ttl-expired"] += 1
            return
        self._writer.write(view[start:ip + plen])

    def _deliver6(self, view, ip, plen, start, addr):
        """L{_deliver} for an IPv6 packet: the same checks (the header, the source
        filter against the peer's IPv6 subnets, the destination in our IPv6 subnet, no
        source in it), then the hop limit."""
        counters = self.counters
        pkt = view[ip:ip + plen]
        reason = _pkt6.check_ipv6(pkt, plen)
        if reason is None:
            src = _pkt6.src_ip6(pkt)
            if self.filter_sources:
                reason = self.routes.check_source6(addr[0], src)
            if reason is None:
                mask = self._own_mask6
                if _pkt6.dst_ip6(pkt) & mask != self._own_net6:
                    reason = "foreign-destination"
                elif src & mask == self._own_net6:
                    reason = "spoofed-source"
        if reason is not None:
            counters[reason] += 1
            return
        if not _pkt6.decrement_hop_limit(pkt):
            counters["ttl-expired"] += 1
            return
        self._writer.write(view[start:ip + plen])
