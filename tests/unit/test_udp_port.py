"""
The udp backend's reactor-facing parts of its own: L{DrainingPort} (the UDP port on
8285 whose doRead drains the socket with recvmsg into its protocol's buffer, UDP GRO
runs included) on a real loopback socket, and L{TunReader} (the TUN as a reactor
reader) with a FakeTun and a MemoryReactor.
"""
import errno
import socket
import struct

from twisted.internet import reactor
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from flannel_tw.backend.udp.port import READS_PER_WAKEUP, DrainingPort
from flannel_tw.backend.udp.tun_io import TunReader
from flannel_tw.interfaces import IDatagramRunReceiver
from flannel_tw.testing.faketun import FakeTun
from flannel_tw.testing.udp_fixtures import RecvProxy, recording


@implementer(IDatagramRunReceiver)
class RunRecorder(DatagramProtocol):
    """Records what the port hands over: ("run", bytes, seg, addr) / ("trunc", n, addr)."""

    noisy = False

    def __init__(self, size=65535):
        self.buf = bytearray(size)
        self.got = []

    def receiveBuffer(self):
        return memoryview(self.buf)

    def runReceived(self, n, seg, addr):
        self.got.append(("run", bytes(self.buf[:n]), seg, addr))

    def truncatedReceived(self, n, addr):
        self.got.append(("trunc", n, addr))

    def datagramReceived(self, data, addr):     # pragma: no cover - the port never calls it
        self.got.append(("bytes", data, addr))


