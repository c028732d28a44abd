"""flannel_tw.kernel.iface's dual-stack choice (flanneld v0.20, ipv6=True) on a real
kernel, in a network namespace made for each test.

Layout (DAD off, so no address is tentative):

  ext0     10.9.1.5/24, fd00:9:1::5/64 (a ULA: counts as global unicast), link-local
  ll0      169.254.7.7/16, only the link-local fe80::7/64 (besides its own)
  br77     192.168.77.9/24, 2001:db8:77::9/64 (bridge)
  v4only0  10.8.0.1/24, IPv6 disabled (no v6 address at all)
"""

import secrets
import subprocess
from ipaddress import IPv4Address, IPv6Address

from twisted.trial import unittest

from flannel_tw.kernel.iface import ExtIface, IfaceError, lookup_ext_iface
from flannel_tw.testing import skips


class DualStackKernelTests(unittest.TestCase):
    skip = skips.missing(root=True, tools=("ip",), modules=("pyroute2",))

    def ip(self, *args):
        subprocess.run(["ip", "-n", self.ns] + list(args), check=True,
                       capture_output=True, text=True)

    def setUp(self):
        from pyroute2 import NetNS
        self.ns = "fl6" + secrets.token_hex(3)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-q", "-w",
                        "net.ipv6.conf.all.accept_dad=0",
                        "net.ipv6.conf.default.accept_dad=0"], check=True)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "ext0", "type", "veth", "peer", "name", "vp1")
        self.ip("link", "add", "ll0", "type", "veth", "peer", "name", "vp2")
        self.ip("link", "add", "br77", "type", "bridge")
        self.ip("link", "add", "v4only0", "type", "veth", "peer", "name", "vp3")
        subprocess.run(["ip", "netns", "exec", self.ns, "sysctl", "-q", "-w",
                        "net.ipv6.conf.v4only0.disable_ipv6=1"], check=True)
        self.ip("addr", "add", "10.9.1.5/24", "dev", "ext0")
        self.ip("addr", "add", "fd00:9:1::5/64", "dev", "ext0", "nodad")
        self.ip("addr", "add", "169.254.7.7/16", "dev", "ll0")
        self.ip("addr", "add", "fe80::7/64", "dev", "ll0", "nodad")
        self.ip("addr", "add", "192.168.77.9/24", "dev", "br77")
        self.ip("addr", "add", "2001:db8:77::9/64", "dev", "br77", "nodad")
        self.ip("addr", "add", "10.8.0.1/24", "dev", "v4only0")
        self.ip("link", "set", "ext0", "mtu", "1400")
        for dev in ["ext0", "vp1", "ll0", "vp2", "br77", "v4only0", "vp3"]:
            self.ip("link", "set", dev, "up")
        self.ipr = NetNS(self.ns)
        self.addCleanup(self.ipr.close)

    def lookup(self, ifaces=(), regexes=(), public_ip=None, public_ipv6=None, ipv6=True):
        return lookup_ext_iface(ifaces, regexes, public_ip, ipr=self.ipr,
                                public_ipv6=public_ipv6, ipv6=ipv6)

    def index(self, name):
        return self.ipr.link_lookup(ifname=name)[0]

    def defaults(self, v4="ext0", v6="ext0"):
        gw = {"ext0": "10.9.1.1", "br77": "192.168.77.1"}
        gw6 = {"ext0": "fd00:9:1::1", "br77": "2001:db8:77::1"}
        if v4:
            self.ip("route", "add", "default", "via", gw[v4], "dev", v4)
        if v6:
            self.ip("-6", "route", "add", "default", "via", gw6[v6], "dev", v6)

    def pick(self, got):
        return (got.name, str(got.addr), str(got.public_ip), str(got.addr6),
                str(got.public_ipv6))

    # -- the default route ------------------------------------------------------

    def test_default_route_both_families(self):
        self.defaults()
        self.assertEqual(
            self.lookup(),
            ExtIface(name="ext0", index=self.index("ext0"), addr=IPv4Address("10.9.1.5"),
                     public_ip=IPv4Address("10.9.1.5"), mtu=1400,
                     addr6=IPv6Address("fd00:9:1::5"),
                     public_ipv6=IPv6Address("fd00:9:1::5")))

    def test_default_routes_on_different_interfaces(self):
        self.defaults(v4="ext0", v6="br77")
        e = self.assertRaises(IfaceError, self.lookup)
        self.assertIn("v6 default route interface br77 must be the same with v4 default "
                      "route interface ext0", str(e))
        # IPv4-only configs do not look at the v6 routes at all
        self.assertEqual(self.lookup(ipv6=False).name, "ext0")

    def test_no_v6_default_route(self):
        self.defaults(v6=None)
        e = self.assertRaises(IfaceError, self.lookup)
        self.assertIn("Unable to find default v6 route", str(e))
        self.assertIn("ext0 (10.9.1.5; fd00:9:1::5", str(e))

    def test_v4_only_config_keeps_v010_choice(self):
        """ipv6=False: no v6 address, --public-ipv6 unused, a NAT'd --public-ip kept."""
        self.defaults()
        got = self.lookup(public_ip="203.0.113.7", public_ipv6="2001:db8::1", ipv6=False)
        self.assertEqual(self.pick(got), ("ext0", "10.9.1.5", "203.0.113.7", "None", "None"))

    # -- --public-ip / --public-ipv6 without --iface ------------------------------

    def test_public_ip_selects_its_interface(self):
        self.defaults()
        got = self.lookup(public_ip="192.168.77.9")
        # as --iface <IPv4>: the v6 address only from --public-ipv6
        self.assertEqual(self.pick(got), ("br77", "192.168.77.9", "192.168.77.9", "None",
                                          "None"))
        got = self.lookup(public_ip="192.168.77.9", public_ipv6="2001:db8:77::9")
        self.assertEqual(self.pick(got), ("br77", "192.168.77.9", "192.168.77.9",
                                          "2001:db8:77::9", "2001:db8:77::9"))

    def test_natted_public_ip_fails_in_dual_stack(self):
        self.defaults()
        e = self.assertRaises(IfaceError, self.lookup, public_ip="203.0.113.7")
        self.assertIn("--public-ip 203.0.113.7 selects the interface holding it", str(e))
        self.assertIn("No interface with given IP found", str(e))

    def test_public_ipv6_selects_its_interface(self):
        self.defaults()
        got = self.lookup(public_ipv6="2001:db8:77::9")
        self.assertEqual(self.pick(got), ("br77", "192.168.77.9", "192.168.77.9",
                                          "2001:db8:77::9", "2001:db8:77::9"))
        e = self.assertRaises(IfaceError, self.lookup, public_ipv6="2001:db8::99")
        self.assertIn("--public-ipv6 2001:db8::99 selects the interface", str(e))

    # -- --iface -----------------------------------------------------------------

    def test_iface_ipv4_takes_v6_only_from_public_ipv6(self):
        got = self.lookup(["10.9.1.5"])
        self.assertEqual(self.pick(got), ("ext0", "10.9.1.5", "10.9.1.5", "None", "None"))
        got = self.lookup(["10.9.1.5"], public_ipv6="fd00:9:1::5")
        self.assertEqual(self.pick(got), ("ext0", "10.9.1.5", "10.9.1.5", "fd00:9:1::5",
                                          "fd00:9:1::5"))

    def test_iface_ipv4_public_ipv6_elsewhere(self):
        e = self.assertRaises(IfaceError, self.lookup, ["10.9.1.5"],
                              public_ipv6="2001:db8:77::9")
        self.assertIn("v6 interface br77 must be the same with v4 interface ext0", str(e))
        e = self.assertRaises(IfaceError, self.lookup, ["10.9.1.5"],
                              public_ipv6="2001:db8::42")
        self.assertIn("No interface with given IPv6 found", str(e))

    def test_iface_ipv6_address(self):
        got = self.lookup(["fd00:9:1::5"])
        self.assertEqual(self.pick(got), ("ext0", "10.9.1.5", "10.9.1.5", "fd00:9:1::5",
                                          "fd00:9:1::5"))
        got = self.lookup(["2001:db8:77::9"], public_ip="198.51.100.1")
        self.assertEqual(self.pick(got), ("br77", "192.168.77.9", "198.51.100.1",
                                          "2001:db8:77::9", "2001:db8:77::9"))
        e = self.assertRaises(IfaceError, self.lookup, ["2001:db8::5"])
        self.assertIn("No interface with given IPv6 found", str(e))

    def test_iface_ipv6_address_passes_the_first_v4_choice(self):
        """The daemon chooses with ipv6=False before it reads the config: an IPv6
        --iface finds its interface there too (v4 = its first usable address)."""
        got = self.lookup(["2001:db8:77::9"], ipv6=False)
        self.assertEqual(self.pick(got), ("br77", "192.168.77.9", "192.168.77.9", "None",
                                          "None"))
        self.assertRaises(IfaceError, self.lookup, ["2001:db8::5"], ipv6=False)

    def test_iface_name_first_of_each_family(self):
        got = self.lookup(["ext0"])
        self.assertEqual(self.pick(got), ("ext0", "10.9.1.5", "10.9.1.5", "fd00:9:1::5",
                                          "fd00:9:1::5"))
        # a global v6 address wins over the interface's link-local one ...
        self.assertEqual(self.lookup(["br77"]).addr6, IPv6Address("2001:db8:77::9"))
        # ... and a link-local one is the fallback
        got = self.lookup(["ll0"])
        self.assertEqual(got.addr, IPv4Address("169.254.7.7"))
        self.assertTrue(got.addr6.is_link_local, got.addr6)

    def test_iface_name_without_v6(self):
        e = self.assertRaises(IfaceError, self.lookup, ["v4only0"])
        self.assertIn("failed to find IPv6 address for interface v4only0", str(e))
        # the next --iface is tried
        self.assertEqual(self.lookup(["v4only0", "br77"]).name, "br77")
        self.assertEqual(self.lookup(["v4only0"], ipv6=False).addr6, None)

    def test_public_ipv6_overrides_published(self):
        got = self.lookup(["ext0"], public_ipv6="2001:db8:ffff::1")
        self.assertEqual((str(got.addr6), str(got.public_ipv6)),
                         ("fd00:9:1::5", "2001:db8:ffff::1"))

    # -- --iface-regex -----------------------------------------------------------

    def test_regex_both_addresses_must_match(self):
        got = self.lookup(regexes=["9"])       # 10.9.1.5 and fd00:9:1::5
        self.assertEqual(self.pick(got), ("ext0", "10.9.1.5", "10.9.1.5", "fd00:9:1::5",
                                          "fd00:9:1::5"))
        got = self.lookup(regexes=["^192|^2001"])
        self.assertEqual(got.name, "br77")
        # only the v4 address matches: no interface by address, no name either
        e = self.assertRaises(IfaceError, self.lookup, regexes=[r"^10\.9\.1\.5$"])
        self.assertIn("Could not match pattern", str(e))
        # the same regex picks ext0 in an IPv4-only config
        self.assertEqual(self.lookup(regexes=[r"^10\.9\.1\.5$"], ipv6=False).name, "ext0")

    def test_regex_falls_back_to_names(self):
        got = self.lookup(regexes=["^ll"])
        self.assertEqual((got.name, str(got.addr)), ("ll0", "169.254.7.7"))
        self.assertTrue(got.addr6.is_link_local)
        e = self.assertRaises(IfaceError, self.lookup, regexes=["^v4only"])
        self.assertIn("failed to find IPv6 address for interface v4only0", str(e))
