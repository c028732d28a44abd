"""Tests for the udp backend's TCPv6 offload (issue 15): GSO_TCPV6 super-packets from a
TUN opened with TUN_F_TSO6, checked (vnet.check_vnet), cut into IPv6 packets for peers
without offload (vnet.segment_tcp6, hypothesis) and sent as one frame to offloading
peers, received whole and written into the TUN with their vnet header."""
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from flannel_tw.backend.udp import offload as O
from flannel_tw.backend.udp import vnet as V
from flannel_tw.backend.udp.backend import UdpBackend
from flannel_tw.backend.udp.packet6 import check_ipv6
from flannel_tw.model.events import ADDED, LeaseEvent
from flannel_tw.testing.faketun import FakeTun
from flannel_tw.testing.udp_fixtures import (
    BackendTestBase, EXT, OURS, OUR_SUBNET, PEER, PEER_SUBNET, wait_for)
from flannel_tw.testing.udp6_fixtures import (OUR6, PEER6, config6, lease6, make_ipv6,
                                              tcp_packet, tso_header)



H = V.VNET_HDR_LEN


def tcp6_packet(payload, src="fc00:0:0:f::2", dst="fc00:0:0:7::3", seq=1000, flags=0x18,
                hops=64, options=b"", partial=False):
    """An IPv6/TCP packet; with C{partial} the TCP checksum field holds the pseudo sum."""
    thl = 20 + len(options)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, (thl // 4) << 4, flags,
                                65535, 0, 0) + options)
    body = tcp + payload
    pseudo = (IPv6Address(src).packed + IPv6Address(dst).packed
              + struct.pack("!IxxxB", len(body), 6))
    s = V.csum_add(pseudo, 0, len(pseudo))
    if not partial:
        s = V.csum_add(body, 0, len(body), s)
        s = ~s & 0xFFFF
    struct.pack_into("!H", body, 16, s)
    return bytearray(make_ipv6(src=src, dst=dst, nxt=6, hops=hops, payload=bytes(body)))


def tcp6_ok(pkt):
    pseudo = bytes(pkt[8:40]) + struct.pack("!IxxxB", len(pkt) - 40, 6)
    full = pseudo + bytes(pkt[40:])
    return V.csum_add(full, 0, len(full)) == 0


def tso6_header(mss=1412, gso_type=V.GSO_TCPV6):
    return V.build_vnet(V.F_NEEDS_CSUM, gso_type, 60, mss, 40, 16)


class Segment6Tests(TestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.binary(min_size=0, max_size=9000), st.integers(1, 1500), st.integers(0, 0xFF),
           st.integers(0, 0xFFFFFFFF), st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]))
    def test_segments_are_valid_and_reassemble(self, payload, mss, flags, seq, opts):
        pkt = tcp6_packet(payload, seq=seq, flags=flags, options=opts, partial=True)
        segs = V.segment_tcp6(pkt, 0, len(pkt), mss)
        thl = 20 + len(opts)
        self.assertEqual(len(segs), max(1, -(-len(payload) // mss)))
        got = b""
        for k, s in enumerate(segs):
            self.assertIsNone(P6check(s))
            self.assertEqual(40 + ((s[4] << 8) | s[5]), len(s))
            self.assertTrue(tcp6_ok(s))
            self.assertLessEqual(len(s) - 40 - thl, mss)
            self.assertEqual(struct.unpack_from("!I", s, 44)[0], (seq + len(got)) & 0xFFFFFFFF)
            last = k == len(segs) - 1
            self.assertEqual(s[53] & 0x09, flags & 0x09 if last else 0)      # FIN, PSH
            self.assertEqual(s[53] & 0x80, flags & 0x80 if k == 0 else 0)    # CWR
            self.assertEqual(s[53] & 0x76, flags & 0x76)
            self.assertEqual(bytes(s[:4]) + bytes(s[6:40]), bytes(pkt[:4]) + bytes(pkt[6:40]))
            got += bytes(s[40 + thl:])
        self.assertEqual(got, payload)


def P6check(pkt):
    return check_ipv6(pkt)


class Vnet6CheckTests(TestCase):
    MTU = 1472

    def check(self, hdr, pkt):
        buf = bytearray(hdr) + pkt
        return V.check_vnet(buf, 0, len(pkt), self.MTU)

    def test_tso6_super_packet(self):
        self.assertIsNone(self.check(tso6_header(), tcp6_packet(b"d" * 8000, partial=True)))
        self.assertIsNone(self.check(tso6_header(gso_type=V.GSO_TCPV6 | V.GSO_ECN),
                                     tcp6_packet(b"d" * 8000, partial=True)))

    def test_plain_and_partial(self):
        self.assertIsNone(self.check(bytes(10), tcp6_packet(b"x" * 10)))
        self.assertIsNone(self.check(V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 40, 16),
                                     tcp6_packet(b"x" * 10, partial=True)))

    def test_lies_refused(self):
        big = tcp6_packet(b"d" * 8000, partial=True)
        cases = {
            "TCPV4 on IPv6": tso6_header(gso_type=V.GSO_TCPV4),
            "UDP GSO on IPv6": tso6_header(gso_type=V.GSO_UDP_L4),
            "csum_start not 40": V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV6, 60, 1412, 20, 16),
            "csum_offset": V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV6, 60, 1412, 40, 6),
            "no NEEDS_CSUM": V.build_vnet(0, V.GSO_TCPV6, 60, 1412, 0, 0),
            "tiny segments": tso6_header(mss=8),
            "segments over the MTU": tso6_header(mss=1413),
        }
        for what, hdr in cases.items():
            self.assertEqual(self.check(hdr, big), V.BAD_OFFLOAD, what)
        trailing = big + b"xx"
        self.assertEqual(self.check(tso6_header(), trailing), V.BAD_OFFLOAD)
        udp6 = bytearray(make_ipv6(nxt=17, payload=b"u" * 3000))
        self.assertEqual(self.check(tso6_header(), udp6), V.BAD_OFFLOAD)
        ext = bytearray(make_ipv6(nxt=0, payload=b"\x06\x00" + bytes(6) + bytes(tcp6_packet(
            b"d" * 3000, partial=True)[40:])))      # a hop-by-hop header first
        self.assertEqual(self.check(tso6_header(), ext), V.BAD_OFFLOAD)

    def test_tso4_on_ipv4_still_checked_as_before(self):
        self.assertIsNone(self.check(tso_header(tcp_packet(b"d" * 8000, partial=True)),
                                     tcp_packet(b"d" * 8000, partial=True)))
        self.assertEqual(self.check(tso_header(None, gso_type=V.GSO_TCPV6),
                                    tcp_packet(b"d" * 8000, partial=True)), V.BAD_OFFLOAD)