class DrainingPortTests(TestCase):
    def listen(self, proto):
        port = DrainingPort(0, proto, interface="127.0.0.1", reactor=reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        port.stopReading()          # doRead is driven by hand below
        sock = port.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        return port, ("127.0.0.1", port.getHost().port)

    def sender(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        return s

    def test_refuses_a_plain_protocol(self):
        self.assertRaises(TypeError, DrainingPort, 0, DatagramProtocol())

    def test_datagrams_one_by_one(self):
        proto = RunRecorder()
        verifyObject(IDatagramRunReceiver, proto)
        port, addr = self.listen(proto)
        s = self.sender()
        s.sendto(b"first", addr)
        s.sendto(b"second!", addr)
        port.doRead()
        me = s.getsockname()
        self.assertEqual(proto.got, [("run", b"first", 0, me), ("run", b"second!", 0, me)])
        port.doRead()               # nothing queued: EAGAIN ends the read at once
        self.assertEqual(len(proto.got), 2)

    def test_lone_datagram_after_a_quiet_spell_is_one_recv(self):
        """With a clock: after a wake-up that read a single datagram, a wake-up at least
        lone_gap later reads one datagram (and calls the follow-up) and returns, without
        the read that finds the socket empty; one sooner drains again."""
        from twisted.internet.task import Clock
        proto = RunRecorder()
        port, addr = self.listen(proto)
        clock = Clock()
        port.clock = clock.seconds
        follows = []
        port.follow = lambda: follows.append(len(proto.got))
        recvs = []
        port.socket = RecvProxy(port.socket, recording(port.socket.recvmsg_into, recvs,
                                                       "recv", "eagain"))
        s = self.sender()
        s.sendto(b"one", addr)
        port.doRead()               # no lone wake-up before: drained to EAGAIN
        self.assertEqual(recvs, ["recv", "eagain"])
        clock.advance(port.lone_gap)
        s.sendto(b"two", addr)
        s.sendto(b"three", addr)
        del recvs[:]
        port.doRead()               # a lone wake-up: one recv, the follow-up, back
        self.assertEqual(recvs, ["recv"])
        self.assertEqual([g[1] for g in proto.got], [b"one", b"two"])
        self.assertEqual(follows, [2])
        port.doRead()               # woken again at once: "three" is queued behind
        self.assertEqual(recvs, ["recv", "recv", "eagain"])
        self.assertEqual([g[1] for g in proto.got], [b"one", b"two", b"three"])
        self.assertEqual(follows, [2, 3])

    def test_drains_at_most_a_batch_per_wakeup(self):
        proto = RunRecorder()
        port, addr = self.listen(proto)
        s = self.sender()
        total = READS_PER_WAKEUP + 44
        for i in range(total):
            s.sendto(struct.pack("!I", i), addr)
        port.doRead()
        self.assertEqual(len(proto.got), READS_PER_WAKEUP)
        port.doRead()
        self.assertEqual([struct.unpack("!I", g[1])[0] for g in proto.got], list(range(total)))

    def test_truncated_datagram(self):
        proto = RunRecorder(size=100)
        port, addr = self.listen(proto)
        s = self.sender()
        s.sendto(b"x" * 300, addr)
        s.sendto(b"ok", addr)
        port.doRead()
        me = s.getsockname()
        self.assertEqual(proto.got, [("trunc", 100, me), ("run", b"ok", 0, me)])

    def test_gro_run(self):
        """A UDP GSO send arrives as one coalesced read; the cmsg's size is handed over."""
        proto = RunRecorder()
        port, addr = self.listen(proto)
        try:
            port.enable_gro()
        except OSError as e:
            raise SkipTest("this kernel has no UDP_GRO: %s" % (e,))
        s = self.sender()
        data = bytes(range(200)) * 5 + b"tail"      # 1004 bytes: 3 x 300 + 104
        s.sendmsg([data], [(socket.SOL_UDP, 103, struct.pack("=H", 300))], 0, addr)
        port.doRead()
        self.assertEqual(proto.got, [("run", data, 300, s.getsockname())])

    def test_socket_errors_are_skipped(self):
        """An error other than EAGAIN (e.g. a queued ICMP error) does not end the drain."""
        proto = RunRecorder()
        port, addr = self.listen(proto)

        class Sock:
            def __init__(self):
                self.results = [OSError(errno.ECONNREFUSED, "refused"),
                                (2, [], 0, ("127.0.0.9", 1)),
                                InterruptedError()]

            def recvmsg_into(self, buffers, ancsize):
                r = self.results.pop(0)
                if isinstance(r, BaseException):
                    raise r
                buffers[0][:2] = b"hi"
                return r
        real = port.socket
        port.socket = Sock()
        try:
            port.doRead()
        finally:
            port.socket = real
        self.assertEqual(proto.got, [("run", b"hi", 0, ("127.0.0.9", 1))])


class TunReaderTests(TestCase):
    def setUp(self):
        self.tun = FakeTun()
        self.addCleanup(self.tun.peer.close)
        self.addCleanup(self.tun.close)
        self.reactor = MemoryReactor()
        self.drained = []
        self.result = None
        self.lost = []

    def drain(self, tun):
        self.drained.append(tun.read())
        return self.result

    def reader(self):
        return TunReader(self.reactor, self.tun, self.drain,
                         lambda r, reason: self.lost.append((r, reason)))

    def test_registers_with_the_reactor(self):
        r = self.reader()
        verifyObject(IReadDescriptor, r)
        self.assertEqual(r.fileno(), self.tun.fileno())
        r.startReading()
        r.startReading()
        self.assertEqual(self.reactor.getReaders(), [r])
        r.stopReading()
        r.stopReading()
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertFalse(r.reading)

    def test_wakeup_drains_the_tun(self):
        r = self.reader()
        r.startReading()
        self.tun.inject(b"pkt")
        r.doRead()
        self.assertEqual(self.drained, [b"pkt"])
        self.assertTrue(r.reading)
        self.assertEqual(self.lost, [])

    def test_failed_read_stops_reading(self):
        r = self.reader()
        r.startReading()
        self.tun.inject(b"pkt")
        self.result = OSError(errno.EBADFD, "File descriptor in bad state")
        r.doRead()
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertEqual(self.lost, [(r, self.result)])
        self.flushLoggedErrors()

    def test_connection_lost(self):
        r = self.reader()
        r.startReading()
        r.connectionLost("gone")
        self.assertFalse(r.reading)
        self.assertEqual(self.lost, [(r, "gone")])
