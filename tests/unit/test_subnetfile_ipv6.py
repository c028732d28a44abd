"""
subnet.env with IPv6 (flanneld-v0.20-v3.md C): FLANNEL_IPV6_NETWORK and
FLANNEL_IPV6_SUBNET in flanneld's order, and the reader of the previous subnets (the v6
line too; a hostile file counts as absent, with the reason for one warning).
"""
import os
from ipaddress import IPv4Network, IPv6Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.host.subnetfile import (PreviousSubnets, parse_env, read_previous_subnets,
                                        render_subnet_env)

NET = IPv4Network("10.5.0.0/16")
SUB = IPv4Network("10.5.72.0/24")
NET6 = IPv6Network("2001:cafe:42::/56")
SUB6 = IPv6Network("2001:cafe:42::/64")


class RenderTests(TestCase):

    def test_dual_stack_order(self):
        self.assertEqual(render_subnet_env(NET, SUB, 1450, True, NET6, SUB6),
                         "FLANNEL_NETWORK=10.5.0.0/16\n"
                         "FLANNEL_SUBNET=10.5.72.1/24\n"
                         "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
                         "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n"
                         "FLANNEL_MTU=1450\n"
                         "FLANNEL_IPMASQ=true\n")

    def test_ipv4_only_unchanged(self):
        self.assertEqual(render_subnet_env(NET, SUB, 1450, False),
                         "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")

    @given(st.integers(0, 2 ** 128 - 1), st.integers(8, 126))
    def test_round_trip(self, address, prefix):
        """What is written reads back as the same subnets (through the env parser)."""
        sub6 = IPv6Network((address, prefix), strict=False)
        text = render_subnet_env(NET, SUB, 1450, False, sub6.supernet(prefixlen_diff=2), sub6)
        env = parse_env(text)
        self.assertEqual(list(env), ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK",
                                     "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"])
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        self.assertEqual(read_previous_subnets(path), PreviousSubnets(SUB, sub6))


class ReadPreviousTests(TestCase):

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_missing_file_is_no_problem(self):
        self.assertEqual(read_previous_subnets(self.mktemp()), PreviousSubnets())

    def test_ipv4_only_file(self):
        path = self.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n")
        self.assertEqual(read_previous_subnets(path), PreviousSubnets(SUB, None))

    def test_masked(self):
        path = self.write("FLANNEL_SUBNET=10.5.72.9/24\nFLANNEL_IPV6_SUBNET=2001:CAFE:42::9/64\n")
        self.assertEqual(read_previous_subnets(path), PreviousSubnets(SUB, SUB6))

    def test_hostile_files_count_as_absent_with_a_reason(self):
        for text in ("FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\n",
                     "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET=fe80::1%eth0/64\n",
                     "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET=2001:cafe::1/129\n",
                     "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_IPV6_SUBNET=\n",
                     "FLANNEL_SUBNET=2001:cafe::1/64\n",
                     "FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n",
                     "not an env file\n",
                     "FLANNEL_SUBNET=\"unterminated\n"):
            previous = read_previous_subnets(self.write(text))
            self.assertEqual((previous.subnet, previous.ipv6_subnet), (None, None), text)
            self.assertIsNotNone(previous.problem, text)

    def test_unreadable_and_huge(self):
        path = self.mktemp()
        os.mkdir(path)
        self.assertIsNotNone(read_previous_subnets(path).problem)
        big = self.write("FLANNEL_SUBNET=10.5.72.1/24\n" + "#" * 70000 + "\n")
        self.assertIn("larger than", read_previous_subnets(big).problem)
