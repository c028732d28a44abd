"""Tests for flannel_tw.kernel.iface on a real kernel, inside a network namespace

The unit tests (PureTests); the whole description is in tests/lab/test_iface.py."""

from ipaddress import IPv4Address, IPv6Address

from twisted.trial import unittest

from flannel_tw.kernel.iface import is_global_unicast, lookup_ext_iface, usable_ip4


class PureTests(unittest.TestCase):
    def test_global_unicast(self):
        for a in ["10.1.2.3", "192.168.0.1", "172.16.0.1", "8.8.8.8"]:
            self.assertTrue(is_global_unicast(IPv4Address(a)), a)
        for a in ["127.0.0.1", "169.254.1.1", "224.0.0.1", "0.0.0.0",
                  "255.255.255.255"]:
            self.assertFalse(is_global_unicast(IPv4Address(a)), a)

    def test_usable_prefers_global(self):
        addrs = [IPv4Address("169.254.1.1"), IPv4Address("127.0.0.2"),
                 IPv4Address("10.0.0.1")]
        self.assertEqual(usable_ip4(addrs), IPv4Address("10.0.0.1"))
        self.assertEqual(usable_ip4(addrs[:2]), IPv4Address("169.254.1.1"))
        self.assertIsNone(usable_ip4([IPv4Address("127.0.0.1")]))

    def test_bad_public_ip_before_any_netlink(self):
        # ipr=object() would fail on any call; the flag is checked first.
        for bad in ["nope", "10.0.0", "fe80::1"]:
            e = self.assertRaises(ValueError, lookup_ext_iface,
                                  public_ip=bad, ipr=object())
            self.assertIn("--public-ip", str(e))


class PureV6Tests(unittest.TestCase):
    def test_global_unicast6(self):
        from flannel_tw.kernel.iface import is_global_unicast6
        for a in ["2001:db8::1", "fd00:250::b", "fc00::1", "fec0::1", "2a00:1450::1"]:
            self.assertTrue(is_global_unicast6(IPv6Address(a)), a)     # ULA counts
        for a in ["::1", "::", "fe80::1", "febf::1", "ff02::1", "ff05::2"]:
            self.assertFalse(is_global_unicast6(IPv6Address(a)), a)

    def test_usable6_prefers_global_then_link_local(self):
        from flannel_tw.kernel.iface import usable_ip6
        addrs = [IPv6Address(a) for a in ("fe80::1", "::1", "fd00::5", "2001:db8::5")]
        self.assertEqual(usable_ip6(addrs), IPv6Address("fd00::5"))
        self.assertEqual(usable_ip6(addrs[:2]), IPv6Address("fe80::1"))
        self.assertIsNone(usable_ip6([IPv6Address("::1"), IPv6Address("ff02::1")]))
        self.assertIsNone(usable_ip6([]))

    def test_bad_public_ipv6_before_any_netlink(self):
        for bad in ["nope", "10.0.0.1", "fd00::1/64", "fe80::1%eth0x"]:
            e = self.assertRaises(ValueError, lookup_ext_iface, public_ipv6=bad, ipv6=True,
                                  ipr=object())
            self.assertIn("--public-ipv6", str(e))
