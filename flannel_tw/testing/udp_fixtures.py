"""Test helpers (formerly in tests/test_udp_backend.py), shared by
tests/lab/test_udp_backend.py, tests/unit/test_fuzz.py, tests/unit/test_offload.py,
tests/unit/test_udp_backend.py, tests/unit/test_udp_port.py.
(No test module imports another: what several need lives here.)"""

import socket
import struct
import time
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from flannel_tw.backend.udp.backend import UdpBackend
from flannel_tw.model.config import NetworkConfig
from flannel_tw.model.events import ADDED, LeaseEvent
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.testing.fakes import FakeNetlink
from flannel_tw.testing.faketun import FakeTun
from flannel_tw.backend.udp import packet as P


NETWORK = IPv4Network("10.1.0.0/16")
OUR_SUBNET = IPv4Network("10.1.15.0/24")
PEER_SUBNET = IPv4Network("10.1.7.0/24")
OURS = "127.0.0.1"
PEER = "127.0.0.2"
STRANGER = "127.0.0.3"


def make_ipv4(src="10.1.15.2", dst="10.1.7.3", ttl=64, proto=17, payload=b"hello world!"):
    total = 20 + len(payload)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x1234, 0x4000, ttl, proto,
                                0, IPv4Address(src).packed, IPv4Address(dst).packed))
    struct.pack_into("!H", hdr, 10, P.internet_checksum(hdr))
    return bytes(hdr) + payload


def header_ok(pkt):
    return P.ones_complement_sum(pkt, 0, P.header_length(pkt)) == 0xFFFF


def free_port():
    """A UDP port free on both 127.0.0.1 and 127.0.0.2 (checked just now)."""
    for _ in range(50):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            a.bind((OURS, 0))
            port = a.getsockname()[1]
            b.bind((PEER, port))
            return port
        except OSError:
            continue
        finally:
            a.close()
            b.close()
    raise RuntimeError("no free UDP port")


def config(port=None, **backend):
    b = {"Type": "udp"}
    if port is not None:
        b["Port"] = port
    b.update(backend)
    return NetworkConfig(network=NETWORK, subnet_len=24,
                         subnet_min=IPv4Address("10.1.1.0"),
                         subnet_max=IPv4Address("10.1.255.0"),
                         backend_type="udp", backend=b)


def lease(subnet, public_ip):
    return Lease(subnet=IPv4Network(subnet),
                 attrs=LeaseAttrs(public_ip=IPv4Address(public_ip)), ttl=86400)


EXT = ExtIface(name="lo", index=1, addr=IPv4Address(OURS), public_ip=IPv4Address(OURS),
               mtu=1500)


class Collector(DatagramProtocol):
    def __init__(self):
        self.received = []

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))


def recording(fn, calls, done, again=None):
    """C{fn} wrapped: each call appends C{done} to C{calls}, or C{again} when C{fn}
    raises BlockingIOError (re-raised; C{again} None: nothing appended then)."""
    def call(*args):
        try:
            result = fn(*args)
        except BlockingIOError:
            if again is not None:
                calls.append(again)
            raise
        calls.append(done)
        return result
    return call


class RecvProxy:
    """A port's socket with recvmsg_into replaced (socket objects take no attributes)."""

    def __init__(self, sock, recvmsg_into):
        self._sock = sock
        self.recvmsg_into = recvmsg_into

    def __getattr__(self, name):
        return getattr(self._sock, name)


@defer.inlineCallbacks
def wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % (what,))
        yield task.deferLater(reactor, 0.005, lambda: None)


class BackendTestBase(TestCase):
    def setUp(self):
        self.port = free_port()
        self.tun = FakeTun()
        self.opened = []
        self.netlink = FakeNetlink()
        self.backend = self.make_backend()
        self.addCleanup(self._cleanup)

    def make_backend(self, **kw):
        def opener(name, **kw):
            self.opened.append(name)
            return self.tun
        return UdpBackend(reactor, EXT, tun_opener=opener, netlink=self.netlink, **kw)

    @defer.inlineCallbacks
    def _cleanup(self):
        yield self.backend.stop()
        self.tun.close()
        self.tun.peer.close()

    @defer.inlineCallbacks
    def started(self, peers=((PEER_SUBNET, PEER),)):
        cfg = config(self.port)
        yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease(OUR_SUBNET, OURS))
        self.backend.handle_events([LeaseEvent(ADDED, lease(s, ip)) for s, ip in peers])

    def listen_peer(self, addr=PEER):
        proto = Collector()
        port = reactor.listenUDP(self.port, proto, interface=addr)
        self.addCleanup(port.stopListening)
        sock = port.getHandle()
        try:    # bursts of 256 packets per wake-up must not overflow loopback
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 1 << 23)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        return proto

    def peer_socket(self, addr=PEER, port=0):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.bind((addr, port))
        return s
