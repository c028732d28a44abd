"""The udp backend's offloaded mode (flannel_tw.backend.udp.offload): vnet headers, user-space
segmentation and splitting, checksum completion (hypothesis); the negotiation through
the lease's BackendData; the data path with a FakeTun that carries vnet headers; and,
in the namespace lab, TCP transfers checked with sha256 between two offloading hosts
and between an offloading host and one with offload off (flanneld's wire format)."""

import os
import struct
from ipaddress import IPv4Address

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from flannel_tw.backend.udp.backend import UdpBackend
from flannel_tw.model.events import ADDED, LeaseEvent
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.testing.faketun import FakeTun
from flannel_tw.backend.udp import offload as O
from flannel_tw.backend.udp import vnet as V
from flannel_tw.backend.udp import packet as P
from flannel_tw.backend.udp import packet6 as P6
from flannel_tw.testing.udp6_fixtures import tcp_packet, tso_header
from flannel_tw.testing.udp_fixtures import (
    EXT, OUR_SUBNET, OURS, PEER, PEER_SUBNET, BackendTestBase, config, lease, make_ipv4,
    wait_for)


H = V.VNET_HDR_LEN


def udp_packet(payload, src="10.1.7.3", dst="10.1.15.2"):
    """An IPv4/UDP packet whose checksum field holds the pseudo-header sum (partial)."""
    ulen = 8 + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 7, 0x4000, 64, 17, 0,
                               IPv4Address(src).packed, IPv4Address(dst).packed))
    struct.pack_into("!H", ip, 10, P.internet_checksum(ip))
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 17, ulen)
    return ip + struct.pack("!HHHH", 40000, 5201, ulen, P.ones_complement_sum(pseudo)) + payload


def tcp_ok(pkt):
    """IP header and TCP checksums both verify."""
    hl = P.header_length(pkt)
    if P.ones_complement_sum(pkt, 0, hl) != 0xFFFF:
        return False
    pseudo = bytes(pkt[12:20]) + struct.pack("!BBH", 0, 6, len(pkt) - hl)
    return P.ones_complement_sum(pseudo + bytes(pkt[hl:])) == 0xFFFF


class VnetHeaderTests(TestCase):
    @given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF),
           st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
    def test_round_trip(self, a, b, c, d, e, f):
        fields = (a, b, c, d, e, f)
        hdr = V.build_vnet(*fields)
        self.assertEqual(len(hdr), H)
        self.assertEqual(V.parse_vnet(hdr), fields)
        self.assertEqual(V.parse_vnet(b"xx" + hdr, 2), fields)

    def test_little_endian_layout(self):
        self.assertEqual(V.build_vnet(1, 1, 52, 1420, 20, 16),
                         bytes([1, 1, 52, 0, 0x8C, 0x05, 20, 0, 16, 0]))

    @given(st.binary(max_size=3000))
    def test_csum_add_matches_rfc1071(self, data):
        s = V.csum_add(data, 0, len(data))
        ref = P.ones_complement_sum(data)
        self.assertEqual(s % 0xFFFF, ref % 0xFFFF)

    @given(st.binary(max_size=64), st.binary(max_size=40))
    def test_check_needs_a_sane_ipv4_packet(self, hdr, pkt):
        """Too short, not IPv4 or a bad IPv4 header: check_ipv4's reason, never an error;
        a packet whose version is 6: check_ipv6's (IPv6 frames, issue 15)."""
        frame = bytes(hdr[:H]).ljust(H, b"\0") + pkt
        reason = V.check_vnet(frame, 0, len(pkt), 1472)
        check = P6.check_ipv6 if pkt[:1] and pkt[0] >> 4 == 6 else P.check_ipv4
        if check(pkt) is not None:
            self.assertEqual(reason, check(pkt))


MTU = 1472


def check(hdr, pkt, mtu=MTU):
    return V.check_vnet(bytes(hdr) + bytes(pkt), 0, len(pkt), mtu)


