"""Tests for flannel_tw.backend.udp.packet."""
import struct
from ipaddress import IPv4Address

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flannel_tw.backend.udp import packet as P


def checksum_ok(buf, start=0, end=None):
    """A header (or ICMP message) with its checksum in place sums to 0xFFFF."""
    return P.ones_complement_sum(buf, start, end) == 0xFFFF


def make_ipv4(src="10.1.5.2", dst="10.1.7.3", ttl=64, proto=17, payload=b"x" * 12,
              options=b"", ident=0x1234, frag=0x4000, tos=0, fix_checksum=True):
    hl = 20 + len(options)
    total = hl + len(payload)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | (hl // 4), tos, total, ident, frag,
                                ttl, proto, 0, IPv4Address(src).packed,
                                IPv4Address(dst).packed))
    hdr += options
    if fix_checksum:
        struct.pack_into("!H", hdr, 10, P.internet_checksum(hdr))
    return bytes(hdr) + payload


ip_int = st.integers(min_value=0, max_value=0xFFFFFFFF)


@st.composite
def ipv4_packets(draw):
    options = draw(st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]))
    payload = draw(st.binary(max_size=64))
    return make_ipv4(
        src=str(IPv4Address(draw(ip_int))), dst=str(IPv4Address(draw(ip_int))),
        ttl=draw(st.integers(0, 255)), proto=draw(st.integers(0, 255)),
        payload=payload, options=options, ident=draw(st.integers(0, 0xFFFF)),
        frag=draw(st.integers(0, 0xFFFF)), tos=draw(st.integers(0, 255)))


class CheckIPv4Tests(SynchronousTestCase):
    def test_valid(self):
        pkt = make_ipv4()
        self.assertIsNone(P.check_ipv4(pkt))
        self.assertIsNone(P.check_ipv4(memoryview(bytearray(pkt))))

    def test_short(self):
        self.assertEqual(P.check_ipv4(b""), "short")
        self.assertEqual(P.check_ipv4(make_ipv4()[:19]), "short")

    def test_not_ipv4(self):
        pkt = bytearray(make_ipv4())
        pkt[0] = 0x60
        self.assertEqual(P.check_ipv4(pkt), "not-ipv4")

    def test_ihl_too_small(self):
        pkt = bytearray(make_ipv4())
        pkt[0] = 0x44
        self.assertEqual(P.check_ipv4(pkt), "bad-header")

    def test_ihl_beyond_data(self):
        pkt = bytearray(make_ipv4(payload=b""))
        pkt[0] = 0x46
        pkt[3] = 24
        self.assertEqual(P.check_ipv4(pkt), "bad-header")

    def test_total_length_beyond_data(self):
        pkt = make_ipv4(payload=b"abcd")
        self.assertEqual(P.check_ipv4(pkt[:-1]), "bad-header")

    def test_total_length_below_header(self):
        pkt = bytearray(make_ipv4())
        pkt[2:4] = b"\x00\x13"
        self.assertEqual(P.check_ipv4(pkt), "bad-header")

    def test_trailing_padding_ok(self):
        self.assertIsNone(P.check_ipv4(make_ipv4() + b"\0\0\0"))

    def test_explicit_length(self):
        buf = bytearray(100)
        buf[:32] = make_ipv4()
        self.assertIsNone(P.check_ipv4(buf, 32))
        self.assertEqual(P.check_ipv4(buf, 31), "bad-header")
        self.assertEqual(P.check_ipv4(buf, 10), "short")

    def test_addresses(self):
        pkt = make_ipv4(src="10.1.5.2", dst="192.168.3.4")
        self.assertEqual(P.src_ip(pkt), int(IPv4Address("10.1.5.2")))
        self.assertEqual(P.dst_ip(pkt), int(IPv4Address("192.168.3.4")))
        self.assertEqual(P.header_length(pkt), 20)
        self.assertEqual(P.total_length(pkt), 32)

    @given(st.binary(max_size=80))
    def test_garbage_never_raises(self, data):
        self.assertIn(P.check_ipv4(data), (None, "short", "not-ipv4", "bad-header"))


