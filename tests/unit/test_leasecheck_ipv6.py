"""
Tests for the v6 part of flannel_tw.model.leasecheck: a dual-stack lease with a hostile
v6 part (outside IPv6Network, wrong prefix, overlapping ours, bad PublicIPv6, bad
BackendV6Data) is not routed; IPv4-only leases and IPv4-only configs are unaffected.
"""
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.model.lease import Lease, LeaseAttrs, key_to_subnets
from flannel_tw.model.leasecheck import REASONS, lease_problem, public_ipv6_problem

NETWORK = IPv4Network("10.5.0.0/16")
NETWORK6 = IPv6Network("fc00::/48")
OWN = IPv4Network("10.5.1.0/24")
OWN6 = IPv6Network("fc00:0:0:1::/64")
OWN_IP = IPv4Address("192.0.2.1")
OWN_IP6 = IPv6Address("2001:db8::1")


def lease(key, ip6="2001:db8::2", data6=None):
    subnet, subnet6 = key_to_subnets(key)
    attrs = LeaseAttrs(IPv4Address("192.0.2.2"), "vxlan", {"VtepMAC": "aa:bb:cc:dd:ee:ff"},
                       public_ipv6=IPv6Address(ip6) if ip6 else None, backend_v6_data=data6)
    return Lease(subnet, attrs, ttl=86400, key=key, ipv6_subnet=subnet6)


def problem(l, v6=True):
    kw = dict(ipv6_network=NETWORK6, ipv6_subnet_len=64, own_ipv6_subnet=OWN6,
              own_public_ipv6=OWN_IP6) if v6 else {}
    result = lease_problem(l, NETWORK, 24, OWN, OWN_IP, **kw)
    return result[0] if result else None


class V6PartTests(TestCase):

    def test_good_dual_stack_peer(self):
        self.assertIsNone(problem(lease("10.5.2.0-24&fc00:0:0:2::-64",
                                        data6={"VtepMAC": "06:00:00:00:00:01"})))
        self.assertIsNone(problem(lease("10.5.2.0-24&fc00:0:0:2::-64", ip6=None)))

    def test_ipv4_only_lease_in_dual_stack_config(self):
        """A lease without a v6 part is routed (over IPv4), whatever its value says."""
        self.assertIsNone(problem(lease("10.5.2.0-24", ip6="ff02::1", data6=7)))

    def test_hostile_v6_parts(self):
        cases = {
            "10.5.2.0-24&fd00:0:0:2::-64": "outside-network",
            "10.5.2.0-24&::-0": "outside-network",
            "10.5.2.0-24&fc00:0:0:2::-80": "subnet-length",
            "10.5.2.0-24&fc00::-48": "subnet-length",
            "10.5.2.0-24&fc00:0:0:1::-80": "subnet-length",
            "10.5.2.0-24&fc00:0:0:1::-64": "overlaps-own",
        }
        for key, reason in cases.items():
            self.assertEqual(problem(lease(key)), reason, key)
        ok = "10.5.2.0-24&fc00:0:0:2::-64"
        for ip6, reason in (("::", "public-ipv6"), ("::1", "public-ipv6"),
                            ("fe80::1", "public-ipv6"), ("ff02::1", "public-ipv6"),
                            ("::ffff:192.0.2.9", "public-ipv6"), ("fc00:0:0:9::1", "public-ipv6"),
                            ("2001:db8::1", "own-public-ip")):
            self.assertEqual(problem(lease(ok, ip6=ip6)), reason, ip6)
        for data6 in ([1], "x", 5, True):
            self.assertEqual(problem(lease(ok, data6=data6)), "bad-v6-data", data6)
        self.assertEqual(problem(lease("10.5.2.0-24&fc00:0:0:2::1-64")), "bad-key")

    def test_v6_not_checked_with_ipv6_off(self):
        """An IPv4-only config looks at the v4 part alone (it routes that part)."""
        self.assertIsNone(problem(lease("10.5.2.0-24&fd00:0:0:2::-64", ip6="::1", data6=[1]),
                                  v6=False))
        self.assertIsNone(problem(lease("10.5.3.0-24&fc00:0:0:1::-64"), v6=False))

    def test_our_own_lease_does_not_overlap_itself(self):
        """Our own lease (our v4 subnet) carries our v6 subnet: no overlap with itself;
        another host's lease with our v6 subnet does overlap."""
        self.assertIsNone(problem(lease("10.5.1.0-24&fc00:0:0:1::-64", ip6="2001:db8::2")))
        self.assertEqual(problem(lease("10.5.3.0-24&fc00:0:0:1::-64")), "overlaps-own")

    def test_messages_name_the_v6_fault(self):
        result = lease_problem(lease("10.5.2.0-24&fd00:0:0:2::-64"), ipv6_network=NETWORK6)
        self.assertIn("fd00:0:0:2::/64", result[1])
        self.assertIn("fc00::/48", result[1])
        for reason in ("public-ipv6", "bad-v6-data"):
            self.assertIn(reason, REASONS)


class PropertyTests(TestCase):

    @given(st.integers(0, 2 ** 128 - 1))
    def test_public_ipv6_problem_matches_ipaddress(self, value):
        ip = IPv6Address(value)
        expected = (ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_multicast
                    or ip.ipv4_mapped is not None or ip in NETWORK6)
        self.assertEqual(public_ipv6_problem(ip, NETWORK6) is not None, expected)

    @given(st.integers(0, 2 ** 128 - 1), st.integers(0, 127))
    def test_only_v6_subnets_of_the_pool_shape_pass(self, address, prefix):
        """Whatever the v6 part, a lease passes only if its v6 subnet is a /64 inside
        IPv6Network not overlapping ours."""
        v6 = IPv6Network((address, prefix), strict=False)
        l = Lease(IPv4Network("10.5.2.0/24"), LeaseAttrs(IPv4Address("192.0.2.2")),
                  ipv6_subnet=v6)
        ok = problem(l) is None
        self.assertEqual(ok, v6.subnet_of(NETWORK6) and prefix == 64 and not v6.overlaps(OWN6))