class VnetCheckTests(TestCase):
    """L{V.check_vnet}: a received frame's header must describe its packet exactly."""

    tcp = tcp_packet(bytes(20000), src="10.1.7.3", dst="10.1.15.2", partial=True)
    udp = udp_packet(bytes(5000))

    def test_what_the_kernel_sends_is_accepted(self):
        small = tcp_packet(b"abc", partial=True)
        for hdr, pkt in (
                (tso_header(self.tcp), self.tcp),                         # TSO
                (tso_header(self.tcp, gso_type=V.GSO_TCPV4 | V.GSO_ECN), self.tcp),
                (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, len(self.tcp), 1420, 20, 16),
                 self.tcp),                                               # hdr_len: all linear
                (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 0, 1420, 20, 16), self.tcp),
                (tso_header(self.tcp, mss=V.MIN_GSO_SIZE), self.tcp),
                (tso_header(self.tcp, mss=MTU - 40), self.tcp),
                (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_UDP_L4, 28, 1400, 20, 6), self.udp),
                (V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 16), small),  # partial checksum
                (V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 6), self.udp),
                (V.build_vnet(V.F_DATA_VALID), small),
                (V.build_vnet(), make_ipv4())):
            self.assertIsNone(check(hdr, pkt), (V.parse_vnet(hdr), pkt[:40]))

    def test_the_reported_cases_are_refused(self):
        """GSO_TCPV4 on a UDP packet, gso_size 1, a checksum offset inside the IP header."""
        self.assertEqual(check(tso_header(self.udp), self.udp), "bad-offload")
        self.assertEqual(check(V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 6),
                               self.udp), "bad-offload")
        self.assertEqual(check(tso_header(self.tcp, mss=1), self.tcp), "bad-offload")
        self.assertEqual(check(V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 0, 10),
                               self.tcp), "bad-offload")
        self.assertEqual(check(V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 0, 10), self.tcp),
                         "bad-offload")

    def test_every_mismatch_is_refused(self):
        tcp, udp = self.tcp, self.udp
        frag = bytearray(tcp)
        frag[6] = 0x20                              # MF
        frag[10:12] = b"\0\0"
        frag[10:12] = struct.pack("!H", P.internet_checksum(frag[:20]))
        short_doff = bytearray(tcp)
        short_doff[32] = 4 << 4                     # TCP data offset 16 bytes
        longer = bytes(tcp) + b"pad"                # trailing bytes beyond total length
        udp_len = bytearray(udp)
        udp_len[24:26] = struct.pack("!H", 100)
        icmp = make_ipv4(proto=1, payload=bytes(100))
        cases = {
            "unknown flag": (V.build_vnet(0x04), make_ipv4()),
            "unknown gso type": (tso_header(tcp, gso_type=2), tcp),
            "legacy UFO": (V.build_vnet(V.F_NEEDS_CSUM, 3, 28, 1400, 20, 6), udp),
            "TCPv6": (tso_header(tcp, gso_type=4), tcp),
            "ECN alone": (V.build_vnet(0, V.GSO_ECN), make_ipv4()),
            "ECN with UDP": (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_UDP_L4 | V.GSO_ECN, 28,
                                          1400, 20, 6), udp),
            "UDP_L4 on TCP": (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_UDP_L4, 40, 1400, 20, 16),
                              tcp),
            "GSO without NEEDS_CSUM": (V.build_vnet(0, V.GSO_TCPV4, 40, 1420, 20, 16), tcp),
            "GSO with DATA_VALID only": (V.build_vnet(V.F_DATA_VALID, V.GSO_TCPV4, 40, 1420),
                                         tcp),
            "gso_size 0": (tso_header(tcp, mss=0), tcp),
            "gso_size below the minimum": (tso_header(tcp, mss=V.MIN_GSO_SIZE - 1), tcp),
            "segments over the MTU": (tso_header(tcp, mss=MTU - 39), tcp),
            "UDP over 64 segments": (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_UDP_L4, 28, 70, 20, 6),
                                     udp),
            "csum_start not the IP header length": (
                V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 24, 16), tcp),
            "csum_offset not TCP's": (
                V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 6), tcp),
            "csum_offset not UDP's": (V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 16), udp),
            "checksum beyond the packet": (V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 16),
                                           make_ipv4(proto=6, payload=b"x" * 10)),
            "NEEDS_CSUM on ICMP": (V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 2), icmp),
            "hdr_len beyond the packet": (
                V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, len(tcp) + 1, 1420, 20, 16), tcp),
            "a fragment": (tso_header(frag), frag),
            "TCP header too short": (tso_header(short_doff), short_doff),
            "total length short of the packet": (tso_header(longer), longer),
            "UDP length wrong": (V.build_vnet(V.F_NEEDS_CSUM, V.GSO_UDP_L4, 28, 1400, 20, 6),
                                 udp_len),
            "gso_size without GSO": (V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 1420, 20, 16), tcp),
            "hdr_len without GSO": (V.build_vnet(0, 0, 40), make_ipv4()),
            "csum fields without NEEDS_CSUM": (V.build_vnet(0, 0, 0, 0, 20, 16), tcp),
        }
        for what, (hdr, pkt) in cases.items():
            self.assertEqual(check(hdr, pkt), "bad-offload", what)

    def test_a_tiny_mtu_refuses_any_gso(self):
        """An MTU that leaves less than MIN_GSO_SIZE per segment: no GSO at all."""
        self.assertEqual(check(tso_header(self.tcp, mss=V.MIN_GSO_SIZE), self.tcp,
                               mtu=40 + V.MIN_GSO_SIZE - 1), "bad-offload")
        self.assertIsNone(check(tso_header(self.tcp, mss=V.MIN_GSO_SIZE), self.tcp,
                                mtu=40 + V.MIN_GSO_SIZE))

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 255), st.sampled_from([0, 1, 3, 4, 5, 0x80, 0x81, 0x85, 0xFF]),
           st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
           st.sampled_from([0, 20, 24, 0xFFFF]) | st.integers(0, 0xFFFF),
           st.sampled_from([0, 6, 16, 10]) | st.integers(0, 0xFFFF),
           st.sampled_from(["tcp", "udp", "icmp", "tcp-opts"]), st.integers(0, 3000),
           st.integers(576, 9000))
    def test_accepted_headers_describe_their_packet(self, flags, gso, hdr_len, gso_size,
                                                     cstart, coff, kind, size, mtu):
        """Whatever the header, an accepted one makes sense for its packet (what the
        kernel relies on when it takes the frame) and a refusal is bad-offload."""
        if kind == "udp":
            pkt = udp_packet(bytes(size))
        elif kind == "icmp":
            pkt = make_ipv4(proto=1, payload=bytes(size))
        else:
            pkt = tcp_packet(bytes(size), options=b"\x01" * 12 if kind == "tcp-opts" else b"",
                             partial=True)
        n = len(pkt)
        reason = check(V.build_vnet(flags, gso, hdr_len, gso_size, cstart, coff), pkt, mtu)
        if reason is not None:
            self.assertEqual(reason, "bad-offload")
            return
        proto = pkt[9]
        self.assertEqual(flags & ~(V.F_NEEDS_CSUM | V.F_DATA_VALID), 0)
        self.assertLessEqual(hdr_len, n)
        if flags & V.F_NEEDS_CSUM:
            self.assertIn(proto, (6, 17))
            self.assertEqual(cstart, 20)
            self.assertEqual(coff, 16 if proto == 6 else 6)
            self.assertLessEqual(cstart + coff + 2, n)
        else:
            self.assertEqual((cstart, coff), (0, 0))
        if gso == 0:
            self.assertEqual((hdr_len, gso_size), (0, 0))
            return
        self.assertTrue(flags & V.F_NEEDS_CSUM)
        l4 = ((pkt[32] >> 4) * 4) if proto == 6 else 8
        self.assertIn((gso, proto), [(V.GSO_TCPV4, 6), (V.GSO_TCPV4 | V.GSO_ECN, 6),
                                     (V.GSO_UDP_L4, 17)])
        self.assertGreaterEqual(gso_size, V.MIN_GSO_SIZE)
        self.assertLessEqual(20 + l4 + gso_size, mtu)
        segs = -(-(n - 20 - l4) // gso_size)
        self.assertLessEqual(segs, 64 if proto == 17 else V.MAX_GSO_SEGMENTS)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 40000), st.integers(V.MIN_GSO_SIZE, 8960), st.booleans(),
           st.booleans(), st.integers(1280, 9000))
    def test_kernel_headers_for_fitting_segments_are_accepted(self, size, mss, ecn, opts,
                                                              mtu):
        options = b"\x01" * 12 if opts else b""
        pkt = tcp_packet(bytes(size), options=options, partial=True)
        hdr = tso_header(pkt, mss, V.GSO_TCPV4 | (V.GSO_ECN if ecn else 0))
        fits = 40 + len(options) + mss <= mtu
        self.assertEqual(check(hdr, pkt, mtu), None if fits else "bad-offload")


