# -*- test-case-name: tests.unit.test_udp_backend -*-
"""
A fake TUN device for unit tests: one end of an AF_UNIX SOCK_SEQPACKET socketpair, so
packet boundaries are kept and the reactor can really poll it. The test drives the
other end through L{FakeTun.peer}: C{inject(packet)} makes a packet readable on the
"tun", C{written()} returns what the code under test wrote to it.
"""
import socket

from zope.interface import implementer

from flannel_tw.interfaces import ITun

READ_SIZE = 65535


class FakeTunPeer:
    """The "kernel" side of a L{FakeTun}."""

    def __init__(self, sock):
        self._sock = sock
        self._sock.setblocking(False)

    def inject(self, packet):
        """Queue C{packet} for the code under test to read from the tun."""
        self._sock.send(bytes(packet))

    def written(self):
        """All packets written to the tun since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self._sock.recv(READ_SIZE))
            except BlockingIOError:
                return out

    def fileno(self):
        return self._sock.fileno()

    def close(self):
        self._sock.close()


@implementer(ITun)
class FakeTun:
    """
    Provides L{ITun} (checked against the real devices' signatures in
    tests.unit.test_udp_backend.FakeTunTests). With C{vnet_hdr} it
    stands for a TUN opened with IFF_VNET_HDR: the test injects and reads packets
    with their 10-byte virtio_net_hdr (the fake passes bytes through either way).
    """

    def __init__(self, name="flannel0", vnet_hdr=False):
        self.name = name
        self.vnet_hdr = vnet_hdr
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # room for bursts in the tests
        for s in (a, b):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
                except OSError:  # pragma: no cover
                    pass
        a.setblocking(False)
        self._sock = a
        self.peer = FakeTunPeer(b)
        self.closed = False

    def fileno(self):
        return self._sock.fileno()

    def read(self):
        return self._sock.recv(READ_SIZE)

    def readinto(self, buf):
        return self._sock.recv_into(buf)

    def write(self, packet):
        return self._sock.send(packet)

    def close(self):
        if not self.closed:
            self.closed = True
            self._sock.close()

    # conveniences
    def inject(self, packet):
        self.peer.inject(packet)

    def written(self):
        return self.peer.written()
