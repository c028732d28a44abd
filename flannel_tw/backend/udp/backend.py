# -*- test-case-name: tests.test_udp_backend -*-
"""
The udp backend (flannel-compat.md section 6): a TUN device (flannel0) and a Twisted
UDP socket on IfaceAddr:Port (8285), wire-compatible with flanneld: each datagram's
payload is the raw inner IPv4 packet, sent to the peer's PublicIP on our own Port.

Differences from flanneld, on purpose:
  - IPv4 headers are validated (version 4, sane IHL and total length);
  - with C{filter_sources} (the default) a datagram is only accepted from the PublicIP
    of a current lease, and only if its inner source lies in that lease's subnet;
  - a packet from the wire is written into the TUN only if its inner destination lies
    in our own subnet ("foreign-destination" otherwise: flanneld would hand the kernel
    packets for the host itself or for any address, to be forwarded and masqueraded)
    and its inner source does not ("spoofed-source": our own pods never come from the
    wire), whatever C{filter_sources} says;
  - an offload frame reaches the TUN only if its virtio-net header describes its
    packet exactly (L{flannel_tw.backend.udp.offload.check_vnet}; "bad-offload" otherwise), and
    a super-packet that check would refuse is sent segmented instead of as a frame;
  - a packet with TTL 0 or 1 is dropped (flanneld wraps TTL 0 to 255);
  - datagrams longer than the tun MTU are not truncated.

The data path drains up to 256 packets from the TUN and up to 256 datagrams from the
socket per reactor wake-up, into two reusable buffers (no per-packet allocation on
the plain path; Twisted's own UDP reader allocates 64 KB per datagram and stops after
256 KB, so the socket is read here instead). In plain mode a run of equal-sized
packets for one peer (a TCP stream) leaves in one sendmsg with UDP_SEGMENT (UDP GSO):
the kernel cuts it into the same datagrams flanneld would send, after a single trip
through routing, veth, bridge and netfilter (a sendto per packet if the kernel refuses
it).

Offloaded mode (L{flannel_tw.backend.udp.offload}): unless the Backend config says
C{"Offload": false} or the environment says C{FLANNEL_TW_UDP_OFFLOAD=0}, flannel0 is
opened with IFF_VNET_HDR and TSO, our lease carries C{"BackendData":{"FlannelTW":
{"Offload":2}}}, and peers advertising the same get each TCP super-packet (up to 64 KB)
as one frame: MTU-sized segments with a 4-byte frame header, handed to the kernel in
one UDP GSO sendmsg and read back in one recvmsg thanks to UDP_GRO on the socket.
Everything else, and everything towards other peers (flanneld, or offload off), is
flanneld's wire: super-packets are segmented and partial checksums completed in user
space, so a mixed cluster works and flannel-tw pairs keep their speed.

UDP_GRO is asked for in both modes: a run of datagrams from one peer then arrives in
one read (the cmsg gives the segment size) and is taken apart here.
"""
import errno
import os
import socket
import struct
from ipaddress import IPv4Interface, IPv4Network

from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.interfaces import IBackend, ICountingBackend, IReconfiguringBackend, IRoutesBackend
from flannel_tw.model.config import go_json_fields
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.kernel import netlink as _netlink
from flannel_tw.kernel.tun import open_tun
from flannel_tw.kernel.tun import TunError
from flannel_tw.backend.udp import offload as _off
from flannel_tw.backend.udp import packet as _pkt
from flannel_tw.backend.udp.routes import DEFAULT_PORT, RouteTable

TUN_NAME = "flannel%d"
ENCAP_OVERHEAD = 28          # IPv4 (20) + UDP (8)
READS_PER_WAKEUP = 256
READ_BUFFER = 65535
# UDP GSO (Linux >= 4.18): one sendmsg with a UDP_SEGMENT cmsg carries a run of
# equal-sized datagrams to one peer; the kernel cuts it into ordinary datagrams (the
# wire is unchanged) after one trip through routing, veth, bridge and netfilter.
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
_GRO_CMSG = socket.CMSG_SPACE(4)
GSO_MAX_SEGMENTS = 64         # UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65507         # one IPv4 UDP payload
_GSO_FATAL = frozenset((errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP))
SOCKET_BUFFER = 8 * 1024 * 1024
VNET = _off.VNET_HDR_LEN
_ZERO_VNET = bytes(VNET)

DROP_REASONS = ("short", "not-ipv4", "bad-header", "unknown-peer", "spoofed-source",
                "foreign-destination", "ttl-expired", "no-route", "send-error",
                "tun-write-error", "incomplete-frame", "bad-offload", "error")