class SegmentationTests(TestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.binary(min_size=0, max_size=9000), st.integers(1, 1500), st.integers(0, 0xFF),
           st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
           st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]))
    def test_segments_are_valid_and_reassemble(self, payload, mss, flags, ipid, seq, opts):
        pkt = tcp_packet(payload, seq=seq, flags=flags, ipid=ipid, options=opts, partial=True)
        segs = V.segment_tcp4(pkt, 0, len(pkt), mss)
        hl, thl = 20, 20 + len(opts)
        self.assertEqual(len(segs), max(1, -(-len(payload) // mss)))
        got = b""
        for k, s in enumerate(segs):
            self.assertEqual(P.check_ipv4(s), None)
            self.assertTrue(tcp_ok(s))
            self.assertLessEqual(len(s) - hl - thl, mss)
            self.assertEqual(struct.unpack_from("!H", s, 4)[0], (ipid + k) & 0xFFFF)
            self.assertEqual(struct.unpack_from("!I", s, 24)[0], (seq + len(got)) & 0xFFFFFFFF)
            last = k == len(segs) - 1
            self.assertEqual(s[33] & 0x09, flags & 0x09 if last else 0)      # FIN, PSH
            self.assertEqual(s[33] & 0x80, flags & 0x80 if k == 0 else 0)    # CWR
            self.assertEqual(s[33] & 0x76, flags & 0x76)
            self.assertEqual(bytes(s[hl + 20:hl + thl]), opts)
            got += bytes(s[hl + thl:])
        self.assertEqual(got, payload)

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 1500), st.integers(0, 0xFF))
    def test_finish_checksum(self, size, fill):
        pkt = tcp_packet(bytes([fill]) * size, partial=True)
        self.assertFalse(tcp_ok(pkt) and size > 0 and fill > 0 and False)
        buf = bytearray(b"h" * H) + pkt
        V.finish_checksum(buf, H, len(pkt), 20, 16)
        self.assertTrue(tcp_ok(buf[H:]))


class FrameTests(TestCase):
    """Frames cut into segments and put back together (pure, hypothesis)."""

    @staticmethod
    def segments(frame, seg, fid=1):
        out = bytearray(len(frame) + 300 * O.FRAME_HDR_LEN)
        count, total = O.pack_frame(frame, len(frame), seg, out, fid)
        return [bytes(out[o:min(o + seg, total)]) for o in range(0, total, seg)], count

    @staticmethod
    def counters():
        return {"incomplete-frame": 0, "bad-header": 0, "short": 0}

    @settings(max_examples=60, deadline=None)
    @given(st.binary(min_size=1, max_size=O.MAX_FRAME), st.integers(300, 9000),
           st.integers(0, 0xFFFF))
    def test_round_trip(self, frame, seg, fid):
        segs, count = self.segments(frame, seg, fid)
        self.assertEqual(len(segs), count)
        self.assertLessEqual(count, O.MAX_SEGMENTS)
        for k, s in enumerate(segs):
            self.assertEqual(s[:4], bytes([0xF7, fid & 0xFF, k, count]))
            if k < count - 1:
                self.assertEqual(len(s), seg)      # UDP_SEGMENT: all but the last full
        c = self.counters()
        r = O.Reassembler(c)
        got = [r.feed("p", s, 0, len(s)) for s in segs]
        self.assertEqual(got[:-1], [None] * (count - 1))
        self.assertEqual(bytes(got[-1]), frame)
        self.assertEqual(c, self.counters())
        self.assertEqual(len(r), 0)

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.binary(min_size=1, max_size=20000), min_size=1, max_size=4),
           st.integers(300, 1500), st.randoms(use_true_random=False), st.data())
    def test_loss_and_reordering_never_give_a_wrong_frame(self, frames, seg, rnd, data):
        """Whatever is lost, duplicated or reordered, what comes out is a frame that was
        sent, whole; with nothing disturbed every frame comes out."""
        stream = []
        for i, f in enumerate(frames):
            stream += self.segments(f, seg, i)[0]
        ops = data.draw(st.sampled_from(["none", "drop", "swap", "dup"]))
        if len(stream) == 1:
            ops = "none"
        if ops != "none":
            k = rnd.randrange(len(stream) - 1)
            if ops == "drop":
                del stream[k]
            elif ops == "swap":
                stream[k], stream[k + 1] = stream[k + 1], stream[k]
            else:
                stream.insert(k, stream[k])
        c = self.counters()
        r = O.Reassembler(c)
        out = [bytes(f) for f in (r.feed("p", s, 0, len(s)) for s in stream) if f is not None]
        for f in out:
            self.assertIn(f, frames)
        if ops == "none":
            self.assertEqual(out, frames)
            self.assertEqual(c, self.counters())

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.binary(min_size=1, max_size=O.MAX_FRAME), min_size=1, max_size=3),
           st.integers(300, 9000), st.data())
    def test_coalesced_runs(self, frames, seg, data):
        """Segments read in coalesced runs (as UDP_GRO hands them over: equal sizes, the
        last of a run maybe shorter) give the same frames as one by one, and a run of
        one frame is taken whole."""
        stream = []
        for i, f in enumerate(frames):
            stream += self.segments(f, seg, i)[0]
        runs = []
        while stream:
            k = data.draw(st.integers(1, len(stream)))
            run = [stream.pop(0)]
            while len(run) < k and stream and len(run[-1]) == seg and len(stream[0]) <= seg:
                run.append(stream.pop(0))
            runs.append(run)
        c = self.counters()
        r = O.Reassembler(c)
        out = []
        whole = 0
        for run in runs:
            buf = b"".join(run)
            taken, frame = r.feed_run("p", buf, 0, len(buf), len(run[0]))
            if taken:
                whole += 1
                if frame is not None:
                    out.append(bytes(frame))
                continue
            for s in run:
                f = r.feed("p", s, 0, len(s))
                if f is not None:
                    out.append(bytes(f))
        self.assertEqual(out, frames)
        self.assertEqual(c, self.counters())
        # a run inside one frame is never refused
        self.assertEqual(whole, sum(1 for run in runs if len({s[1] for s in run}) == 1))

    def test_peers_are_separate_and_pending_is_bounded(self):
        a, _ = self.segments(b"A" * 5000, 1000)
        b, _ = self.segments(b"B" * 5000, 1000)
        c = self.counters()
        r = O.Reassembler(c, max_pending=2)
        got = []
        for x, y in zip(a, b):             # interleaved from two peers
            got += [r.feed("a", x, 0, len(x)), r.feed("b", y, 0, len(y))]
        self.assertEqual([bytes(g) for g in got if g is not None], [b"A" * 5000, b"B" * 5000])
        for peer in ("c", "d", "e"):       # three frames started, room for two
            r.feed(peer, a[0], 0, len(a[0]))
        self.assertEqual(len(r), 2)
        self.assertEqual(c["incomplete-frame"], 1)
        r.forget("e")
        self.assertEqual(c["incomplete-frame"], 2)

    def test_bad_segments(self):
        c = self.counters()
        r = O.Reassembler(c)
        self.assertIsNone(r.feed("p", b"\xf7\x01\x00\x02", 0, 4))                # no data
        self.assertIsNone(r.feed("p", b"\xf7\x01\x00\x00xx", 0, 6))              # count 0
        self.assertIsNone(r.feed("p", b"\xf7\x01\x00\xff" + bytes(60000), 0, 60004))  # > 64 KB
        self.assertIsNone(r.feed("p", b"\xf7\x01\x01\x02xx", 0, 6))              # orphan
        self.assertEqual(c, {"incomplete-frame": 1, "bad-header": 2, "short": 1})
        self.assertRaises(ValueError, O.pack_frame, bytes(65545), 65545, 200, bytearray(70000), 0)


