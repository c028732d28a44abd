"""Tests for the udp backend's IPv6 (issue 15): inner IPv6 packets between flannel-tw
hosts over the same IPv4 UDP wire (port 8285, PublicIP), routed by the peers' IPv6
subnets; flanneld peers (no BackendV6Data marker) never get IPv6. On the real reactor
with a FakeTun and UDP sockets on loopback, in plain and in offloaded mode."""
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, IPv6Network

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from flannel_tw.backend.udp import offload as O
from flannel_tw.backend.udp import vnet as V
from flannel_tw.backend.udp.backend import (UdpBackend, lease_backend_v6_data,
                                            peer_carries_ipv6)
from flannel_tw.backend.udp.ipv6 import v6_route
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.testing.fakes import FakeNetlink
from flannel_tw.testing.faketun import FakeTun
from flannel_tw.testing.udp_fixtures import (
    BackendTestBase, EXT, OURS, OUR_SUBNET, PEER, PEER_SUBNET, config, free_port, make_ipv4,
    wait_for)
from flannel_tw.testing.udp6_fixtures import (
    FLANNELD, FLANNELD6, FLANNELD_SUBNET, NETWORK6, OUR6, PEER6, V6_DATA, config6, icmp6_ok,
    lease6, make_ipv6)

class MarkerTests(BackendTestBase):

    def test_marker(self):
        self.assertEqual(lease_backend_v6_data(True), V6_DATA)
        self.assertIsNone(lease_backend_v6_data(False))
        a = LeaseAttrs(public_ip=IPv4Address(PEER))
        self.assertTrue(peer_carries_ipv6(replace(a, backend_v6_data=V6_DATA)))
        for junk in (None, {}, {"FlannelTW": 1}, {"FlannelTW": {"UDPv6": "1"}},
                     {"FlannelTW": {"UDPv6": 2}}, {"FlannelTW": {"UDPv6": True}}, [1],
                     {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}):
            self.assertFalse(peer_carries_ipv6(replace(a, backend_v6_data=junk)), junk)

    def test_which_v6_subnet_is_routed(self):
        peer = lease6(PEER_SUBNET, PEER6, PEER)
        self.assertEqual(v6_route(peer, True, OUR6), PEER6)
        self.assertIsNone(v6_route(peer, False, OUR6))                  # IPv4-only config
        self.assertIsNone(v6_route(replace(peer, ipv6_subnet=None), True, OUR6))
        self.assertIsNone(v6_route(lease6(PEER_SUBNET, PEER6, PEER, v6_data=None), True, OUR6))
        self.assertIsNone(v6_route(lease6(PEER_SUBNET, IPv6Network("fc00:0:0:f::/80"), PEER),
                                   True, OUR6))                         # overlaps ours
        self.assertEqual(v6_route(peer, True, None), PEER6)

    @defer.inlineCallbacks
    def test_lease_advertises_ipv6_only_when_enabled(self):
        attrs = yield self.backend.prepare(config6(self.port))
        self.assertEqual(attrs.backend_v6_data, V6_DATA)
        yield self.backend.stop()
        b = self.make_backend()
        self.addCleanup(b.stop)
        attrs = yield b.prepare(config(self.port))
        self.assertIsNone(attrs.backend_v6_data)


