"""Tests for flannel_tw.backend.udp.routes."""
import time
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flannel_tw.backend.udp.routes import RouteTable


def ip(s):
    return int(IPv4Address(s))


N = IPv4Network


class RouteTableTests(SynchronousTestCase):
    def test_empty(self):
        t = RouteTable()
        self.assertIsNone(t.lookup(ip("10.1.2.3")))
        self.assertEqual(len(t), 0)
        self.assertFalse(t.source_allowed("192.0.2.9", ip("10.1.2.3")))

    def test_set_lookup(self):
        t = RouteTable()
        t.set(N("10.1.2.0/24"), IPv4Address("192.0.2.5"))
        self.assertEqual(t.lookup(ip("10.1.2.0")), ("192.0.2.5", 8285))
        self.assertEqual(t.lookup(ip("10.1.2.255")), ("192.0.2.5", 8285))
        self.assertIsNone(t.lookup(ip("10.1.3.0")))
        self.assertIsNone(t.lookup(ip("10.1.1.255")))
        self.assertIn(N("10.1.2.0/24"), t)
        self.assertEqual(len(t), 1)

    def test_port(self):
        t = RouteTable(port=9999)
        t.set(N("10.1.2.0/24"), "192.0.2.5")
        self.assertEqual(t.lookup(ip("10.1.2.7")), ("192.0.2.5", 9999))

    def test_public_ip_forms(self):
        t = RouteTable()
        t.set(N("10.1.1.0/24"), "192.0.2.1")
        t.set(N("10.1.2.0/24"), IPv4Address("192.0.2.2"))
        t.set(N("10.1.3.0/24"), ip("192.0.2.3"))
        self.assertEqual(t.lookup(ip("10.1.1.1"))[0], "192.0.2.1")
        self.assertEqual(t.lookup(ip("10.1.2.1"))[0], "192.0.2.2")
        self.assertEqual(t.lookup(ip("10.1.3.1"))[0], "192.0.2.3")

    def test_replace_public_ip(self):
        t = RouteTable()
        t.set(N("10.1.2.0/24"), "192.0.2.5")
        t.set(N("10.1.2.0/24"), "192.0.2.6")
        self.assertEqual(t.lookup(ip("10.1.2.1")), ("192.0.2.6", 8285))
        self.assertEqual(len(t), 1)
        self.assertEqual(t.check_source("192.0.2.5", ip("10.1.2.1")), "unknown-peer")
        self.assertTrue(t.source_allowed("192.0.2.6", ip("10.1.2.1")))

    def test_remove(self):
        t = RouteTable()
        t.set(N("10.1.2.0/24"), "192.0.2.5")
        t.set(N("10.1.3.0/24"), "192.0.2.6")
        self.assertTrue(t.remove(N("10.1.2.0/24")))
        self.assertFalse(t.remove(N("10.1.2.0/24")))
        self.assertIsNone(t.lookup(ip("10.1.2.1")))
        self.assertEqual(t.lookup(ip("10.1.3.1")), ("192.0.2.6", 8285))
        self.assertEqual(t.check_source("192.0.2.5", ip("10.1.2.1")), "unknown-peer")
        self.assertTrue(t.remove(N("10.1.3.0/24")))
        self.assertEqual(t._levels, [])
        self.assertEqual(t._by_peer, {})

    def test_longest_prefix(self):
        t = RouteTable()
        t.set(N("10.0.0.0/8"), "192.0.2.1")
        t.set(N("10.1.0.0/16"), "192.0.2.2")
        t.set(N("10.1.2.0/24"), "192.0.2.3")
        t.set(N("10.1.2.128/25"), "192.0.2.4")
        self.assertEqual(t.lookup(ip("10.1.2.200"))[0], "192.0.2.4")
        self.assertEqual(t.lookup(ip("10.1.2.100"))[0], "192.0.2.3")
        self.assertEqual(t.lookup(ip("10.1.3.1"))[0], "192.0.2.2")
        self.assertEqual(t.lookup(ip("10.9.3.1"))[0], "192.0.2.1")
        self.assertIsNone(t.lookup(ip("11.0.0.0")))
        t.remove(N("10.1.2.128/25"))
        self.assertEqual(t.lookup(ip("10.1.2.200"))[0], "192.0.2.3")
        t.remove(N("10.1.0.0/16"))
        self.assertEqual(t.lookup(ip("10.1.3.1"))[0], "192.0.2.1")

    def test_default_and_host_routes(self):
        t = RouteTable()
        t.set(N("0.0.0.0/0"), "192.0.2.1")
        t.set(N("10.1.2.3/32"), "192.0.2.2")
        self.assertEqual(t.lookup(ip("10.1.2.3"))[0], "192.0.2.2")
        self.assertEqual(t.lookup(ip("10.1.2.4"))[0], "192.0.2.1")
        self.assertEqual(t.lookup(0)[0], "192.0.2.1")
        self.assertEqual(t.lookup(0xFFFFFFFF)[0], "192.0.2.1")

    def test_routes_and_peer_of(self):
        t = RouteTable()
        t.set(N("10.1.2.0/24"), "192.0.2.5")
        self.assertEqual(t.routes(), {N("10.1.2.0/24"): ("192.0.2.5", 8285)})
        self.assertEqual(t.peer_of(N("10.1.2.0/24")), "192.0.2.5")
        self.assertIsNone(t.peer_of(N("10.1.3.0/24")))
        t.clear()
        self.assertEqual(len(t), 0)
        self.assertIsNone(t.lookup(ip("10.1.2.1")))