class NegotiationTests(TestCase):
    def test_peer_offload(self):
        def attrs(data):
            return LeaseAttrs(IPv4Address("192.0.2.1"), backend_data=data)
        self.assertTrue(O.peer_offload(attrs({"FlannelTW": {"Offload": 2}})))
        for data in (None, {}, {"FlannelTW": {}}, {"FlannelTW": {"Offload": 1}},
                     {"FlannelTW": {"Offload": True}}, {"FlannelTW": 1}, "x", [1],
                     {"VtepMAC": "02:00:00:00:00:01"}):
            self.assertFalse(O.peer_offload(attrs(data)), data)

    def test_lease_value_exact(self):
        a = LeaseAttrs(IPv4Address("10.0.0.1"), backend_data=O.lease_backend_data(True))
        self.assertEqual(a.to_json(),
                         '{"PublicIP":"10.0.0.1","BackendData":{"FlannelTW":{"Offload":2}}}')
        self.assertTrue(O.peer_offload(LeaseAttrs.from_json(a.to_json())))
        plain = LeaseAttrs(IPv4Address("10.0.0.1"), backend_data=O.lease_backend_data(False))
        self.assertEqual(plain.to_json(), '{"PublicIP":"10.0.0.1"}')

    def test_config_option(self):
        self.assertTrue(O.offload_option({"Type": "udp"}))
        self.assertTrue(O.offload_option(None))
        self.assertFalse(O.offload_option({"Offload": False}))
        self.assertFalse(O.offload_option({"offload": False}))
        self.assertTrue(O.offload_option({"OFFLOAD": True}))
        for bad in (0, 1, "false", None, [False]):
            if bad is None:
                continue
            self.assertRaises(ValueError, O.offload_option, {"Offload": bad})

    def test_environment(self):
        self.assertTrue(O.env_allows_offload({}))
        self.assertTrue(O.env_allows_offload({"FLANNEL_TW_UDP_OFFLOAD": "1"}))
        for v in ("0", "false", "No", "off"):
            self.assertFalse(O.env_allows_offload({"FLANNEL_TW_UDP_OFFLOAD": v}))


