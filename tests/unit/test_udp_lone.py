"""
flannel_tw.backend.udp.lone: the flat lone-packet path decides nothing the layered path
would decide differently. The same packet goes once through the flat path (a wake-up
after a quiet spell on the backend's clock, a task.Clock here) and once through the
layered one (no clock: every wake-up drains as before), in plain and offloaded mode,
both ways, good packets and every kind of bad one; the bytes that leave (to the peer,
into the TUN) and every counter must be the same.
"""
import struct

from twisted.internet import defer, reactor, task
from twisted.internet.task import deferLater

from flannel_tw.backend.udp import packet as P
from flannel_tw.backend.udp.offload import FRAME_MAGIC
from flannel_tw.model.events import ADDED, LeaseEvent
from flannel_tw.testing.faketun import FakeTun
from flannel_tw.testing.udp_fixtures import (
    BackendTestBase, OUR_SUBNET, OURS, PEER, PEER_SUBNET, STRANGER, config, lease, make_ipv4,
    wait_for)

VNET0 = bytes(10)


def with_options(pkt):
    """C{pkt} with a 4-byte NOP option (IHL 6), checksum recomputed."""
    hdr = bytearray(pkt[:20]) + b"\x01\x01\x01\x01"
    hdr[0] = 0x46
    struct.pack_into("!H", hdr, 2, len(pkt) + 4)
    hdr[10:12] = b"\0\0"
    struct.pack_into("!H", hdr, 10, P.internet_checksum(hdr))
    return bytes(hdr) + pkt[20:]


# from the TUN (our pod 10.1.15.2 to the peer's 10.1.7.3): the common case and every
# way out of it
FROM_TUN = {
    "good": make_ipv4(),
    "ttl-1": make_ipv4(ttl=1),
    "ttl-2": make_ipv4(ttl=2),
    "options": with_options(make_ipv4()),
    "total-below-read": make_ipv4() + b"trailer",
    "no-route": make_ipv4(dst="10.1.99.3"),
    "not-ipv4": b"\x60" + make_ipv4()[1:],
    "short": make_ipv4()[:19],
}

# from the peer's socket (its pod 10.1.7.3 to ours 10.1.15.2)
FROM_UDP = {
    "good": make_ipv4(src="10.1.7.3", dst="10.1.15.2"),
    "ttl-1": make_ipv4(src="10.1.7.3", dst="10.1.15.2", ttl=1),
    "options": with_options(make_ipv4(src="10.1.7.3", dst="10.1.15.2")),
    "total-below-read": make_ipv4(src="10.1.7.3", dst="10.1.15.2") + b"xx",
    "spoofed-source": make_ipv4(src="10.1.8.3", dst="10.1.15.2"),
    "own-source": make_ipv4(src="10.1.15.9", dst="10.1.15.2"),
    "foreign-destination": make_ipv4(src="10.1.7.3", dst="10.1.16.2"),
    "not-ipv4": b"\x60" + make_ipv4(src="10.1.7.3", dst="10.1.15.2")[1:],
    "frame-magic": bytes([FRAME_MAGIC]) + make_ipv4(src="10.1.7.3", dst="10.1.15.2")[1:],
    "short": b"\x45\x00\x00\x10",
}