class DecrementTTLTests(SynchronousTestCase):
    def test_simple(self):
        pkt = bytearray(make_ipv4(ttl=64))
        self.assertTrue(P.decrement_ttl(pkt))
        self.assertEqual(pkt[8], 63)
        self.assertTrue(checksum_ok(pkt, 0, 20))
        self.assertEqual(bytes(pkt), make_ipv4(ttl=63))

    def test_ttl_one_and_zero_dropped_untouched(self):
        for ttl in (0, 1):
            pkt = bytearray(make_ipv4(ttl=ttl))
            before = bytes(pkt)
            self.assertFalse(P.decrement_ttl(pkt))
            self.assertEqual(bytes(pkt), before)

    def test_memoryview(self):
        buf = bytearray(200)
        raw = make_ipv4(ttl=2)
        buf[:len(raw)] = raw
        view = memoryview(buf)[:len(raw)]
        self.assertTrue(P.decrement_ttl(view))
        self.assertEqual(buf[8], 1)
        self.assertTrue(checksum_ok(buf, 0, 20))

    def test_checksum_wrap(self):
        """Headers whose checksum is near 0x0000/0xFFFF (the RFC 1141 trouble spot)."""
        found = 0
        for ident in range(0x10000):
            raw = make_ipv4(ttl=100, ident=ident)
            if struct.unpack_from("!H", raw, 10)[0] in (0x0000, 0x0001, 0xFEFF, 0xFF00,
                                                         0xFFFE, 0xFFFF):
                pkt = bytearray(raw)
                self.assertTrue(P.decrement_ttl(pkt))
                self.assertTrue(checksum_ok(pkt, 0, 20), (ident, raw.hex()))
                found += 1
        self.assertTrue(found)

    @given(ipv4_packets())
    @settings(max_examples=500)
    def test_checksum_stays_valid(self, raw):
        pkt = bytearray(raw)
        hl = P.header_length(pkt)
        self.assertTrue(checksum_ok(pkt, 0, hl))
        ttl = pkt[8]
        ok = P.decrement_ttl(pkt)
        if ttl <= 1:
            self.assertFalse(ok)
            self.assertEqual(bytes(pkt), raw)
        else:
            self.assertTrue(ok)
            self.assertEqual(pkt[8], ttl - 1)
            self.assertTrue(checksum_ok(pkt, 0, hl))
            # only TTL and checksum changed
            self.assertEqual(pkt[:8] + pkt[9:10] + pkt[12:], raw[:8] + raw[9:10] + raw[12:])

    @given(ipv4_packets(), st.integers(0, 0xFFFF))
    def test_any_incoming_checksum(self, raw, bogus):
        """Even with a wrong checksum, the update keeps the header's error unchanged."""
        pkt = bytearray(raw)
        struct.pack_into("!H", pkt, 10, bogus)
        hl = P.header_length(pkt)
        before = P.ones_complement_sum(pkt, 0, hl)
        if P.decrement_ttl(pkt):
            after = P.ones_complement_sum(pkt, 0, hl)
            # 0x0000 and 0xFFFF are the same value in one's complement
            self.assertEqual(before % 0xFFFF, after % 0xFFFF)


