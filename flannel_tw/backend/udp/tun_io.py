# -*- test-case-name: tests.unit.test_udp_port, tests.unit.test_udp_backend -*-
"""
The udp backend's two ends at flannel0: L{TunReader}, the reactor-registered
descriptor that wakes the send path when the TUN has packets, and L{TunWriter}, which
writes a packet into the TUN and counts it (the receive path's deliveries and the send
path's ICMP replies).
"""
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.backend.udp.vnet import VNET_HDR_LEN


@implementer(IReadDescriptor)
class TunReader:
    """
    An L{ITun} as a reactor reader (no threads): each wake-up calls C{drain(tun)}, which
    reads what is ready (EAGAIN ends it; a lone packet's wake-up after a quiet spell
    reads just that one, L{flannel_tw.backend.udp.send}) and returns None, or returns the OSError that
    a read failed with (e.g. the device was deleted under us): the reader then stops
    polling the dead fd rather than spin on it. C{lost(reason)} is told when the reader
    stops for good (a failed read, or the reactor dropping the descriptor).
    """

    log = Logger()

    def __init__(self, reactor, tun, drain, lost=None):
        self._reactor = reactor
        self.tun = tun
        self._drain = drain
        self._lost = lost
        self.reading = False

    def startReading(self):
        if not self.reading:
            self.reading = True
            self._reactor.addReader(self)

    def stopReading(self):
        if self.reading:
            self.reading = False
            self._reactor.removeReader(self)

    def fileno(self):
        return self.tun.fileno()

    def logPrefix(self):
        return "udp-backend-tun"

    def doRead(self):
        error = self._drain(self.tun)
        if error is not None:
            self.log.error("udp backend: reading {tun} failed, no longer forwarding "
                           "from it: {e}", tun=self.tun.name, e=error)
            self.stopReading()
            self._tell_lost(error)

    def connectionLost(self, reason):
        self.reading = False
        self.log.error("udp backend: TUN reader lost: {reason}", reason=reason)
        self._tell_lost(reason)

    def _tell_lost(self, reason):
        if self._lost is not None:
            self._lost(self, reason)


class TunWriter:
    """Writes packets into C{tun} (an L{ITun}, or None before prepare/after stop) and
    counts them in C{counters}; in offloaded mode each packet has its vnet header."""

    log = Logger()

    def __init__(self, tun, counters, offload):
        self.tun = tun
        self._counters = counters
        self._hdr = VNET_HDR_LEN if offload else 0

    def write(self, data):
        """Write C{data}; True when it was written, else counted as tun-write-error."""
        tun = self.tun
        if tun is None:
            return False
        try:
            tun.write(data)
        except OSError as e:
            self._counters["tun-write-error"] += 1
            self.log.debug("udp backend: tun write failed: {e}", e=e)
            return False
        self._counters["tun_packets_out"] += 1
        self._counters["tun_bytes_out"] += len(data) - self._hdr
        return True