class Tso6BackendTests(BackendTestBase):
    """A TCPv6 super-packet from the TUN: one frame to an offloading peer (received
    whole and written into its TUN with its vnet header), flanneld-sized segments to a
    peer with offload off."""

    def setUp(self):
        BackendTestBase.setUp(self)
        self.tun = FakeTun(vnet_hdr=True)

    def make_backend(self, **kw):
        def opener(name, vnet_hdr=False):
            return self.tun
        kw.setdefault("environ", {})
        return UdpBackend(reactor, EXT, tun_opener=opener, netlink=self.netlink, **kw)

    @defer.inlineCallbacks
    def started(self, peer_offload):
        cfg = config6(self.port)
        yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease6(OUR_SUBNET, OUR6, OURS))
        self.backend.handle_events([LeaseEvent(ADDED, lease6(
            PEER_SUBNET, PEER6, PEER, backend_data=O.lease_backend_data(peer_offload)))])

    @defer.inlineCallbacks
    def test_super_packet_segmented_for_a_plain_peer(self):
        peer = self.listen_peer()
        yield self.started(peer_offload=False)
        payload = bytes(range(256)) * 20
        pkt = tcp6_packet(payload, partial=True)
        self.tun.peer.inject(tso6_header(mss=1412) + pkt)
        n = -(-len(payload) // 1412)
        yield wait_for(lambda: len(peer.received) == n, what="%d segments" % n)
        segs = [d for d, _ in peer.received]
        self.assertTrue(all(tcp6_ok(s) and s[7] == 63 for s in segs))
        self.assertEqual(b"".join(s[60:] for s in segs), payload)
        self.assertEqual(self.backend.counters["gso_segmented"], 1)

    @defer.inlineCallbacks
    def test_super_packet_as_one_frame_between_offloading_hosts(self):
        """Our own port stands for the offloading peer: the frame goes out to PEER's
        address on our port, so a second backend listening there receives it."""
        yield self.started(peer_offload=True)
        other_tun = FakeTun(vnet_hdr=True)
        self.addCleanup(other_tun.close)
        self.addCleanup(other_tun.peer.close)

        def opener(name, vnet_hdr=False):
            return other_tun
        ext2 = replace(EXT, addr=IPv4Address(PEER), public_ip=IPv4Address(PEER))
        other = UdpBackend(reactor, ext2, tun_opener=opener, netlink=self.netlink, environ={})
        self.addCleanup(other.stop)
        cfg = config6(self.port)
        yield other.prepare(cfg)
        yield other.start(cfg, lease6(PEER_SUBNET, PEER6, PEER))
        other.handle_events([LeaseEvent(ADDED, lease6(
            OUR_SUBNET, OUR6, OURS, backend_data=O.lease_backend_data(True)))])
        payload = bytes(range(251)) * 40
        pkt = tcp6_packet(payload, partial=True)
        hdr = tso6_header(mss=1412)
        self.tun.peer.inject(hdr + pkt)
        yield wait_for(lambda: other.counters["tun_packets_out"] == 1, what="the frame")
        got, = other_tun.peer.written()
        self.assertEqual(got[:10], hdr)
        self.assertEqual(got[10 + 7], 62)            # a hop on each side
        self.assertEqual(got[10:17] + got[18:], bytes(pkt[:7] + pkt[8:]))
        self.assertEqual((self.backend.counters["frames_out"], other.counters["frames_in"]),
                         (1, 1))
