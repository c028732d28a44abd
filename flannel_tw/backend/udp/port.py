# -*- test-case-name: tests.unit.test_udp_port -*-
"""
L{DrainingPort}: the udp backend's UDP port on 8285, a L{twisted.internet.udp.Port}
whose C{doRead} drains the socket the way a data path needs, and hands what it reads
to its protocol (an L{IDatagramRunReceiver}, the receive path).

Twisted's own reader allocates a 64 KB bytes object per datagram and stops after 256 KB
a wake-up; this one reads up to L{READS_PER_WAKEUP} datagrams a wake-up with
C{recvmsg_into} straight into the protocol's reusable buffer (no per-datagram
allocation), and with UDP_GRO on the socket one read may bring a run of datagrams
from one peer coalesced, their size in the UDP_GRO cmsg.

After the first datagram of a wake-up that follows a lone one (a wake-up that read a
single datagram), C{follow} is called before the socket is read again: the udp backend
drains the TUN there, where the reply to a lone packet is often queued already (the
kernel answers while the TUN write is in progress), so it leaves in the same wake-up
(issue 16).

With a C{clock} (the backend gives the reactor's), a wake-up at least C{lone_gap} (1 ms)
after the end of the last one, which read a single datagram, is a lone datagram's: one
recvmsg, its delivery and the follow-up, then back to the reactor, without the read
that finds the socket empty (epoll is level-triggered: a datagram queued behind it
wakes us again at once, and a wake-up that soon drains as above).
"""
import errno
import socket
import struct

from twisted.internet import udp
from twisted.logger import Logger

from flannel_tw.backend.udp.send import LONE_GAP   # the send path's quiet spell, both ways
from flannel_tw.interfaces import IDatagramRunReceiver

READS_PER_WAKEUP = 256
UDP_GRO = getattr(socket, "UDP_GRO", 104)
_GRO_CMSG = socket.CMSG_SPACE(4)
_GRO_SIZE = struct.Struct("=i").unpack_from   # the UDP_GRO cmsg: a native int
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


def _gro_size(anc):
    """The segment size in a recvmsg's ancillary data (UDP_GRO cmsg), else 0."""
    for level, kind, data in anc:
        if level == socket.SOL_UDP and kind == UDP_GRO:
            return _GRO_SIZE(data)[0]
    return 0


class DrainingPort(udp.Port):
    """
    A listening UDP port (IPv4) whose protocol provides L{IDatagramRunReceiver}.
    Start it with C{startListening()} (what C{reactor.listenUDP} does). Socket errors
    other than EAGAIN (an ICMP port unreachable reported on the socket) are logged at
    debug level and reading goes on.
    """

    log = Logger()

    def __init__(self, port, proto, interface="", maxPacketSize=65535, reactor=None):
        if not IDatagramRunReceiver.providedBy(proto):
            raise TypeError("DrainingPort needs an IDatagramRunReceiver, got %r" % (proto,))
        udp.Port.__init__(self, port, proto, interface, maxPacketSize, reactor)

    def enable_gro(self):
        """Ask for UDP_GRO on the socket. Raises OSError if the kernel refuses it."""
        self.socket.setsockopt(socket.SOL_UDP, UDP_GRO, 1)

    # called (no arguments) after the first datagram of a wake-up that follows a lone
    # one (a wake-up that read a single datagram), before the socket is read again:
    # the udp backend drains the TUN there, where the reply to a lone packet is often
    # queued already (issue 16). None: nothing is called. It must not raise.
    follow = None
    _lone = False
    # clock() in seconds, or None: every wake-up drains the socket
    clock = None
    lone_gap = LONE_GAP
    _last = 0.0             # clock() at the end of the last wake-up

    def doRead(self):
        clock = self.clock
        if clock is None:
            return self._drain()
        if self._lone and clock() - self._last >= self.lone_gap:
            try:
                return self._read_one()
            finally:
                self._last = clock()
        try:
            return self._drain()
        finally:
            self._last = clock()

    def _read_one(self):
        """A lone datagram's wake-up: one recvmsg, its delivery, the follow-up."""
        proto = self.protocol
        try:
            n, anc, flags, addr = self.socket.recvmsg_into([proto.receiveBuffer()],
                                                           _GRO_CMSG)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno not in _AGAIN:
                self.log.debug("udp backend: socket error {e}", e=e)
            return
        self._handle_one(n, anc, flags, addr)

    def _handle_one(self, n, anc, flags, addr):
        """What one recvmsg brought (C{_read_one}'s, or the udp backend's lone path's):
        handed to the protocol, then the follow-up."""
        proto = self.protocol
        if flags & socket.MSG_TRUNC:
            proto.truncatedReceived(n, addr)
            return
        gro = _gro_size(anc) if anc else 0
        if gro:
            self._lone = False               # a coalesced run: busy, drain next time
        proto.runReceived(n, gro, addr)
        if self.follow is not None:
            self.follow()

    def _drain(self):
        recv = self.socket.recvmsg_into
        proto = self.protocol
        into = [proto.receiveBuffer()]
        run = proto.runReceived
        lone = self._lone
        got = 0
        try:
            for _ in range(READS_PER_WAKEUP):
                try:
                    n, anc, flags, addr = recv(into, _GRO_CMSG)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    if e.errno in _AGAIN:
                        return
                    self.log.debug("udp backend: socket error {e}", e=e)
                    continue
                got += 1
                if flags & socket.MSG_TRUNC:
                    proto.truncatedReceived(n, addr)
                    continue
                gro = _gro_size(anc) if anc else 0
                if gro:
                    got += 1                 # a coalesced run: not a lone datagram
                run(n, gro, addr)
                if lone:
                    lone = False
                    if self.follow is not None:
                        self.follow()
        finally:
            if got:
                self._lone = got == 1