class FilterTests(SynchronousTestCase):
    def setUp(self):
        self.t = RouteTable()
        self.t.set(N("10.1.2.0/24"), "192.0.2.5")
        self.t.set(N("10.1.3.0/24"), "192.0.2.6")

    def test_inside_subnet(self):
        self.assertIsNone(self.t.check_source("192.0.2.5", ip("10.1.2.9")))
        self.assertTrue(self.t.source_allowed("192.0.2.5", ip("10.1.2.9")))

    def test_host_dot_zero(self):
        """A host's own overlay address (the tun .0) is inside its subnet."""
        self.assertTrue(self.t.source_allowed("192.0.2.5", ip("10.1.2.0")))

    def test_unknown_peer(self):
        self.assertEqual(self.t.check_source("192.0.2.99", ip("10.1.2.9")), "unknown-peer")
        self.assertFalse(self.t.source_allowed("192.0.2.99", ip("10.1.2.9")))

    def test_spoofed(self):
        self.assertEqual(self.t.check_source("192.0.2.5", ip("10.1.3.9")), "spoofed-source")
        self.assertEqual(self.t.check_source("192.0.2.5", ip("8.8.8.8")), "spoofed-source")
        self.assertFalse(self.t.source_allowed("192.0.2.6", ip("10.1.2.1")))

    def test_peer_with_two_subnets(self):
        self.t.set(N("10.1.4.0/24"), "192.0.2.5")
        self.assertTrue(self.t.source_allowed("192.0.2.5", ip("10.1.2.1")))
        self.assertTrue(self.t.source_allowed("192.0.2.5", ip("10.1.4.1")))
        self.t.remove(N("10.1.2.0/24"))
        self.assertFalse(self.t.source_allowed("192.0.2.5", ip("10.1.2.1")))
        self.assertTrue(self.t.source_allowed("192.0.2.5", ip("10.1.4.1")))


class ScaleTests(SynchronousTestCase):
    def test_5000_peers(self):
        t = RouteTable()
        peers = {}
        for i in range(5000):
            subnet = N((ip("10.0.0.0") + (i << 8), 24))
            pub = str(IPv4Address(ip("172.16.0.0") + i))
            t.set(subnet, pub)
            peers[subnet] = pub
        self.assertEqual(len(t), 5000)
        self.assertEqual(len(t._levels), 1)
        for subnet, pub in list(peers.items())[::97]:
            base = int(subnet.network_address)
            self.assertEqual(t.lookup(base + 77), (pub, 8285))
            self.assertTrue(t.source_allowed(pub, base + 3))
            self.assertFalse(t.source_allowed(pub, base + 256 + 3))
        # a million lookups would be far too slow for a linear scan; check it's quick
        probes = [ip("10.0.0.0") + (i << 8) + 5 for i in range(0, 5000, 7)]
        start = time.perf_counter()
        for _ in range(20):
            for p in probes:
                t.lookup(p)
        per = (time.perf_counter() - start) / (20 * len(probes))
        self.assertLess(per, 20e-6)
        for subnet in list(peers)[:2500]:
            t.remove(subnet)
        self.assertEqual(len(t), 2500)
        self.assertIsNone(t.lookup(ip("10.0.0.5")))
        self.assertEqual(t.lookup(ip("10.0.0.0") + (4999 << 8) + 1)[0],
                         str(IPv4Address(ip("172.16.0.0") + 4999)))


subnets = st.builds(lambda a, plen: IPv4Network((a, plen), strict=False),
                    st.integers(0, 0xFFFFFFFF), st.integers(8, 32))


class PropertyTests(SynchronousTestCase):
    @given(st.lists(st.tuples(subnets, st.integers(1, 50)), max_size=30),
           st.lists(st.integers(0, 0xFFFFFFFF), max_size=30))
    @settings(max_examples=200)
    def test_matches_linear_longest_prefix(self, entries, probes):
        t = RouteTable()
        model = {}
        for subnet, peer in entries:
            t.set(subnet, "192.0.2.%d" % peer)
            model[subnet] = "192.0.2.%d" % peer
        for subnet, _ in entries[::3]:
            t.remove(subnet)
            model.pop(subnet, None)
        probes = probes + [int(s.network_address) for s, _ in entries]
        for p in probes:
            best = None
            for s, peer in model.items():
                if int(s.network_address) == p & int(s.netmask):
                    if best is None or s.prefixlen > best[0].prefixlen:
                        best = (s, peer)
            expected = None if best is None else (best[1], 8285)
            self.assertEqual(t.lookup(p), expected)