class ICMPUnreachableTests(SynchronousTestCase):
    TUN_IP = int(IPv4Address("10.1.15.0"))

    def test_fields(self):
        payload = bytes(range(40))
        offender = make_ipv4(src="10.1.15.2", dst="10.9.9.9", proto=6, payload=payload,
                             ttl=63)
        reply = P.icmp_net_unreachable(offender, self.TUN_IP)
        self.assertIsInstance(reply, bytes)
        (vihl, tos, total, ident, frag, ttl, proto, csum, src, dst) = struct.unpack_from(
            "!BBHHHBBH4s4s", reply, 0)
        self.assertEqual(vihl, 0x45)
        self.assertEqual(tos, 0)
        self.assertEqual(total, len(reply))
        self.assertEqual(total, 20 + 8 + 20 + 8)
        self.assertEqual(ident, 0)
        self.assertEqual(frag, 0)
        self.assertEqual(ttl, 8)
        self.assertEqual(proto, 1)
        self.assertEqual(IPv4Address(src), IPv4Address("10.1.15.0"))
        self.assertEqual(IPv4Address(dst), IPv4Address("10.1.15.2"))
        self.assertTrue(checksum_ok(reply, 0, 20))
        self.assertEqual(P.internet_checksum(reply[:10] + b"\0\0" + reply[12:20]), csum)
        # ICMP
        self.assertEqual(reply[20], 3)     # destination unreachable
        self.assertEqual(reply[21], 0)     # net unreachable
        self.assertEqual(reply[24:28], b"\0\0\0\0")
        self.assertEqual(reply[28:], offender[:28])
        self.assertTrue(checksum_ok(reply, 20, len(reply)))
        self.assertIsNone(P.check_ipv4(reply))

    def test_offender_with_options(self):
        offender = make_ipv4(options=b"\x01" * 8, payload=b"p" * 30)
        reply = P.icmp_net_unreachable(offender, self.TUN_IP)
        self.assertEqual(reply[28:], offender[:28 + 8])
        self.assertEqual(len(reply), 20 + 8 + 28 + 8)
        self.assertTrue(checksum_ok(reply, 0, 20))
        self.assertTrue(checksum_ok(reply, 20, len(reply)))

    def test_short_payload_quoted_as_is(self):
        offender = make_ipv4(payload=b"abc")
        reply = P.icmp_net_unreachable(offender, self.TUN_IP)
        self.assertEqual(reply[28:], offender)
        self.assertTrue(checksum_ok(reply, 20, len(reply)))   # odd length

    def test_quotes_only_total_length(self):
        offender = make_ipv4(payload=b"abc") + b"PADDING"
        reply = P.icmp_net_unreachable(offender, self.TUN_IP)
        self.assertEqual(reply[28:], offender[:23])

    def test_memoryview_input(self):
        offender = make_ipv4()
        buf = bytearray(offender) + bytearray(100)
        reply = P.icmp_net_unreachable(memoryview(buf)[:len(offender)], self.TUN_IP)
        self.assertEqual(reply, P.icmp_net_unreachable(offender, self.TUN_IP))

    def test_no_reply_to_icmp(self):
        self.assertIsNone(P.icmp_net_unreachable(make_ipv4(proto=1), self.TUN_IP))

    def test_no_reply_to_non_first_fragment(self):
        self.assertIsNone(P.icmp_net_unreachable(make_ipv4(frag=0x2001), self.TUN_IP))
        self.assertIsNone(P.icmp_net_unreachable(make_ipv4(frag=0x0010), self.TUN_IP))
        # first fragment (MF set, offset 0) and DF do get a reply
        self.assertIsNotNone(P.icmp_net_unreachable(make_ipv4(frag=0x2000), self.TUN_IP))
        self.assertIsNotNone(P.icmp_net_unreachable(make_ipv4(frag=0x4000), self.TUN_IP))

    def test_no_reply_to_malformed(self):
        pkt = make_ipv4()
        self.assertIsNone(P.icmp_net_unreachable(pkt[:15], self.TUN_IP))
        self.assertIsNone(P.icmp_net_unreachable(b"\x60" + pkt[1:], self.TUN_IP))
        self.assertIsNone(P.icmp_net_unreachable(pkt[:-1], self.TUN_IP))

    def test_no_reply_to_unanswerable_source(self):
        for src in ("0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1"):
            self.assertIsNone(P.icmp_net_unreachable(make_ipv4(src=src), self.TUN_IP), src)

    @given(ipv4_packets(), ip_int)
    @settings(max_examples=300)
    def test_replies_always_valid(self, raw, tun_ip):
        reply = P.icmp_net_unreachable(raw, tun_ip)
        if reply is None:
            src = P.src_ip(raw)
            self.assertTrue(raw[9] == 1 or struct.unpack_from("!H", raw, 6)[0] & 0x1FFF
                            or src == 0 or src >= 0xE0000000)
            return
        self.assertIsNone(P.check_ipv4(reply))
        self.assertTrue(checksum_ok(reply, 0, 20))
        self.assertTrue(checksum_ok(reply, 20, len(reply)))
        self.assertEqual(P.src_ip(reply), tun_ip)
        self.assertEqual(P.dst_ip(reply), P.src_ip(raw))
        hl = P.header_length(raw)
        self.assertEqual(reply[28:], raw[:min(hl + 8, len(raw))])

    @given(st.binary(max_size=100), ip_int)
    @settings(max_examples=500)
    def test_garbage_never_raises(self, data, tun_ip):
        reply = P.icmp_net_unreachable(data, tun_ip)
        if reply is not None:
            self.assertTrue(checksum_ok(reply, 0, 20))
            self.assertTrue(checksum_ok(reply, 20, len(reply)))

    @given(st.binary(min_size=20, max_size=100))
    def test_garbage_ttl_never_raises(self, data):
        buf = bytearray(data)
        P.decrement_ttl(buf)


class ChecksumTests(SynchronousTestCase):
    def test_rfc1071_example(self):
        data = bytes([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])
        self.assertEqual(P.ones_complement_sum(data), 0xddf2)
        self.assertEqual(P.internet_checksum(data), 0x220d)

    def test_odd_and_empty(self):
        self.assertEqual(P.ones_complement_sum(b""), 0)
        self.assertEqual(P.ones_complement_sum(b"\x01"), 0x0100)