_U16 = struct.Struct("=H").pack      # the UDP_SEGMENT cmsg: a native u16
_GRO_SIZE = struct.Struct("=i").unpack_from   # the UDP_GRO cmsg: a native int
_SRC_DST = struct.Struct("!II").unpack_from   # an IPv4 header's addresses, at offset 12
_FRAME_MAGIC = _off.FRAME_MAGIC
_SUPER = object()       # _prepare_vnet: "a super-packet, send it with _send_super"
_check_ipv4 = _pkt.check_ipv4
_decrement_ttl = _pkt.decrement_ttl


class UdpBackendError(Exception):
    """The udp backend cannot be set up; the message says what and where."""


def backend_port(backend: dict) -> int:
    """
    The Port of a udp Backend config object (keys matched as Go's encoding/json does,
    L{flannel_tw.model.config.go_json_fields}; null is an error), default L{DEFAULT_PORT}.

    @raise ValueError: naming Backend.Port, unless it is an integer in 1..65535.
    """
    fields = go_json_fields(list((backend or {}).items()), ("Port",), raw=("Port",))
    if "Port" not in fields:
        return DEFAULT_PORT
    value = fields["Port"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("Backend.Port must be an integer from 1 to 65535, got %r" % (value,))
    if not 1 <= value <= 65535:
        raise ValueError("Backend.Port must be from 1 to 65535, got %d" % (value,))
    return value


def new_counters() -> dict:
    c = dict.fromkeys((
        "tun_packets_in", "tun_bytes_in",        # read from the tun
        "packets_out", "bytes_out",              # sent to peers over UDP
        "packets_in", "bytes_in",                # datagrams received over UDP
        "tun_packets_out", "tun_bytes_out",      # delivered into the tun (incl. ICMP)
        "icmp_unreachable",                      # ICMP net-unreachable replies written
        "gso_segmented",                         # super-packets cut up for a plain peer
        "frames_out", "frames_in",               # super-packets to / from offload peers
    ), 0)
    for reason in DROP_REASONS:
        c[reason] = 0
    return c


class _UdpProtocol(DatagramProtocol):
    """Only used if Twisted's own reader runs (it is replaced by a L{_Reader})."""

    noisy = False   # no "Starting protocol <...>" / "Stopping protocol" lines

    def __init__(self, backend):
        self._backend = backend

    def datagramReceived(self, data, addr):
        self._backend._from_udp(data, addr)


@implementer(IReadDescriptor)
class _Reader:
    """
    A file descriptor as a reactor reader: the UDP socket or the TUN device.

    C{drain} reads what is ready (up to READS_PER_WAKEUP a wake-up); C{lost} is told
    when the reactor drops the descriptor.
    """

    def __init__(self, fd, drain, lost, prefix):
        self._fd = fd
        self.doRead = drain
        self.connectionLost = lost
        self._prefix = prefix

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return self._prefix


@implementer(IBackend, ICountingBackend, IReconfiguringBackend, IRoutesBackend)
class UdpBackend:
    """
    L{IBackend} for the udp type.

    C{counters} (a dict of ints): C{tun_packets_in/tun_bytes_in} read from the tun,
    C{packets_out/bytes_out} sent to peers, C{packets_in/bytes_in} received over UDP,
    C{tun_packets_out/tun_bytes_out} written into the tun, C{icmp_unreachable}, and one
    counter per drop reason in L{DROP_REASONS}.
    """

    name = "udp"
    log = Logger()

    def __init__(self, reactor, ext_iface, tun_opener=open_tun, netlink=_netlink,
                 filter_sources=True, tun_name=TUN_NAME, offload=None, environ=None):
        """
        @param offload: False never uses the offloaded mode; None (default) uses it
            unless C{FLANNEL_TW_UDP_OFFLOAD=0} is in C{environ} (default os.environ);
            the Backend config's C{Offload} can turn it off too. C{tun_opener} is
            called as C{tun_opener(name, vnet_hdr=True)} for the offloaded mode.
        """
        self._reactor = reactor
        self.ext_iface = ext_iface
        self._tun_opener = tun_opener
        self._netlink = netlink
        self.filter_sources = filter_sources
        self._tun_name = tun_name
        self.mtu = None
        self.port = None
        self.tun = None
        self.routes = RouteTable()
        self.counters = new_counters()
        self.own_subnet = None
        self._tun_ip = None          # int: our .0 address
        # our subnet as (network int, mask int) for the receive path; until start()
        # no address matches (-1 is never an address & mask)
        self._own_net = -1
        self._own_mask = 0xFFFFFFFF
        self._udp_port = None        # twisted IListeningPort
        self._sendto = None
        self._reader = None
        if offload is None:
            offload = _off.env_allows_offload(os.environ if environ is None else environ)
        self._offload_allowed = bool(offload)
        self.offload = False         # True once the TUN is open with a vnet header
        self._sock = None
        self._sock_reader = None
        # the TUN side: [vnet header][packet] in offloaded mode, [packet] otherwise;
        # in plain mode a run of packets for one peer is read back to back into it
        # and sent with one UDP GSO sendmsg
        self._buf = bytearray(GSO_MAX_BYTES + VNET + READ_BUFFER + 1)
        self._view = memoryview(self._buf)
        self.udp_gso = True          # False once the kernel refused UDP_SEGMENT
        self._sendmsg = None
        # the socket side: datagrams land at offset VNET; the 10 bytes before a plain
        # packet are zeroed to be its header when it is written into a vnet TUN
        self._rbuf = bytearray(VNET + READ_BUFFER + 1)
        self._rview = memoryview(self._rbuf)
        # offload frames: packed here on the way out, put together again on the way in
        self._fbuf = bytearray(_off.MAX_FRAME + _off.MAX_SEGMENTS * _off.FRAME_HDR_LEN)
        self._fview = memoryview(self._fbuf)
        self._frame_id = 0
        self._super = None           # (route entry, gso_size) of the super-packet at hand
        self.reassembler = _off.Reassembler(self.counters)
        self.udp_gro = False         # True when the socket coalesces datagrams (UDP_GRO)

    # -- IBackend ----------------------------------------------------------------

    def prepare(self, config):
        return defer.maybeDeferred(self._prepare, config)

    def _prepare(self, config):
        port = backend_port(config.backend)
        want_offload = _off.offload_option(config.backend) and self._offload_allowed
        self.port = port
        self.routes = RouteTable(port)
        self.mtu = self.ext_iface.mtu - ENCAP_OVERHEAD
        tun = None
        if want_offload:
            try:
                tun = self._tun_opener(self._tun_name, vnet_hdr=True)
            except TunError as e:
                self.log.warn("udp backend: no TUN offloads ({e}); plain mode only", e=e)
        if tun is None:
            tun = self._tun_opener(self._tun_name)
        self.offload = bool(getattr(tun, "vnet_hdr", False))
        addr = str(self.ext_iface.addr)
        try:
            udp_port = self._reactor.listenUDP(port, _UdpProtocol(self), interface=addr,
                                               maxPacketSize=READ_BUFFER)
        except CannotListenError as e:
            tun.close()
            raise UdpBackendError("udp backend: cannot listen on UDP %s:%d: %s"
                                  % (addr, port, e.socketError)) from e
        except BaseException:
            tun.close()
            raise
        self.tun = tun
        self._udp_port = udp_port
        sock = udp_port.getHandle()
        for force, opt in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
            try:        # best effort: absorb bursts between reactor wake-ups
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # *BUFFORCE (root)
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:
                    pass
        try:
            sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
            self.udp_gro = True
        except OSError as e:
            self.log.info("udp backend: no UDP GRO ({e}); one read per datagram", e=e)
        # Our own reader drains the socket (see the module docstring).
        udp_port.stopReading()
        self._sock = sock
        self._sock_reader = _Reader(sock.fileno(), self._drain_udp, lambda reason: None,
                                    "udp-backend-socket")
        self._reactor.addReader(self._sock_reader)
        # Straight to the socket: Port.write() re-validates the address string on
        # every packet; peer addresses here come from the route table, already valid.
        self._sendto = sock.sendto
        self._sendmsg = sock.sendmsg
        self.log.info("udp backend: TUN {tun}, UDP {addr}:{port}, MTU {mtu}, offload {offload}",
                      tun=tun.name, addr=addr, port=port, mtu=self.mtu,
                      offload="on" if self.offload else "off")
        return LeaseAttrs(public_ip=self.ext_iface.public_ip,
                          backend_data=_off.lease_backend_data(self.offload))

    def start(self, config, lease):
        if self.tun is None:
            return defer.fail(UdpBackendError("udp backend: start() before prepare()"))
        self._set_own_subnet(lease.subnet)
        network_address = self.own_subnet.network_address
        address = IPv4Interface("%s/32" % (network_address,))
        d = threads.deferToThread(self._netlink.configure_tun, self.tun.name, address,
                                  self.mtu, IPv4Network(config.network), **self._gso_kw())

        def configured(_):
            if self.tun is None:      # stopped meanwhile
                return None
            self._reader = _Reader(self.tun.fileno(), self._drain_tun, self._tun_lost,
                                  "udp-backend-tun")
            self._reactor.addReader(self._reader)
            self.log.info("udp backend: {tun} has {address}, route {network}; forwarding",
                          tun=self.tun.name, address=address, network=config.network)
            return None

        return d.addCallback(configured)

    def reconfigure(self, config, lease):
        """
        Our lease moved to another subnet (it was lost and re-acquired): give the tun
        the new .0 address. The reader and the socket stay as they are.

        @return: Deferred firing when the kernel has the new address.
        """
        if self.tun is None:
            return defer.fail(UdpBackendError("udp backend: reconfigure() before prepare()"))
        self._set_own_subnet(lease.subnet)
        address = IPv4Interface("%s/32" % (self.own_subnet.network_address,))
        return threads.deferToThread(self._netlink.configure_tun, self.tun.name, address,
                                     self.mtu, IPv4Network(config.network), **self._gso_kw())

    def _gso_kw(self):
        return {}

    def _set_own_subnet(self, subnet):
        """Our lease's subnet: never routed to, the only destination delivered."""
        self.own_subnet = IPv4Network(subnet)
        self.routes.remove(self.own_subnet)
        self._tun_ip = int(self.own_subnet.network_address)
        self._own_mask = int(self.own_subnet.netmask)
        self._own_net = self._tun_ip

    def handle_events(self, events):
        for event in events:
            try:
                lease = event.lease
                subnet = lease.subnet
                if subnet == self.own_subnet:
                    continue
                if event.kind == ADDED:
                    self.routes.set(subnet, lease.attrs.public_ip,
                                    self.offload and _off.peer_offload(lease.attrs))
                elif event.kind == REMOVED:
                    self.routes.remove(subnet)
                    if not self.routes.is_peer(str(lease.attrs.public_ip)):
                        self.reassembler.forget(str(lease.attrs.public_ip))
            except Exception:
                self.log.failure("udp backend: bad lease event {event!r}", event=event)

    def stop(self):
        if self._reader is not None:
            self._reactor.removeReader(self._reader)
            self._reader = None
        if self._sock_reader is not None:
            self._reactor.removeReader(self._sock_reader)
            self._sock_reader = None
            self._sock = None
        d = defer.succeed(None)
        if self._udp_port is not None:
            d = defer.maybeDeferred(self._udp_port.stopListening)
            self._udp_port = None
            self._sendto = None
            self._sendmsg = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        return d

    # -- tun -> udp ----------------------------------------------------------------

    def _tun_read_failed(self, tun, e):
        """A read error other than EAGAIN (e.g. the device was deleted under us)."""
        # stop polling a dead fd rather than spin on it
        self.log.error("udp backend: reading {tun} failed, no longer forwarding "
                       "from it: {e}", tun=tun.name, e=e)
        if self._reader is not None:
            self._reactor.removeReader(self._reader)
            self._reader = None

    def _drain_tun(self):
        """
        Read up to READS_PER_WAKEUP packets from the TUN. Consecutive packets for the
        same peer with the same length (a TCP stream's full-sized segments, a burst of
        small datagrams) are gathered back to back at the front of C{self._buf} and
        leave in one UDP GSO sendmsg (at most GSO_MAX_SEGMENTS, GSO_MAX_BYTES; a
        shorter packet may end a run). In offloaded mode each read brings a vnet header
        first: a plain packet is moved down over it to join the run, a super-packet is
        sent on its own (after the run before it, to keep the order).
        """
        tun = self.tun
        if tun is None:
            return
        readinto = getattr(tun, "readinto", None)
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
        try:
            for _ in range(READS_PER_WAKEUP):
                try:
                    if readinto is not None:
                        n = readinto(view[off:off + chunk])
                    else:
                        data = tun.read()
                        n = len(data)
                        buf[off:off + n] = data
                except BlockingIOError:
                    return
                except InterruptedError:
                    continue
                except OSError as e:
                    if e.errno == errno.EAGAIN:
                        return
                    self._tun_read_failed(tun, e)
                    return
                counters["tun_packets_in"] += 1
                counters["tun_bytes_in"] += n - hdr
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
                    self._count_error("udp backend: error handling a packet from the tun")
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
                self._count_error("udp backend: error sending to {peer}", peer=peer)
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
        flags, gso, _hl, gso_size, cstart, coff = _off.parse_vnet(buf, off)
        if gso & ~_off.GSO_ECN:
            if gso & ~_off.GSO_ECN != _off.GSO_TCPV4 or pkt[9] != 6 or not gso_size:
                counters["bad-header"] += 1
                return None
            self._super = (entry, gso_size)
            return _SUPER
        if flags & _off.F_NEEDS_CSUM:
            _off.finish_checksum(buf, ip, plen, cstart, coff)
        buf[off:off + plen] = buf[ip:ip + plen]
        return entry[1]

    def _send_super(self, off, n):
        """The TCP super-packet at C{self._buf[off:off+n]} (vnet header first), checked
        by L{_prepare_vnet}: one frame to an offloading peer, else flanneld's segments."""
        entry, gso_size = self._super
        peer = entry[1]
        if (entry[2] and _off.check_vnet(self._buf, off, n - VNET, self.mtu) is None
                and self._send_frame(self._view[off:off + n], n, peer)):
            return
        self.counters["gso_segmented"] += 1
        self._send_segments(_off.segment_tcp4(self._buf, off + VNET, n - VNET, gso_size), peer)

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
        if self._tun_ip is None:
            return
        reply = _pkt.icmp_net_unreachable(pkt, self._tun_ip)
        if reply is None:
            return
        if self._write_tun(_ZERO_VNET + reply if self.offload else reply):
            self.counters["icmp_unreachable"] += 1

    def _write_tun(self, data):
        try:
            self.tun.write(data)
        except OSError as e:
            self.counters["tun-write-error"] += 1
            self.log.debug("udp backend: tun write failed: {e}", e=e)
            return False
        self.counters["tun_packets_out"] += 1
        self.counters["tun_bytes_out"] += len(data) - (VNET if self.offload else 0)
        return True

    def _tun_lost(self, reason):
        self._reader = None
        self.log.error("udp backend: TUN reader lost: {reason}", reason=reason)

    # -- udp -> tun ----------------------------------------------------------------

    def _drain_udp(self):
        sock = self._sock
        if sock is None:
            return
        recv = sock.recvmsg_into
        into = [self._rview[VNET:]]
        handle = self._from_udp_at
        for _ in range(READS_PER_WAKEUP):
            try:
                n, anc, flags, addr = recv(into, _GRO_CMSG)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # e.g. ICMP port unreachable reported on the socket: keep reading
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                self.log.debug("udp backend: socket error {e}", e=e)
                continue
            try:
                if flags & socket.MSG_TRUNC:
                    self.counters["packets_in"] += 1
                    self.counters["bytes_in"] += n
                    self.counters["bad-header"] += 1
                    continue
                gro = 0
                for level, kind, data in anc:
                    if level == socket.SOL_UDP and kind == UDP_GRO:
                        gro = _GRO_SIZE(data)[0]
                if 0 < gro < n:
                    # datagrams of gro bytes (the last may be shorter), coalesced: a
                    # run of one frame's segments in one go, else one by one
                    if self.offload and self._frame_run(n, gro, addr):
                        continue
                    for off in range(VNET, VNET + n, gro):
                        handle(off, min(gro, VNET + n - off), addr)
                else:
                    handle(VNET, n, addr)
            except Exception:
                self._count_error("udp backend: error handling a datagram from {addr}",
                                  addr=addr)

    def _frame_run(self, n, seg, addr):
        """
        A coalesced read at C{self._rbuf[VNET:VNET+n]} that may be consecutive segments
        of one frame: taken whole when it is (True), else False and nothing counted.
        """
        if self._rbuf[VNET] != _FRAME_MAGIC:
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
        self._deliver(frame, memoryview(frame), VNET, plen, 0, addr,
                      _off.check_vnet(frame, 0, plen, self.mtu))

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
        if n and rbuf[base] == _FRAME_MAGIC and self.offload:
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
        if self.tun is not None:
            self._write_tun(view[start:ip + plen])

    def _from_udp(self, data, addr):
        """One datagram given as bytes (tests, and Twisted's reader if it ever runs)."""
        n = len(data)
        if n > READ_BUFFER:
            data = data[:READ_BUFFER]
            n = READ_BUFFER
        self._rbuf[VNET:VNET + n] = data
        try:
            self._from_udp_at(VNET, n, addr)
        except Exception:
            self._count_error("udp backend: error handling a datagram from {addr}", addr=addr)

    def _count_error(self, fmt, **kw):
        """Count an unexpected per-packet error; log the first few, then every 1000th."""
        n = self.counters["error"] = self.counters["error"] + 1
        if n <= 10 or n % 1000 == 0:
            self.log.failure(fmt + " (error #{n})", level=LogLevel.debug, n=n, **kw)