class PlainTests(BackendTestBase):
    offload = False

    def make_backend(self, **kw):
        self.tun = FakeTun(vnet_hdr=self.offload)
        return BackendTestBase.make_backend(self, **kw)

    @defer.inlineCallbacks
    def started(self, peers=None):
        cfg = config(self.port, Offload=self.offload)
        yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease(OUR_SUBNET, OURS))
        self.backend.handle_events([LeaseEvent(ADDED, lease(PEER_SUBNET, PEER))])
        self.clock = task.Clock()

    def flat(self, on):
        """The flat path for the next wake-ups (on), or the layered one (off)."""
        b = self.backend
        b.sender._clock = self.clock.seconds if on else None
        b._udp_port.clock = self.clock.seconds if on else None
        b.sender.lone = b._udp_port._lone = True
        b._follow_skip = 0
        self.clock.advance(1)

    def counters(self):
        # a frame's first segment waits for the rest: each run starts with none pending
        self.backend.receiver.reassembler.forget(PEER)
        return dict(self.backend.counters)

    @staticmethod
    def delta(before, after):
        return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}

    @defer.inlineCallbacks
    def settle(self):
        yield deferLater(reactor, 0.03, lambda: None)

    @defer.inlineCallbacks
    def through_tun(self, pkt, on, peer):
        self.flat(on)
        before = self.counters()
        self.tun.peer.inject((VNET0 if self.offload else b"") + pkt)
        yield self.settle()
        got = list(peer.received)
        del peer.received[:]
        written = self.tun.peer.written()      # ICMP answers, if any
        return got, written, self.delta(before, self.counters())

    @defer.inlineCallbacks
    def through_udp(self, pkt, on, sock):
        self.flat(on)
        before = self.counters()
        sock.sendto(pkt, (OURS, self.port))
        yield self.settle()
        return self.tun.peer.written(), self.delta(before, self.counters())

    @defer.inlineCallbacks
    def test_from_the_tun_same_bytes_and_counters(self):
        peer = self.listen_peer()
        yield self.started()
        for name, pkt in FROM_TUN.items():
            flat = yield self.through_tun(pkt, True, peer)
            layered = yield self.through_tun(pkt, False, peer)
            self.assertEqual(flat, layered, name)
        # the common packet did take the flat path: sent, TTL decremented, one read
        flat = yield self.through_tun(FROM_TUN["good"], True, peer)
        self.assertEqual(flat[0][0][0][8], 63)
        self.assertEqual(flat[2]["packets_out"], 1)

    @defer.inlineCallbacks
    def test_from_the_socket_same_bytes_and_counters(self):
        yield self.started()
        peer = self.peer_socket(port=self.port + 1 if self.port < 65535 else 0)
        stranger = self.peer_socket(addr=STRANGER)
        for name, pkt in FROM_UDP.items():
            flat = yield self.through_udp(pkt, True, peer)
            layered = yield self.through_udp(pkt, False, peer)
            self.assertEqual(flat, layered, name)
        flat = yield self.through_udp(FROM_UDP["good"], True, stranger)
        layered = yield self.through_udp(FROM_UDP["good"], False, stranger)
        self.assertEqual(flat, layered, "unknown-peer")
        if self.backend.receiver.filter_sources:
            self.assertEqual(flat[1], {"packets_in": 1, "bytes_in": len(FROM_UDP["good"]),
                                       "unknown-peer": 1})
        written, counted = yield self.through_udp(FROM_UDP["good"], True, peer)
        self.assertEqual(len(written), 1)
        pkt = written[0][10:] if self.offload else written[0]
        self.assertEqual(pkt[8], 63)
        self.assertEqual(pkt[12:], FROM_UDP["good"][12:])
        if self.offload:
            self.assertEqual(written[0][:10], VNET0)
        self.assertEqual(counted["tun_packets_out"], 1)


class OffloadTests(PlainTests):
    offload = True

    @defer.inlineCallbacks
    def test_a_vnet_header_with_work_takes_the_layered_path(self):
        """A packet whose vnet header asks for a checksum: the layered path finishes it."""
        peer = self.listen_peer()
        yield self.started()
        pkt = make_ipv4(proto=17, payload=b"\x12\x34\x56\x78\x00\x14\x00\x00" + b"u" * 12)
        hdr = struct.pack("=BBHHHH", 1, 0, 0, 0, 20, 6)     # NEEDS_CSUM at 20+6
        results = []
        for on in (True, False):
            self.flat(on)
            before = self.counters()
            self.tun.peer.inject(hdr + pkt)
            yield wait_for(lambda: peer.received, what="the datagram")
            results.append((peer.received.pop(), self.delta(before, self.counters())))
        self.assertEqual(results[0], results[1])


class UnfilteredTests(PlainTests):
    """Without the source filter (--udp-filter-sources off): the own-subnet checks alone."""

    def make_backend(self, **kw):
        return PlainTests.make_backend(self, filter_sources=False, **kw)