from ipaddress import IPv6Address, IPv6Network  # noqa: E402

N6 = IPv6Network


def ip6(s):
    return int(IPv6Address(s))


class RouteTable6Tests(SynchronousTestCase):
    """The IPv6 part (issue 15): peers' v6 subnets, reached at their IPv4 PublicIP."""

    def test_lookup_and_remove(self):
        t = RouteTable(8285)
        t.set(N("10.5.7.0/24"), "192.0.2.7")
        t.set6(N6("fc00:0:0:7::/64"), "192.0.2.7", offload=True)
        self.assertEqual(t.lookup6_entry(ip6("fc00:0:0:7::3")),
                         (N6("fc00:0:0:7::/64"), ("192.0.2.7", 8285), True))
        self.assertIsNone(t.lookup6_entry(ip6("fc00:0:0:8::3")))
        self.assertIsNone(t.lookup(ip("10.5.8.1")))
        self.assertEqual(t.subnet6_of("192.0.2.7"), [N6("fc00:0:0:7::/64")])
        self.assertTrue(t.remove6(N6("fc00:0:0:7::/64")))
        self.assertFalse(t.remove6(N6("fc00:0:0:7::/64")))
        self.assertIsNone(t.lookup6_entry(ip6("fc00:0:0:7::3")))
        self.assertEqual(t.subnet6_of("192.0.2.7"), [])
        self.assertEqual(t.lookup(ip("10.5.7.1")), ("192.0.2.7", 8285))

    def test_moved_subnet(self):
        t = RouteTable()
        t.set(N("10.5.7.0/24"), "192.0.2.7")
        t.set(N("10.5.8.0/24"), "192.0.2.8")
        t.set6(N6("fc00:0:0:7::/64"), "192.0.2.7")
        t.set6(N6("fc00:0:0:7::/64"), "192.0.2.8")
        self.assertEqual(t.lookup6_entry(ip6("fc00:0:0:7::1"))[1][0], "192.0.2.8")
        self.assertEqual(t.subnet6_of("192.0.2.7"), [])
        self.assertEqual(t.check_source6("192.0.2.7", ip6("fc00:0:0:7::1")), "spoofed-source")
        self.assertIsNone(t.check_source6("192.0.2.8", ip6("fc00:0:0:7::1")))

    def test_source_filter(self):
        t = RouteTable()
        t.set(N("10.5.7.0/24"), "192.0.2.7")
        t.set6(N6("fc00:0:0:7::/64"), "192.0.2.7")
        t.set(N("10.5.9.0/24"), "192.0.2.9")        # an IPv4-only peer (flanneld)
        self.assertIsNone(t.check_source6("192.0.2.7", ip6("fc00:0:0:7::99")))
        self.assertEqual(t.check_source6("192.0.2.7", ip6("fc00:0:0:9::1")), "spoofed-source")
        self.assertEqual(t.check_source6("192.0.2.9", ip6("fc00:0:0:9::1")), "spoofed-source")
        self.assertEqual(t.check_source6("192.0.2.66", ip6("fc00:0:0:7::1")), "unknown-peer")

    def test_clear(self):
        t = RouteTable()
        t.set6(N6("fc00:0:0:7::/64"), "192.0.2.7")
        t.clear()
        self.assertIsNone(t.lookup6_entry(ip6("fc00:0:0:7::1")))

    @given(st.lists(st.tuples(st.integers(0, (1 << 128) - 1), st.integers(8, 128),
                              st.integers(1, 50)), max_size=20),
           st.lists(st.integers(0, (1 << 128) - 1), max_size=20))
    @settings(max_examples=200)
    def test_matches_linear_longest_prefix(self, entries, probes):
        t = RouteTable()
        model = {}
        nets = []
        for addr, plen, peer in entries:
            subnet = IPv6Network((addr, plen), strict=False)
            nets.append(subnet)
            t.set6(subnet, "192.0.2.%d" % peer)
            model[subnet] = "192.0.2.%d" % peer
        for subnet in nets[::3]:
            t.remove6(subnet)
            model.pop(subnet, None)
        for p in probes + [int(s.network_address) for s in nets]:
            best = None
            for s, peer in model.items():
                if int(s.network_address) == p & int(s.netmask):
                    if best is None or s.prefixlen > best[0].prefixlen:
                        best = (s, peer)
            hit = t.lookup6_entry(p)
            self.assertEqual(None if hit is None else hit[1],
                             None if best is None else (best[1], 8285))