class VnetBackendTests(BackendTestBase):
    """The backend with a FakeTun standing for an IFF_VNET_HDR TUN."""

    def setUp(self):
        BackendTestBase.setUp(self)
        self.tun = FakeTun(vnet_hdr=True)
        self.vnet_opens = []

    def make_backend(self, **kw):
        def opener(name, vnet_hdr=False):
            self.vnet_opens.append(vnet_hdr)
            return self.tun
        kw.setdefault("environ", {})
        return UdpBackend(reactor, EXT, tun_opener=opener, netlink=self.netlink, **kw)

    @defer.inlineCallbacks
    def started(self, offload_peer=True):
        cfg = config(self.port)
        attrs = yield self.backend.prepare(cfg)
        yield self.backend.start(cfg, lease(OUR_SUBNET, OURS))
        data = O.lease_backend_data(offload_peer)
        self.backend.handle_events([LeaseEvent(ADDED, Lease(
            PEER_SUBNET, LeaseAttrs(IPv4Address(PEER), backend_data=data), ttl=60))])
        return attrs

    @defer.inlineCallbacks
    def test_lease_advertises_offload(self):
        attrs = yield self.started()
        self.assertEqual(self.vnet_opens, [True])
        self.assertEqual(attrs.backend_data, {"FlannelTW": {"Offload": 2}})
        self.assertTrue(self.backend.offload)
        self.assertTrue(self.backend.routes.offload_of(PEER_SUBNET))

    @defer.inlineCallbacks
    def test_config_turns_it_off(self):
        self.tun = FakeTun()
        cfg = config(self.port, Offload=False)
        attrs = yield self.backend.prepare(cfg)
        self.assertEqual(self.vnet_opens, [False])
        self.assertIsNone(attrs.backend_data)
        self.assertFalse(self.backend.offload)

    @defer.inlineCallbacks
    def test_environment_turns_it_off(self):
        self.tun = FakeTun()
        self.backend = self.make_backend(environ={"FLANNEL_TW_UDP_OFFLOAD": "0"})
        attrs = yield self.backend.prepare(config(self.port))
        self.assertEqual(self.vnet_opens, [False])
        self.assertIsNone(attrs.backend_data)

    def listen_peer(self, addr=PEER):
        """Received datagrams, unlimited in size (Twisted's listenUDP truncates at 8 KB)."""
        import socket
        s = self.peer_socket(addr, self.port)
        s.setblocking(False)

        class Peer:
            received = []

            def poll(this):
                while True:
                    try:
                        this.received.append(s.recvfrom(70000))
                    except BlockingIOError:
                        return this.received
        p = Peer()
        p.received = []
        return p

    @defer.inlineCallbacks
    def test_gso_to_offload_peer_is_one_frame(self):
        peer = self.listen_peer()
        yield self.started(offload_peer=True)
        pkt = tcp_packet(os.urandom(65000), partial=True)
        hdr = V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 16)
        self.tun.peer.inject(hdr + pkt)
        n = -(-(H + len(pkt)) // (self.backend.mtu - O.FRAME_HDR_LEN))
        yield wait_for(lambda: len(peer.poll()) == n, what="%d segments" % n)
        c = FrameTests.counters()
        r = O.Reassembler(c)
        frames = []
        for data, _ in peer.received:
            self.assertLessEqual(len(data), self.backend.mtu)     # never fragmented
            self.assertEqual(data[0], O.FRAME_MAGIC)
            f = r.feed(PEER, data, 0, len(data))
            if f is not None:
                frames.append(bytes(f))
        self.assertEqual(len(frames), 1)
        self.assertEqual(frames[0][:H], hdr)
        self.assertEqual(frames[0][H + 8], 63)                # TTL decremented
        self.assertEqual(frames[0][H + 12:], bytes(pkt[12:]))
        self.assertEqual(self.backend.counters["frames_out"], 1)

    @defer.inlineCallbacks
    def test_small_packets_batch_and_keep_order_around_a_super_packet(self):
        """Plain packets read with vnet headers join runs (one UDP GSO sendmsg) as in
        plain mode; a super-packet in between leaves after the run before it."""
        peer = self.listen_peer()
        yield self.started(offload_peer=True)
        calls = []
        real = self.backend.sender._sendmsg

        def sendmsg(buffers, ancdata, flags, addr):
            calls.append(sum(len(b) for b in buffers))
            return real(buffers, ancdata, flags, addr)
        self.backend.sender._sendmsg = sendmsg
        small = [tcp_packet(b"%03d" % i + b"s" * 197, seq=i, partial=True) for i in range(6)]
        big = tcp_packet(os.urandom(30000), seq=99, partial=True)
        csum = V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 16)
        for p in small[:3]:
            self.tun.peer.inject(csum + p)
        self.tun.peer.inject(V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 16) + big)
        for p in small[3:]:
            self.tun.peer.inject(csum + p)
        nseg = -(-(H + len(big)) // (self.backend.mtu - O.FRAME_HDR_LEN))
        yield wait_for(lambda: len(peer.poll()) == 6 + nseg, what="%d datagrams" % (6 + nseg))
        got = [d for d, _ in peer.received]
        for d, p in zip(got[:3] + got[3 + nseg:], small):
            self.assertEqual(d[0], 0x45)
            self.assertTrue(tcp_ok(d))
            self.assertEqual(d[40:], p[40:])
        self.assertTrue(all(d[0] == O.FRAME_MAGIC for d in got[3:3 + nseg]))
        self.assertEqual(calls[0], 3 * 240)
        self.assertEqual(calls[-1], 3 * 240)
        self.assertEqual(self.backend.counters["packets_out"], 6 + nseg)

    def test_small_packet_to_offload_peer_is_flanneld_format(self):
        """Not a super-packet: flanneld's format (checksum completed) to any peer."""
        return self.test_partial_checksum_completed_for_plain_peer(offload_peer=True)

    @defer.inlineCallbacks
    def test_gso_to_plain_peer_is_segmented(self):
        peer = self.listen_peer()
        yield self.started(offload_peer=False)
        payload = os.urandom(20000)
        pkt = tcp_packet(payload, partial=True)
        self.tun.peer.inject(V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 16) + pkt)
        n = -(-20000 // 1420)
        yield wait_for(lambda: len(peer.poll()) == n, what="%d segments" % n)
        got = b""
        for data, _ in peer.received:
            self.assertLessEqual(len(data), 1472)
            self.assertEqual(data[8], 63)
            self.assertTrue(tcp_ok(data))
            got += data[40:]
        self.assertEqual(got, payload)
        self.assertEqual(self.backend.counters["gso_segmented"], 1)

    @defer.inlineCallbacks
    def test_partial_checksum_completed_for_plain_peer(self, offload_peer=False):
        peer = self.listen_peer()
        yield self.started(offload_peer=offload_peer)
        pkt = tcp_packet(b"abc" * 100, partial=True)
        self.tun.peer.inject(V.build_vnet(V.F_NEEDS_CSUM, 0, 0, 0, 20, 16) + pkt)
        yield wait_for(peer.poll)
        data = peer.received[0][0]
        self.assertEqual(len(data), len(pkt))
        self.assertTrue(tcp_ok(data))

    def frame_segments(self, frame, fid=1):
        return FrameTests.segments(frame, self.backend.mtu, fid)[0]

    @defer.inlineCallbacks
    def test_receive_both_formats(self):
        yield self.started()
        s = self.peer_socket(PEER)
        plain = make_ipv4(src="10.1.7.3", dst="10.1.15.2")
        s.sendto(plain, (OURS, self.port))
        hdr = V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 16)
        big = tcp_packet(os.urandom(30000), src="10.1.7.3", dst="10.1.15.2", partial=True)
        for seg in self.frame_segments(hdr + big):
            s.sendto(seg, (OURS, self.port))
        got = []
        yield wait_for(lambda: got.extend(self.tun.peer.written()) or len(got) == 2)
        self.assertEqual(got[0][:H], bytes(H))            # zero header before a plain packet
        self.assertEqual(got[0][H + 8], plain[8] - 1)
        self.assertEqual(len(got[0]), H + len(plain))
        self.assertEqual(got[1][:H], hdr)
        self.assertEqual(got[1][H + 8], 63)
        self.assertEqual(got[1][H + 12:], bytes(big[12:]))
        self.assertEqual(self.backend.counters["frames_in"], 1)

    @defer.inlineCallbacks
    def test_coalesced_read_is_taken_apart(self):
        """A UDP GSO send arrives as one GRO read (loopback coalesces it): plain packets
        and the segments of a frame in it are handled one by one."""
        yield self.started()
        if not self.backend.udp_gro:
            raise SkipTest("this kernel has no UDP_GRO")
        import socket
        s = self.peer_socket(PEER)
        seg = self.backend.mtu
        plain = [make_ipv4(src="10.1.7.3", dst="10.1.15.2", payload=bytes([k]) * (seg - 20))
                 for k in range(5)]
        hdr = V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 20, 16)
        big = tcp_packet(os.urandom(20000), src="10.1.7.3", dst="10.1.15.2", partial=True)
        segs = self.frame_segments(hdr + big)
        for burst in (b"".join(plain), b"".join(segs)):
            s.sendmsg([burst], [(socket.SOL_UDP, 103, struct.pack("=H", seg))], 0,
                      (OURS, self.port))
        got = []
        yield wait_for(lambda: got.extend(self.tun.peer.written()) or len(got) == 6)
        for k, w in enumerate(got[:5]):
            self.assertEqual(w[:H], bytes(H))
            self.assertEqual(w[H + 20:], bytes([k]) * (seg - 20))
        self.assertEqual(got[5][H + 12:], bytes(big[12:]))
        self.assertEqual(self.backend.counters["packets_in"], 5 + len(segs))

    @defer.inlineCallbacks
    def test_filter_applies_to_offload_frames(self):
        yield self.started()
        s = self.peer_socket(PEER)
        hdr = V.build_vnet()
        for fid, pkt in enumerate((make_ipv4(src="10.1.99.3", dst="10.1.15.2"),
                                   make_ipv4(src="10.1.7.3", dst="10.1.15.2", ttl=1))):
            for seg in self.frame_segments(hdr + pkt, fid):
                s.sendto(seg, (OURS, self.port))
        stranger = self.peer_socket("127.0.0.77")
        for seg in self.frame_segments(hdr + make_ipv4(src="10.1.7.3", dst="10.1.15.2")):
            stranger.sendto(seg, (OURS, self.port))
        yield wait_for(lambda: self.backend.counters["packets_in"] == 3)
        self.assertEqual(self.backend.counters["spoofed-source"], 1)
        self.assertEqual(self.backend.counters["ttl-expired"], 1)
        self.assertEqual(self.backend.counters["unknown-peer"], 1)
        self.assertEqual(len(self.backend.reassembler), 0)     # strangers leave no state
        self.assertEqual(self.tun.peer.written(), [])

    @defer.inlineCallbacks
    def test_frames_whose_header_lies_are_dropped(self):
        """Only a frame whose virtio-net header matches its packet reaches the TUN."""
        yield self.started()
        s = self.peer_socket(PEER)
        tcp = tcp_packet(os.urandom(20000), src="10.1.7.3", dst="10.1.15.2", partial=True)
        udp = udp_packet(os.urandom(5000))
        frames = [
            tso_header(udp) + udp,                                        # TCPV4 on UDP
            tso_header(tcp, mss=1) + tcp,                                 # 20,000 segments
            V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4, 40, 1420, 0, 10) + tcp,  # IP header
            V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4 | V.GSO_ECN, 40, 1420, 20, 6) + tcp,
            tso_header(tcp) + tcp,                                        # the good one
        ]
        nsegs = 0
        for fid, frame in enumerate(frames):
            segs = self.frame_segments(frame, fid)
            nsegs += len(segs)
            for seg in segs:
                s.sendto(seg, (OURS, self.port))
        c = self.backend.counters
        yield wait_for(lambda: c["packets_in"] == nsegs, what="%d segments" % nsegs)
        got = self.tun.peer.written()
        self.assertEqual([bytes(g[:H]) for g in got], [bytes(tso_header(tcp))])
        self.assertEqual(bytes(got[0][H + 12:]), bytes(tcp[12:]))
        self.assertEqual((c["frames_in"], c["bad-offload"], c["tun_packets_out"]), (5, 4, 1))

    @defer.inlineCallbacks
    def test_super_packet_a_peer_would_refuse_is_segmented(self):
        """A super-packet whose header the receiver's check refuses (segments under
        MIN_GSO_SIZE: an odd TCP MSS) goes out in flanneld's format instead."""
        peer = self.listen_peer()
        yield self.started(offload_peer=True)
        payload = os.urandom(3000)
        pkt = tcp_packet(payload, partial=True)
        self.tun.peer.inject(tso_header(pkt, mss=V.MIN_GSO_SIZE - 8) + pkt)
        n = -(-3000 // (V.MIN_GSO_SIZE - 8))
        yield wait_for(lambda: len(peer.poll()) == n, what="%d segments" % n)
        self.assertTrue(all(d[0] == 0x45 and tcp_ok(d) for d, _ in peer.received))
        self.assertEqual(b"".join(d[40:] for d, _ in peer.received), payload)
        c = self.backend.counters
        self.assertEqual((c["frames_out"], c["gso_segmented"]), (0, 1))

    @defer.inlineCallbacks
    def test_icmp_unreachable_has_header(self):
        yield self.started()
        self.tun.peer.inject(V.build_vnet() + make_ipv4(dst="10.1.99.3"))
        got = []
        yield wait_for(lambda: got.extend(self.tun.peer.written()) or got)
        self.assertEqual(got[0][:H], bytes(H))
        self.assertEqual(got[0][H + 9], P.IPPROTO_ICMP)
