# -*- test-case-name: tests.unit.test_udp_backend, tests.unit.test_offload, tests.unit.test_udp_ipv6, tests.unit.test_udp_ipv6_offload -*-
"""
The udp backend's send path, TUN -> peers: L{Sender.drain} reads the packets the
kernel routed into flannel0, checks them (L{flannel_tw.backend.udp.packet}), looks up
the peer (L{flannel_tw.backend.udp.routes}), decrements the TTL and sends them to the
peer's PublicIP on our Port; a packet without a route is answered with ICMP
net-unreachable.

A run of equal-sized packets for one peer (a TCP stream) is gathered back to back in
one buffer and leaves in one sendmsg with UDP_SEGMENT (UDP GSO): the kernel cuts it
into the same datagrams flanneld would send, after a single trip through routing,
veth, bridge and netfilter (a sendto per packet if the kernel refuses it).

A lone packet (ping, a request) does not wait for that (issue 16): after a wake-up that
read a single packet, a wake-up that comes after a quiet spell (C{lone_gap}, 1 ms, by
the clock the backend gives) reads one packet and sends it with one sendto
(L{Sender._send_lone}, no run state), and goes back to the reactor: one read and one
send, as flanneld's proxy, and no read that finds the TUN empty (epoll is
level-triggered: a packet queued behind it wakes us again at once). A wake-up soon
after the last one is a burst: it sends its first packet at once and drains the rest
in GSO runs; a run read in one wake-up after a busy one keeps its GSO sendmsg
(bench/latency.py profiles both paths).

In offloaded mode each read starts with a vnet header and may be a TCP super-packet:
towards an offloading peer it leaves as one frame (L{flannel_tw.backend.udp.offload}),
towards any other peer it is cut into flanneld's packets here.
"""
import errno
import socket
import struct

from twisted.logger import Logger

from flannel_tw.backend.udp import offload as _off
from flannel_tw.backend.udp import packet as _pkt
from flannel_tw.backend.udp import packet6 as _pkt6
from flannel_tw.backend.udp import vnet as _vnet
from flannel_tw.backend.udp.counters import count_error

READS_PER_WAKEUP = 256
# seconds: a wake-up this long after the end of the last one, which read a single
# packet, is a lone packet's (read one, send it, back to the reactor)
LONE_GAP = 0.001
READ_BUFFER = 65535
# UDP GSO (Linux >= 4.18): one sendmsg with a UDP_SEGMENT cmsg carries a run of
# equal-sized datagrams to one peer; the kernel cuts it into ordinary datagrams.
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
GSO_MAX_SEGMENTS = 64         # UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65507         # one IPv4 UDP payload
_GSO_FATAL = frozenset((errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP))
VNET = _vnet.VNET_HDR_LEN
_ZERO_VNET = bytes(VNET)

_U16 = struct.Struct("=H").pack      # the UDP_SEGMENT cmsg: a native u16
_SUPER = object()       # _prepare_vnet: "a super-packet, send it with _send_super"
_check_ipv4 = _pkt.check_ipv4
_decrement_ttl = _pkt.decrement_ttl
_NOT_IPV4 = _pkt.NOT_IPV4


