"""Tests for flannel_tw.kernel.iface on a real kernel, inside a network namespace

The unit tests (PureTests); the whole description is in tests/lab/test_iface.py."""

from ipaddress import IPv4Address

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
