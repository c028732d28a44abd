"""Tests for flannel_tw.backend.udp.packet6 (the udp backend's IPv6 packets, issue 15)."""
import struct
from ipaddress import IPv6Address

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flannel_tw.backend.udp import packet6 as P6
from flannel_tw.testing.udp6_fixtures import icmp6_ok, make_ipv6


class CheckIPv6Tests(SynchronousTestCase):

    def test_good(self):
        self.assertIsNone(P6.check_ipv6(make_ipv6()))
        self.assertIsNone(P6.check_ipv6(make_ipv6(payload=b"")))

    def test_trailing_bytes_allowed(self):
        self.assertIsNone(P6.check_ipv6(make_ipv6() + b"pad"))

    def test_short(self):
        self.assertEqual(P6.check_ipv6(make_ipv6()[:39]), "short")
        self.assertEqual(P6.check_ipv6(b""), "short")

    def test_payload_past_the_data(self):
        self.assertEqual(P6.check_ipv6(make_ipv6(plen=13)), "bad-header")
        self.assertEqual(P6.check_ipv6(make_ipv6(), length=51), "bad-header")

    def test_not_version_6(self):
        p = bytearray(make_ipv6())
        p[0] = 0x45
        self.assertEqual(P6.check_ipv6(p), "bad-header")

    def test_addresses(self):
        p = make_ipv6(src="fc00::1:2", dst="2001:db8::ff")
        self.assertEqual(P6.src_ip6(p), int(IPv6Address("fc00::1:2")))
        self.assertEqual(P6.dst_ip6(memoryview(p)), int(IPv6Address("2001:db8::ff")))

    @settings(max_examples=300)
    @given(st.binary(max_size=120))
    def test_never_raises(self, data):
        r = P6.check_ipv6(data)
        if r is None:
            self.assertGreaterEqual(len(data), 40)
            self.assertEqual(data[0] >> 4, 6)
            self.assertLessEqual(40 + P6.payload_length(data), len(data))


class HopLimitTests(SynchronousTestCase):

    def test_decrements_in_place(self):
        p = bytearray(make_ipv6(hops=64))
        self.assertTrue(P6.decrement_hop_limit(memoryview(p)))
        self.assertEqual(p[7], 63)
        self.assertEqual(bytes(p[8:]), make_ipv6()[8:])

    def test_last_hop_dropped(self):
        for hops in (0, 1):
            p = bytearray(make_ipv6(hops=hops))
            self.assertFalse(P6.decrement_hop_limit(p))
            self.assertEqual(p[7], hops)


class NoRouteTests(SynchronousTestCase):
    SRC = int(IPv6Address("fc00:0:0:5::"))

    def test_reply(self):
        off = make_ipv6(src="fc00:0:0:5::2", dst="fc00:0:0:99::3", payload=b"q" * 20)
        r = P6.icmp6_no_route(off, self.SRC)
        self.assertEqual(r[0] >> 4, 6)
        self.assertEqual(r[6], 58)
        self.assertEqual(r[7], 64)
        self.assertEqual(P6.src_ip6(r), self.SRC)
        self.assertEqual(P6.dst_ip6(r), int(IPv6Address("fc00:0:0:5::2")))
        self.assertEqual((r[40], r[41]), (1, 0))
        self.assertEqual(r[48:], off)
        self.assertEqual(P6.payload_length(r), len(r) - 40)
        self.assertTrue(icmp6_ok(r))

    def test_quote_fits_the_minimum_mtu(self):
        off = make_ipv6(payload=b"z" * 1400)
        r = P6.icmp6_no_route(off, self.SRC)
        self.assertEqual(len(r), 1280)
        self.assertEqual(r[48:], off[:1232])
        self.assertTrue(icmp6_ok(r))

    def test_no_reply_due(self):
        cases = {
            "an ICMPv6 error": make_ipv6(nxt=58, payload=b"\x01\x00" + b"\0" * 6),
            "to multicast": make_ipv6(dst="ff02::2"),
            "from multicast": make_ipv6(src="ff02::1"),
            "from unspecified": make_ipv6(src="::"),
            "malformed": make_ipv6(plen=200),
        }
        for what, off in cases.items():
            self.assertIsNone(P6.icmp6_no_route(off, self.SRC), what)

    def test_icmp_echo_gets_a_reply(self):
        off = make_ipv6(nxt=58, payload=b"\x80\x00" + b"\0" * 6)
        self.assertIsNotNone(P6.icmp6_no_route(off, self.SRC))

    def test_checksum_known_value(self):
        """An echo request as the kernel sends it (checksum taken from a real ping6)."""
        body = bytearray(b"\x80\x00\x00\x00\x12\x34\x00\x01" + b"abcd")
        pkt = bytearray(make_ipv6(src="::1", dst="::1", nxt=58, payload=bytes(body)))
        # the same sum computed the slow way
        words = bytes(pkt[8:40]) + struct.pack("!IxxxB", len(body), 58) + bytes(body)
        s = sum(struct.unpack("!%dH" % (len(words) // 2), words))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        self.assertEqual(P6.icmp6_checksum(bytes(pkt)), ~s & 0xFFFF)
