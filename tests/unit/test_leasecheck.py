"""
Tests for flannel_tw.model.leasecheck: which leases from etcd may be routed, and the bounded
warn-once memory of skipped leases.
"""
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.model.lease import Lease, LeaseAttrs, key_to_subnet, subnet_to_key
from flannel_tw.model.leasecheck import REASONS, SkipMemory, lease_problem, public_ip_problem

NETWORK = IPv4Network("10.5.0.0/16")
OWN = IPv4Network("10.5.1.0/24")
OWN_IP = IPv4Address("192.0.2.1")


def lease(key, ip="192.0.2.2"):
    return Lease(key_to_subnet(key), LeaseAttrs(IPv4Address(ip)), ttl=86400, key=key)


def problem(l):
    result = lease_problem(l, NETWORK, 24, OWN, OWN_IP)
    return result[0] if result else None


class LeaseProblemTests(TestCase):
    def test_good_peer(self):
        self.assertIsNone(problem(lease("10.5.2.0-24")))
        self.assertIsNone(problem(lease("10.5.255.0-24", "203.0.113.9")))
        # private and documentation ranges are ordinary host addresses
        for ip in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "198.51.100.1",
                   "1.1.1.1", "223.255.255.254"):
            self.assertIsNone(problem(lease("10.5.2.0-24", ip)), ip)

    def test_hostile_keys(self):
        self.assertEqual(problem(lease("x10.5.7.0-24")), "bad-key")
        self.assertEqual(problem(lease("10.5.7.9-24")), "bad-key")
        self.assertEqual(problem(lease("10.5.7.0-024")), "bad-key")
        self.assertEqual(problem(lease("0.0.0.0-1")), "outside-network")
        self.assertEqual(problem(lease("128.0.0.0-1")), "outside-network")
        self.assertEqual(problem(lease("10.6.7.0-24")), "outside-network")
        self.assertEqual(problem(lease("10.0.0.0-8")), "outside-network")
        self.assertEqual(problem(lease("10.5.0.0-16")), "subnet-length")
        self.assertEqual(problem(lease("10.5.7.0-25")), "subnet-length")
        self.assertEqual(problem(lease("10.5.6.0-23")), "subnet-length")

    def test_overlap_with_own_lease(self):
        """Checked on its own when SubnetLen is not known (a /16 or /25 around ours)."""
        for key in ("10.5.0.0-16", "10.5.1.128-25", "10.5.0.0-23"):
            self.assertEqual(lease_problem(lease(key), NETWORK, None, OWN)[0], "overlaps-own")
        self.assertIsNone(lease_problem(lease("10.5.2.0-23"), NETWORK, None, OWN))

    def test_hostile_public_ips(self):
        for ip in ("0.0.0.0", "0.1.2.3", "127.0.0.1", "127.255.0.1", "224.0.0.1",
                   "239.1.1.1", "255.255.255.255", "240.0.0.1", "169.254.169.254",
                   "10.5.9.9"):
            self.assertEqual(problem(lease("10.5.2.0-24", ip)), "public-ip", ip)
        self.assertEqual(problem(lease("10.5.2.0-24", "192.0.2.1")), "own-public-ip")

    def test_messages_name_the_fault(self):
        self.assertIn("broadcast", lease_problem(lease("10.5.2.0-24", "255.255.255.255"))[1])
        self.assertIn("loopback", lease_problem(lease("10.5.2.0-24", "127.0.0.1"))[1])
        self.assertIn("'10.5.7.0-24'", lease_problem(lease("x10.5.7.0-24"))[1])

    def test_no_context_checks_key_and_address_only(self):
        self.assertIsNone(lease_problem(lease("0.0.0.0-1")))
        self.assertEqual(lease_problem(lease("x0.0.0.0-1"))[0], "bad-key")
        self.assertEqual(lease_problem(lease("10.5.2.0-24", "127.0.0.1"))[0], "public-ip")
        self.assertEqual(lease_problem(Lease(OWN, None))[0], "bad-value")

    @given(st.integers(0, 2 ** 32 - 1), st.integers(0, 32), st.integers(0, 2 ** 32 - 1))
    def test_routed_leases_are_inside_network_with_subnet_len_and_apart_from_ours(
            self, address, prefix, ip):
        """Whatever etcd holds: a lease that passes lies in Network, is a /SubnetLen,
        does not overlap our lease, and has a unicast PublicIP outside the overlay."""
        subnet = IPv4Network((address, prefix), strict=False)
        l = Lease(subnet, LeaseAttrs(IPv4Address(ip)), key=subnet_to_key(subnet))
        if lease_problem(l, NETWORK, 24, OWN, OWN_IP) is not None:
            return
        self.assertTrue(subnet.subnet_of(NETWORK))
        self.assertEqual(subnet.prefixlen, 24)
        self.assertFalse(subnet.overlaps(OWN) and subnet != OWN)
        public = IPv4Address(ip)
        self.assertFalse(public.is_loopback or public.is_multicast or public.is_unspecified
                         or public.is_link_local or public.is_reserved or public in NETWORK)
        self.assertNotEqual(public, OWN_IP)

    @given(st.integers(0, 2 ** 32 - 1))
    def test_public_ip_problem_matches_ipaddress(self, ip):
        """The refused blocks are exactly what ipaddress calls unusable for a peer."""
        a = IPv4Address(ip)
        expected = (a in IPv4Network("0.0.0.0/8") or a.is_loopback or a.is_link_local
                    or a.is_multicast or a.is_reserved or a == IPv4Address("255.255.255.255"))
        self.assertEqual(public_ip_problem(a) is not None, expected)


class SkipMemoryTests(TestCase):
    def test_once_per_key_and_reason(self):
        m = SkipMemory()
        self.assertTrue(m.note("/s/x10.5.7.0-24", "bad-key"))
        self.assertFalse(m.note("/s/x10.5.7.0-24", "bad-key"))
        self.assertTrue(m.note("/s/10.5.8.0-24", "public-ip"))
        self.assertTrue(m.note("/s/10.5.8.0-24", "own-public-ip"))   # a new fault: news
        self.assertEqual(m.counts["bad-key"], 1)
        self.assertEqual(m.counts["public-ip"], 1)
        self.assertEqual(set(m.counts), set(REASONS))
        self.assertRaises(ValueError, m.note, "/s/k", "made-up")

    def test_forget_and_retain(self):
        m = SkipMemory()
        m.note("a", "bad-key")
        m.note("b", "bad-key")
        m.forget("a")
        self.assertTrue(m.note("a", "bad-key"))
        m.retain(["b"])
        self.assertEqual(len(m), 1)
        self.assertFalse(m.note("b", "bad-key"))

    @given(st.lists(st.text(max_size=30), max_size=200), st.integers(1, 20))
    def test_bounded(self, keys, limit):
        """However many distinct keys arrive, at most `limit` are remembered, and the
        most recently skipped key is always remembered."""
        m = SkipMemory(limit=limit)
        for k in keys:
            m.note(k, "bad-key")
            self.assertLessEqual(len(m), limit)
            self.assertFalse(m.note(k, "bad-key"))

    def test_huge_keys_take_no_room(self):
        m = SkipMemory(limit=2)
        for i in range(10):
            m.note(str(i) * 100000, "bad-key")
        self.assertEqual(len(m), 2)
        self.assertTrue(all(len(d) == 16 for d in m._seen))