class DualStackTests(BackendTestBase):
    """Plain mode (flanneld's format on the wire, IPv6 inside)."""

    vnet = False

    def setUp(self):
        BackendTestBase.setUp(self)
        if self.vnet:
            self.tun = FakeTun(vnet_hdr=True)

    def make_backend(self, **kw):
        def opener(name, vnet_hdr=False):
            return self.tun
        kw.setdefault("environ", {})
        kw.setdefault("offload", None if self.vnet else False)
        return UdpBackend(reactor, EXT, tun_opener=opener, netlink=self.netlink, **kw)

    @defer.inlineCallbacks
    def started(self, ipv6=True):
        cfg = config6(self.port) if ipv6 else config(self.port)
        yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease6(OUR_SUBNET, OUR6, OURS))
        data = O.lease_backend_data(True)
        self.backend.handle_events([
            LeaseEvent(ADDED, lease6(PEER_SUBNET, PEER6, PEER, backend_data=data)),
            LeaseEvent(ADDED, lease6(FLANNELD_SUBNET, FLANNELD6, FLANNELD, v6_data=None))])

    def inject(self, pkt):
        self.tun.peer.inject(bytes(10) + pkt if self.vnet else pkt)

    def written(self):
        hdr = 10 if self.vnet else 0
        out = self.tun.peer.written()
        for p in out:
            if hdr:
                self.assertEqual(p[:10], bytes(10))
        return [p[hdr:] for p in out]

    @defer.inlineCallbacks
    def test_tun_configured_with_the_v6_address_and_route(self):
        yield self.started()
        self.assertEqual(self.netlink.v6, [(IPv6Interface("fc00:0:0:f::/128"), NETWORK6)])
        self.assertEqual(self.backend.routes.subnet6_of(PEER), [PEER6])
        self.assertEqual(self.backend.routes.subnet6_of(FLANNELD), [])

    @defer.inlineCallbacks
    def test_ipv4_only_config_leaves_ipv6_alone(self):
        yield self.started(ipv6=False)
        self.assertEqual(self.netlink.v6, [(None, None)])
        self.assertEqual(self.backend.routes.subnet6_of(PEER), [])
        self.inject(make_ipv6(src="fc00:0:0:f::2", dst="fc00:0:0:7::3"))
        yield wait_for(lambda: self.backend.counters["not-ipv4"] == 1, what="the drop")

    @defer.inlineCallbacks
    def test_tun_to_peer(self):
        peer = self.listen_peer()
        yield self.started()
        pkt = make_ipv6(src="fc00:0:0:f::2", dst="fc00:0:0:7::3", hops=64, payload=b"v6!" * 9)
        self.inject(pkt)
        yield wait_for(lambda: peer.received, what="datagram at the peer")
        data, addr = peer.received[0]
        self.assertEqual(addr, (OURS, self.port))
        self.assertEqual(data[7], 63)
        self.assertEqual(data[:7] + data[8:], pkt[:7] + pkt[8:])
        c = self.backend.counters
        self.assertEqual((c["packets_out"], c["bytes_out"]), (1, len(pkt)))

    @defer.inlineCallbacks
    def test_ipv4_and_ipv6_interleaved(self):
        peer = self.listen_peer()
        yield self.started()
        pkts = []
        for i in range(6):
            if i % 2:
                pkts.append(make_ipv6(src="fc00:0:0:f::2", dst="fc00:0:0:7::3",
                                      payload=b"%02d" % i + b"6" * 50))
            else:
                pkts.append(make_ipv4(src="10.1.15.2", dst="10.1.7.3",
                                      payload=b"%02d" % i + b"4" * 70))
        for p in pkts:
            self.inject(p)
        yield wait_for(lambda: len(peer.received) == 6, what="6 datagrams")
        got = [d for d, _ in peer.received]
        self.assertEqual([g[40:] if g[0] >> 4 == 6 else g[20:] for g in got],
                         [p[40:] if p[0] >> 4 == 6 else p[20:] for p in pkts])

    @defer.inlineCallbacks
    def test_flanneld_peer_gets_no_ipv6(self):
        """A dual-stack lease without the marker (flanneld's udp reads every packet as
        IPv4): IPv6 to its subnet is dropped and counted, answered with ICMPv6 no-route,
        never sent; IPv4 to it still flows."""
        other = self.listen_peer(addr=FLANNELD)
        yield self.started()
        pkt = make_ipv6(src="fc00:0:0:f::2", dst="fc00:0:0:8::3", nxt=6, payload=b"T" * 40)
        self.inject(pkt)
        self.inject(make_ipv4(src="10.1.15.2", dst="10.1.8.3"))
        yield wait_for(lambda: other.received, what="the IPv4 datagram")
        self.assertEqual([d[0] >> 4 for d, _ in other.received], [4])
        c = self.backend.counters
        self.assertEqual((c["no-route"], c["icmp_unreachable"]), (1, 1))
        reply, = self.written()
        self.assertEqual((reply[6], reply[40], reply[41]), (58, 1, 0))
        self.assertEqual(reply[8:24], IPv6Address("fc00:0:0:f::").packed)
        self.assertEqual(reply[24:40], pkt[8:24])
        self.assertEqual(reply[48:], pkt)
        self.assertTrue(icmp6_ok(reply))

    @defer.inlineCallbacks
    def test_hop_limit_expired(self):
        peer = self.listen_peer()
        yield self.started()
        self.inject(make_ipv6(src="fc00:0:0:f::2", dst="fc00:0:0:7::3", hops=1))
        self.inject(make_ipv6(src="fc00:0:0:f::2", dst="fc00:0:0:7::3", hops=2))
        yield wait_for(lambda: peer.received)
        self.assertEqual(len(peer.received), 1)
        self.assertEqual(self.backend.counters["ttl-expired"], 1)

    @defer.inlineCallbacks
    def test_peer_to_tun(self):
        yield self.started()
        sock = self.peer_socket(port=self.port)
        pkt = make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:f::2", hops=9, payload=b"in" * 20)
        sock.sendto(pkt, (OURS, self.port))
        yield wait_for(lambda: self.backend.counters["tun_packets_out"] == 1, what="delivery")
        got, = self.written()
        self.assertEqual(got[7], 8)
        self.assertEqual(got[:7] + got[8:], pkt[:7] + pkt[8:])

    @defer.inlineCallbacks
    def test_receive_checks(self):
        yield self.started()
        sock = self.peer_socket(port=self.port)
        flanneld = self.peer_socket(addr=FLANNELD, port=self.port)
        stranger = self.peer_socket(addr="127.0.0.9", port=self.port)
        to = (OURS, self.port)
        cases = [
            (sock, make_ipv6(src="fc00:0:0:9::3", dst="fc00:0:0:f::2"), "spoofed-source"),
            (sock, make_ipv6(src="fc00:0:0:f::5", dst="fc00:0:0:f::2"), "spoofed-source"),
            (sock, make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:9::2"), "foreign-destination"),
            (sock, make_ipv6(src="fc00:0:0:7::3", dst="ff02::1"), "foreign-destination"),
            (sock, make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:f::2", plen=99), "bad-header"),
            (sock, make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:f::2", hops=1), "ttl-expired"),
            (flanneld, make_ipv6(src="fc00:0:0:8::3", dst="fc00:0:0:f::2"), "spoofed-source"),
            (stranger, make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:f::2"), "unknown-peer"),
        ]
        for s, pkt, _ in cases:
            s.sendto(pkt, to)
        sock.sendto(make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:f::2", payload=b"ok"), to)
        c = self.backend.counters
        yield wait_for(lambda: c["tun_packets_out"] == 1 and c["packets_in"] == len(cases) + 1,
                       what="all datagrams handled")
        expected = {}
        for _, _, reason in cases:
            expected[reason] = expected.get(reason, 0) + 1
        self.assertEqual({k: c[k] for k in expected}, expected)
        got, = self.written()
        self.assertEqual(got[40:], b"ok")

    @defer.inlineCallbacks
    def test_lease_events_move_and_remove_the_v6_route(self):
        peer = self.listen_peer()
        yield self.started()
        b = self.backend
        moved = IPv6Network("fc00:0:0:17::/64")
        b.handle_events([LeaseEvent(ADDED, lease6(PEER_SUBNET, moved, PEER))])
        self.assertEqual(b.routes.subnet6_of(PEER), [moved])
        b.handle_events([LeaseEvent(ADDED, lease6(PEER_SUBNET, moved, PEER, v6_data=None))])
        self.assertEqual(b.routes.subnet6_of(PEER), [])
        b.handle_events([LeaseEvent(ADDED, lease6(PEER_SUBNET, PEER6, PEER))])
        b.handle_events([LeaseEvent(REMOVED, lease6(PEER_SUBNET, PEER6, PEER))])
        self.assertIsNone(b.routes.lookup6_entry(int(IPv6Address("fc00:0:0:7::3"))))
        self.assertEqual(peer.received, [])

    @defer.inlineCallbacks
    def test_own_subnet_is_never_routed(self):
        yield self.started()
        b = self.backend
        b.handle_events([LeaseEvent(ADDED, lease6("10.1.9.0/24", OUR6, "127.0.0.9"))])
        self.assertIsNone(b.routes.lookup6_entry(int(IPv6Address("fc00:0:0:f::3"))))


class DualStackOffloadTests(DualStackTests):
    """Offloaded mode: every TUN read and write has its vnet header; IPv6 packets travel
    without GSO (TUN_F_TSO6 is not asked for), their partial checksums completed."""

    vnet = True

    @defer.inlineCallbacks
    def test_partial_checksum_completed(self):
        """A UDP-in-IPv6 packet with NEEDS_CSUM (the kernel left the sum of the
        pseudo-header in the field) leaves with its checksum complete."""
        peer = self.listen_peer()
        yield self.started()
        self.assertTrue(self.backend.offload)
        src, dst = IPv6Address("fc00:0:0:f::2"), IPv6Address("fc00:0:0:7::3")
        body = b"checksum me" * 3
        udp = bytearray(struct.pack("!HHHH", 4000, 5000, 8 + len(body), 0) + body)
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(udp), 17)
        seed = V.csum_add(pseudo, 0, len(pseudo))
        struct.pack_into("!H", udp, 6, seed)
        pkt = make_ipv6(src=str(src), dst=str(dst), nxt=17, payload=bytes(udp))
        hdr = V.build_vnet(flags=V.F_NEEDS_CSUM, csum_start=40, csum_offset=6)
        self.tun.peer.inject(hdr + pkt)
        yield wait_for(lambda: peer.received, what="datagram at the peer")
        data, _ = peer.received[0]
        full = pseudo + data[40:]
        self.assertEqual(V.csum_add(full, 0, len(full)), 0)   # sums to 0xFFFF == 0 mod 0xFFFF
        self.assertEqual(data[40:46], bytes(udp[:6]))


# -- the receive path with IPv6 on, fuzzed ---------------------------------------------

class Receive6FuzzTests(TestCase):
    """Datagrams from the IPv6-carrying peer (and a flanneld one): nothing makes the
    receive path raise, and only IPv6 packets from the peer's v6 subnet to ours, with a
    hop to spare, reach the TUN, their hop limit decremented once."""

    @defer.inlineCallbacks
    def setUp(self):
        self.tun = FakeTun()
        self.backend = UdpBackend(reactor, EXT, tun_opener=lambda name, **kw: self.tun,
                                  netlink=FakeNetlink(), offload=False)
        cfg = config6(free_port())
        yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease6(OUR_SUBNET, OUR6, OURS))
        self.backend.handle_events([
            LeaseEvent(ADDED, lease6(PEER_SUBNET, PEER6, PEER)),
            LeaseEvent(ADDED, lease6(FLANNELD_SUBNET, FLANNELD6, FLANNELD, v6_data=None))])

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.backend.stop()
        self.tun.close()
        self.tun.peer.close()

    def deliver(self, data, source=PEER):
        errors = self.backend.counters["error"]
        self.backend.receiver.datagramReceived(data, (source, 8285))
        self.assertEqual(self.backend.counters["error"], errors, data[:64])
        written = self.tun.peer.written()
        for pkt in written:
            if pkt[0] >> 4 == 6:
                self.assertEqual(source, PEER)
                self.assertIn(IPv6Address(bytes(pkt[8:24])), PEER6)
                self.assertIn(IPv6Address(bytes(pkt[24:40])), OUR6)
                self.assertEqual(pkt[7], data[7] - 1)
                self.assertLessEqual(40 + ((pkt[4] << 8) | pkt[5]), len(pkt))
        return written

    addresses = st.one_of(
        st.ip_addresses(v=6),
        st.sampled_from(["fc00:0:0:f::", "fc00:0:0:7::", "::", "::1", "ff02::1", "fe80::1"]),
        st.integers(0, 0xFFFF).map(lambda k: "fc00:0:0:f::%x" % k),
        st.integers(0, 0xFFFF).map(lambda k: "fc00:0:0:7::%x" % k),
        st.integers(0, 0xFFFF).map(lambda k: "fc00:0:0:8::%x" % k))

    @settings(max_examples=600, deadline=None)
    @given(src=addresses, dst=addresses, hops=st.integers(0, 255),
           source=st.sampled_from([PEER, FLANNELD, "127.0.0.9"]))
    def test_well_formed_packets_with_any_addresses(self, src, dst, hops, source):
        data = make_ipv6(src=str(src), dst=str(dst), hops=hops)
        want = (source == PEER and IPv6Address(src) in PEER6 and IPv6Address(dst) in OUR6
                and hops > 1)
        self.assertEqual(len(self.deliver(data, source)), int(want))

    @settings(max_examples=800, deadline=None)
    @given(st.binary(max_size=1600).map(lambda b: b"\x60" + b[1:] if b else b)
           | st.binary(max_size=200))
    def test_arbitrary_datagrams(self, data):
        self.deliver(data)


class Reconfigure6Tests(BackendTestBase):
    """Our lease moved (lost and re-acquired): the TUN gets the new v6 address too, and
    the new v6 subnet is the one delivered."""

    def make_backend(self, **kw):
        return UdpBackend(reactor, EXT, tun_opener=lambda name, **k: self.tun,
                          netlink=self.netlink, offload=False, environ={})

    @defer.inlineCallbacks
    def test_moved_lease(self):
        cfg = config6(self.port)
        yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease6(OUR_SUBNET, OUR6, OURS))
        self.backend.handle_events([LeaseEvent(ADDED, lease6(PEER_SUBNET, PEER6, PEER))])
        new6 = IPv6Network("fc00:0:0:21::/64")
        yield self.backend.reconfigure(cfg, lease6("10.1.21.0/24", new6, OURS))
        self.assertEqual(self.netlink.v6[-1], (IPv6Interface("fc00:0:0:21::/128"), NETWORK6))
        sock = self.peer_socket(port=self.port)
        sock.sendto(make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:f::2"), (OURS, self.port))
        sock.sendto(make_ipv6(src="fc00:0:0:7::3", dst="fc00:0:0:21::2", payload=b"new"),
                    (OURS, self.port))
        c = self.backend.counters
        yield wait_for(lambda: c["packets_in"] == 2, what="both datagrams")
        self.assertEqual(c["foreign-destination"], 1)
        got, = self.tun.peer.written()
        self.assertEqual(got[40:], b"new")