class Sender:
    """
    TUN -> peers for one backend. C{sock} is the bound UDP socket (sent to directly:
    Port.write() re-validates the address string on every packet, and peer addresses
    here come from the route table, already valid); C{writer} (a
    L{flannel_tw.backend.udp.tun_io.TunWriter}) carries ICMP replies back into the TUN.
    C{udp_gso} turns False once the kernel refused UDP_SEGMENT.
    """

    log = Logger()

    def __init__(self, routes, counters, writer, sock, offload, mtu, clock=None):
        self.routes = routes
        self.counters = counters
        self._writer = writer
        self.offload = offload
        self.mtu = mtu
        self._sendto = sock.sendto if sock is not None else None
        self._sendmsg = sock.sendmsg if sock is not None else None
        self.udp_gso = True
        self.tun_ip = None           # int: our .0 address, the source of ICMP replies
        # IPv6 (issue 15): None while the config has no IPv6 (v6 packets are dropped as
        # "not-ipv4", as before); else our TUN's v6 address as an int, the source of
        # ICMPv6 replies, and v6 packets are routed by L{RouteTable.lookup6_entry}
        self.tun_ip6 = None
        # [vnet header][packet] in offloaded mode, [packet] otherwise; in plain mode a
        # run of packets for one peer is read back to back into it
        self._buf = bytearray(GSO_MAX_BYTES + VNET + READ_BUFFER + 1)
        self._view = memoryview(self._buf)
        # offload frames are packed here
        self._fbuf = bytearray(_off.MAX_FRAME + _off.MAX_SEGMENTS * _off.FRAME_HDR_LEN)
        self._fview = memoryview(self._fbuf)
        self._frame_id = 0
        self._super = None           # (route entry, gso_size) of the super-packet at hand
        # True after a wake-up that read a single packet: the next wake-up's first
        # packet is then sent at once (L{_send_lone}), before the read that looks for
        # more, instead of waiting to see whether a run follows
        self.lone = False
        # C{clock()} (seconds, e.g. the reactor's): when set, a wake-up at least
        # C{lone_gap} after the end of the last one, which read a single packet, reads
        # one packet only (L{_drain_one}); None: every wake-up drains the TUN
        self._clock = clock
        self.lone_gap = LONE_GAP
        self._last = 0.0             # clock() at the end of the last wake-up
        self.got = 0                 # packets the last wake-up read

    def drain(self, tun):
        """
        Read up to READS_PER_WAKEUP packets from C{tun}. Consecutive packets for the
        same peer with the same length (a TCP stream's full-sized segments, a burst of
        small datagrams) are gathered back to back at the front of C{self._buf} and
        leave in one UDP GSO sendmsg (at most GSO_MAX_SEGMENTS, GSO_MAX_BYTES; a
        shorter packet may end a run). In offloaded mode each read brings a vnet header
        first: a plain packet is moved down over it to join the run, a super-packet is
        sent on its own (after the run before it, to keep the order).

        A lone packet after a quiet spell is read and sent alone (L{_drain_one}).

        @return: None, or the OSError a read failed with (other than EAGAIN/EINTR).
        """
        clock = self._clock
        if clock is None:
            return self._drain(tun)
        if self.lone and clock() - self._last >= self.lone_gap:
            try:
                return self._drain_one(tun)
            finally:
                self._last = clock()
        try:
            return self._drain(tun)
        finally:
            self._last = clock()

    def _drain_one(self, tun):
        """One read and, for a packet, one send (L{_send_lone}); C{lone} stays set."""
        hdr = VNET if self.offload else 0
        self.got = 0
        try:
            n = tun.readinto(self._view[:hdr + READ_BUFFER + 1])
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            return None if e.errno == errno.EAGAIN else e
        self.got = 1
        counters = self.counters
        counters["tun_packets_in"] += 1
        counters["tun_bytes_in"] += n - hdr
        self._send_lone(self._prepare_vnet if hdr else self._prepare_plain, n, hdr)
        return None

    def _drain(self, tun):
        """L{drain}'s loop: read until EAGAIN (at most READS_PER_WAKEUP), in runs."""
        readinto = tun.readinto
        buf = self._buf
        view = self._view
        counters = self.counters
        hdr = VNET if self.offload else 0
        prepare = self._prepare_vnet if hdr else self._prepare_plain
        chunk = hdr + READ_BUFFER + 1
        off = 0          # bytes of the pending run at the front of buf
        count = 0        # packets in it
        seg = 0          # their length
        peer = None      # their destination
        lone = self.lone
        got = 0          # packets read
        try:
            for _ in range(READS_PER_WAKEUP):
                try:
                    n = readinto(view[off:off + chunk])
                except BlockingIOError:
                    return None
                except InterruptedError:
                    continue
                except OSError as e:
                    if e.errno == errno.EAGAIN:
                        return None
                    return e
                counters["tun_packets_in"] += 1
                counters["tun_bytes_in"] += n - hdr
                got += 1
                if lone:
                    lone = False
                    self._send_lone(prepare, n, hdr)
                    continue
                try:
                    to = prepare(off, n)
                    if to is None:
                        continue
                    if to is _SUPER:
                        if count:
                            self._send_run(view, off, count, seg, peer)
                        count = 0
                        self._send_super(off, n)
                        off = 0
                        continue
                except Exception:
                    count_error(counters, self.log,
                                "udp backend: error handling a packet from the tun")
                    continue
                n -= hdr
                if count:
                    if to == peer and off + n <= GSO_MAX_BYTES and count < GSO_MAX_SEGMENTS:
                        if n == seg:
                            count += 1
                            off += n
                            continue
                        if n < seg:          # a short packet ends the run
                            self._send_run(view, off + n, count + 1, seg, peer)
                            off = count = 0
                            continue
                    self._send_run(view, off, count, seg, peer)
                    if off:
                        buf[:n] = buf[off:off + n]
                count = 1
                seg = off = n
                peer = to
        finally:
            if count:
                self._send_run(view, off, count, seg, peer)
            self.got = got
            if got:
                self.lone = got == 1
        return None

    def _send_lone(self, prepare, n, hdr):
        """
        The first packet of a wake-up that follows a lone one, read into the front of
        C{self._buf} (C{n} bytes, C{hdr} of them its vnet header): checked, routed and
        sent at once with one sendto (a super-packet as a frame or segments), touching
        no run state; the drain loop then reads on for anything queued behind it.
        """
        try:
            to = prepare(0, n)
            if to is None:
                return
            if to is _SUPER:
                self._send_super(0, n)
                return
            n -= hdr
            self._send(self._view[:n], n, to)
        except Exception:
            count_error(self.counters, self.log,
                        "udp backend: error handling a packet from the tun")

    def _prepare_plain(self, off, n):
        """
        The packet read into C{self._buf[off:off+n]}: see L{_route_packet}. Returns the
        peer address to send it to, or None.
        """
        entry = self._route_packet(self._view[off:off + n], n)
        return None if entry is None else entry[1]

    def _route_packet(self, pkt, plen):
        """
        The IPv4 packet C{pkt} (C{plen} bytes) from the TUN: checked, routed and its TTL
        decremented. Returns its route entry C{(subnet, peer, offload)}, or None when
        it was dropped (counted) or answered with an ICMP error.
        """
        reason = _check_ipv4(pkt, plen)
        if reason is not None:
            if reason is _NOT_IPV4 and self.tun_ip6 is not None and pkt[0] >> 4 == 6:
                return self._route_packet6(pkt, plen)
            self.counters[reason] += 1
            return None
        entry = self.routes.lookup_entry(
            (pkt[16] << 24) | (pkt[17] << 16) | (pkt[18] << 8) | pkt[19])
        if entry is None:
            self.counters["no-route"] += 1
            self._send_unreachable(pkt)
            return None
        if not _decrement_ttl(pkt):
            self.counters["ttl-expired"] += 1
            return None
        return entry

    def _route_packet6(self, pkt, plen):
        """L{_route_packet} for an IPv6 packet: checked, routed to the peer whose IPv6
        subnet holds its destination (a peer without one, such as a flanneld host, is
        never sent IPv6: "no-route", answered with ICMPv6 no-route), hop limit
        decremented."""
        counters = self.counters
        reason = _pkt6.check_ipv6(pkt, plen)
        if reason is not None:
            counters[reason] += 1
            return None
        entry = self.routes.lookup6_entry(_pkt6.dst_ip6(pkt))
        if entry is None:
            counters["no-route"] += 1
            reply = _pkt6.icmp6_no_route(pkt[:plen], self.tun_ip6)
            if reply is not None and self._writer.write(
                    _ZERO_VNET + reply if self.offload else reply):
                counters["icmp_unreachable"] += 1
            return None
        if not _pkt6.decrement_hop_limit(pkt):
            counters["ttl-expired"] += 1
            return None
        return entry

    def _send_run(self, view, total, count, seg, peer):
        """
        Send C{view[:total]}, C{count} packets of C{seg} bytes (the last one may be
        shorter) for C{peer}: one UDP GSO sendmsg, or one sendto each if the kernel
        refuses UDP_SEGMENT (then never tried again).
        """
        if count == 1:
            return self._send(view[:total], total, peer)
        if self.udp_gso:
            try:
                self._sendmsg((view[:total],),
                              ((socket.SOL_UDP, UDP_SEGMENT, _U16(seg)),), 0, peer)
            except OSError as e:
                if e.errno not in _GSO_FATAL:
                    self.counters["send-error"] += count
                    self.log.debug("udp backend: send to {peer} failed: {e}", peer=peer, e=e)
                    return
                self.udp_gso = False
                self.log.info("udp backend: no UDP GSO ({e}); one sendto per packet", e=e)
            except Exception:
                count_error(self.counters, self.log, "udp backend: error sending to {peer}",
                            peer=peer)
                return
            else:
                self.counters["packets_out"] += count
                self.counters["bytes_out"] += total
                return
        for start in range(0, total, seg):
            end = min(start + seg, total)
            self._send(view[start:end], end - start, peer)

    def _send(self, data, n, peer):
        try:
            self._sendto(data, peer)
        except OSError as e:
            self.counters["send-error"] += 1
            self.log.debug("udp backend: send to {peer} failed: {e}", peer=peer, e=e)
            return
        self.counters["packets_out"] += 1
        self.counters["bytes_out"] += n

    def _prepare_vnet(self, off, n):
        """
        A vnet header and a packet read into C{self._buf[off:off+n]}: checked, routed,
        TTL decremented. A plain packet has its partial checksum completed and is moved
        down over its header to C{self._buf[off:off+n-VNET]}; its peer is returned.
        A super-packet returns L{_SUPER} (send it with L{_send_super}). None when it
        was dropped (counted) or answered with an ICMP error.
        """
        counters = self.counters
        buf = self._buf
        plen = n - VNET
        if plen < 0:
            counters["short"] += 1
            return None
        ip = off + VNET
        pkt = self._view[ip:off + n]
        entry = self._route_packet(pkt, plen)
        if entry is None:
            return None
        flags, gso, _hl, gso_size, cstart, coff = _vnet.parse_vnet(buf, off)
        if gso & ~_vnet.GSO_ECN:
            g = gso & ~_vnet.GSO_ECN
            if not gso_size or not (
                    (g == _vnet.GSO_TCPV4 and pkt[0] >> 4 == 4 and pkt[9] == 6)
                    or (g == _vnet.GSO_TCPV6 and pkt[0] >> 4 == 6 and pkt[6] == 6)):
                counters["bad-header"] += 1
                return None
            self._super = (entry, gso_size)
            return _SUPER
        if flags & _vnet.F_NEEDS_CSUM:
            _vnet.finish_checksum(buf, ip, plen, cstart, coff)
        buf[off:off + plen] = buf[ip:ip + plen]
        return entry[1]

    def _send_super(self, off, n):
        """The TCP super-packet at C{self._buf[off:off+n]} (vnet header first), checked
        by L{_prepare_vnet}: one frame to an offloading peer, else flanneld's segments."""
        entry, gso_size = self._super
        peer = entry[1]
        if (entry[2] and _vnet.check_vnet(self._buf, off, n - VNET, self.mtu) is None
                and self._send_frame(self._view[off:off + n], n, peer)):
            return
        self.counters["gso_segmented"] += 1
        segment = _vnet.segment_tcp6 if self._buf[off + VNET] >> 4 == 6 else _vnet.segment_tcp4
        self._send_segments(segment(self._buf, off + VNET, n - VNET, gso_size), peer)

    def _send_frame(self, src, n, peer):
        """
        The super-packet C{src[:n]} (vnet header first) to an offloading peer as
        one frame: segments of C{self.mtu} bytes in UDP GSO sendmsgs of at most
        GSO_MAX_SEGMENTS / GSO_MAX_BYTES. False when it cannot be framed (an MTU too
        small for 255 segments); the caller then segments it for flanneld's wire.
        """
        seg = self.mtu
        fid = self._frame_id = (self._frame_id + 1) & 0xFF
        try:
            count, total = _off.pack_frame(src, n, seg, self._fbuf, fid)
        except ValueError:
            return False
        self.counters["frames_out"] += 1
        fview = self._fview
        per = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg)
        step = per * seg
        for start in range(0, total, step):
            end = min(start + step, total)
            self._send_run(fview[start:end], end - start, -(-(end - start) // seg), seg, peer)
        return True

    def _send_segments(self, segs, peer):
        """Send the packets C{segs} (all as long as the first, but the last may be
        shorter) to C{peer} in runs of at most GSO_MAX_SEGMENTS / GSO_MAX_BYTES."""
        seg = len(segs[0])
        per = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg) if seg else 1
        for i in range(0, len(segs), per):
            run = segs[i:i + per]
            data = b"".join(run) if len(run) > 1 else run[0]
            self._send_run(data, len(data), len(run), seg, peer)

    def _send_unreachable(self, pkt):
        if self.tun_ip is None:
            return
        reply = _pkt.icmp_net_unreachable(pkt, self.tun_ip)
        if reply is None:
            return
        if self._writer.write(_ZERO_VNET + reply if self.offload else reply):
            self.counters["icmp_unreachable"] += 1
