"""Tests for flannel_tw.kernel.iface on a real kernel, inside a network namespace
made for each test (veth pairs and a bridge with addresses and a default route)."""

import os
import secrets
import subprocess
import sys
from ipaddress import IPv4Address

from twisted.trial import unittest

from flannel_tw.kernel.iface import FAILED, ExtIface, IfaceError, lookup_ext_iface
from flannel_tw.testing import skips


class _MTUZero:
    """Wraps an IPRoute-like object and reports MTU 0 for one interface."""

    def __init__(self, ipr, name):
        self._ipr, self._name = ipr, name

    def get_addr(self, **kw):
        return self._ipr.get_addr(**kw)

    def get_routes(self, **kw):
        return self._ipr.get_routes(**kw)

    def get_links(self):
        links = list(self._ipr.get_links())
        for msg in links:
            if msg.get_attr("IFLA_IFNAME") == self._name:
                msg["attrs"] = [(k, 0 if k == "IFLA_MTU" else v)
                                for k, v in msg["attrs"]]
        return links


class KernelTests(unittest.TestCase):
    """
    Namespace layout (interfaces created in this order, so index order too):

      lo      127.0.0.1
      vp1     no address (peer of ext0; peers get the lower index)
      ext0    169.254.9.9/16 then 10.9.1.5/24 and 10.9.2.5/24, mtu 1400
      vp2     no address (peer of ll0)
      ll0     169.254.7.7/16 only
      br77    192.168.77.9/24 (bridge), mtu 1500
      vp3     no address (peer of bare0)
      bare0   no IPv4 address
    """
    skip = skips.missing(root=True, tools=("ip",), modules=("pyroute2",))

    def ip(self, *args):
        subprocess.run(["ip", "-n", self.ns] + list(args), check=True,
                       capture_output=True, text=True)

    def setUp(self):
        from pyroute2 import NetNS
        self.ns = "fli" + secrets.token_hex(3)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns],
                        capture_output=True)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "ext0", "type", "veth", "peer", "name", "vp1")
        self.ip("link", "add", "ll0", "type", "veth", "peer", "name", "vp2")
        self.ip("link", "add", "br77", "type", "bridge")
        self.ip("link", "add", "bare0", "type", "veth", "peer", "name", "vp3")
        self.ip("addr", "add", "169.254.9.9/16", "dev", "ext0")
        self.ip("addr", "add", "10.9.1.5/24", "dev", "ext0")
        self.ip("addr", "add", "10.9.2.5/24", "dev", "ext0")
        self.ip("addr", "add", "169.254.7.7/16", "dev", "ll0")
        self.ip("addr", "add", "192.168.77.9/24", "dev", "br77")
        self.ip("link", "set", "ext0", "mtu", "1400")
        for dev in ["ext0", "vp1", "ll0", "vp2", "br77", "bare0", "vp3"]:
            self.ip("link", "set", dev, "up")
        self.ipr = NetNS(self.ns)
        self.addCleanup(self.ipr.close)

    def lookup(self, ifaces=(), regexes=(), public_ip=None):
        return lookup_ext_iface(ifaces, regexes, public_ip, ipr=self.ipr)

    def index(self, name):
        return self.ipr.link_lookup(ifname=name)[0]

    def add_default_route(self):
        self.ip("route", "add", "default", "via", "10.9.1.1", "dev", "ext0")

    # -- no --iface / --iface-regex: default route -----------------------------

    def test_default_route_interface(self):
        self.add_default_route()
        self.assertEqual(
            self.lookup(),
            ExtIface(name="ext0", index=self.index("ext0"),
                     addr=IPv4Address("10.9.1.5"),
                     public_ip=IPv4Address("10.9.1.5"), mtu=1400))

    def test_default_route_on_other_interface(self):
        self.ip("route", "add", "default", "via", "192.168.77.1", "dev", "br77")
        got = self.lookup()
        self.assertEqual((got.name, got.addr, got.mtu),
                         ("br77", IPv4Address("192.168.77.9"), 1500))

    def test_default_route_in_other_table_ignored(self):
        self.ip("route", "add", "default", "via", "10.9.1.1", "dev", "ext0",
                "table", "100")
        e = self.assertRaises(IfaceError, self.lookup)
        self.assertIn("Unable to find default route", str(e))

    def test_no_default_route_lists_interfaces(self):
        e = self.assertRaises(IfaceError, self.lookup)
        msg = str(e)
        self.assertIn("default route", msg)
        for part in ["lo (127.0.0.1)", "ext0 (169.254.9.9,10.9.1.5,10.9.2.5)",
                     "ll0 (169.254.7.7)", "br77 (192.168.77.9)",
                     "bare0 (no IPv4)"]:
            self.assertIn(part, msg)

    def test_public_ip(self):
        self.add_default_route()
        got = self.lookup(public_ip="203.0.113.7")
        self.assertEqual((got.addr, got.public_ip),
                         (IPv4Address("10.9.1.5"), IPv4Address("203.0.113.7")))

    def test_bad_public_ip(self):
        self.add_default_route()
        e = self.assertRaises(ValueError, self.lookup, public_ip="10.0.0.300")
        self.assertIn("--public-ip", str(e))

    # -- --iface ---------------------------------------------------------------

    def test_iface_by_name(self):
        got = self.lookup(["br77"])
        self.assertEqual((got.name, got.index, got.addr),
                         ("br77", self.index("br77"), IPv4Address("192.168.77.9")))

    def test_iface_name_prefers_global_over_link_local(self):
        got = self.lookup(["ext0"])
        self.assertEqual(got.addr, IPv4Address("10.9.1.5"))

    def test_iface_name_link_local_only(self):
        got = self.lookup(["ll0"])
        self.assertEqual(got.addr, IPv4Address("169.254.7.7"))

    def test_iface_by_ip_uses_that_ip(self):
        got = self.lookup(["10.9.2.5"])
        self.assertEqual((got.name, got.addr, got.public_ip),
                         ("ext0", IPv4Address("10.9.2.5"), IPv4Address("10.9.2.5")))
        # even a link-local one, exactly as given
        got = self.lookup(["169.254.9.9"])
        self.assertEqual((got.name, got.addr), ("ext0", IPv4Address("169.254.9.9")))

    def test_iface_by_ip_with_public_ip(self):
        got = self.lookup(["192.168.77.9"], public_ip="198.51.100.1")
        self.assertEqual((got.name, got.addr, got.public_ip),
                         ("br77", IPv4Address("192.168.77.9"),
                          IPv4Address("198.51.100.1")))

    def test_iface_in_order_first_success_wins(self):
        got = self.lookup(["nosuch0", "10.99.99.99", "bare0", "ll0", "br77"])
        self.assertEqual(got.name, "ll0")

    def test_iface_before_regex(self):
        self.assertEqual(self.lookup(["br77"], ["ext"]).name, "br77")
        self.assertEqual(self.lookup(["nosuch0"], ["ext"]).name, "ext0")

    def test_iface_ignores_default_route(self):
        self.add_default_route()
        self.assertEqual(self.lookup(["br77"]).name, "br77")

    # -- --iface-regex ---------------------------------------------------------

    def test_regex_matches_ip_first(self):
        # "77" is in br77's name and its address; "9" is in ext0's first
        # usable address, which comes earlier in index order.
        got = self.lookup(regexes=["9"])
        self.assertEqual((got.name, got.addr), ("ext0", IPv4Address("10.9.1.5")))

    def test_regex_ip_before_name(self):
        # "168" is in br77's address and in the name of x168, which has a
        # lower index; addresses are tried before names.
        self.ip("link", "set", "ll0", "down")
        self.ip("link", "set", "ll0", "name", "x168")
        got = self.lookup(regexes=["168"])
        self.assertEqual(got.name, "br77")

    def test_regex_unanchored_ip(self):
        got = self.lookup(regexes=[r"168\.77"])
        self.assertEqual(got.name, "br77")

    def test_regex_only_first_usable_address_is_matched(self):
        # 10.9.2.5 is ext0's second global address: not matched by IP.
        e = self.assertRaises(IfaceError, self.lookup, regexes=[r"^10\.9\.2\."])
        self.assertIn(FAILED, str(e))

    def test_regex_name(self):
        got = self.lookup(regexes=["^ll"])
        self.assertEqual((got.name, got.addr), ("ll0", IPv4Address("169.254.7.7")))

    def test_regex_first_name_match_wins_even_without_address(self):
        # flanneld takes the first name that matches, then fails on it
        e = self.assertRaises(IfaceError, self.lookup, regexes=["^vp"])
        self.assertIn("failed to find IPv4 address for interface vp1", str(e))

    def test_regex_in_order(self):
        got = self.lookup(regexes=["^nomatch$", "br"])
        self.assertEqual(got.name, "br77")

    # -- errors ----------------------------------------------------------------

    def test_no_match_lists_candidates_and_request(self):
        e = self.assertRaises(IfaceError, self.lookup, ["nosuch0", "10.1.1.1"],
                              ["^zz"])
        msg = str(e)
        self.assertIn(FAILED, msg)
        self.assertIn("--iface=nosuch0,10.1.1.1", msg)
        self.assertIn("--iface-regex=^zz", msg)
        self.assertIn("ext0 (169.254.9.9,10.9.1.5,10.9.2.5)", msg)
        self.assertIn("br77 (192.168.77.9)", msg)
        self.assertIn("bare0 (no IPv4)", msg)

    def test_interface_without_ipv4(self):
        e = self.assertRaises(IfaceError, self.lookup, ["bare0"])
        self.assertIn("failed to find IPv4 address for interface bare0", str(e))
        # lo has only 127.0.0.1, which is neither global nor link-local
        self.assertRaises(IfaceError, self.lookup, ["lo"])

    def test_mtu_zero(self):
        ipr = _MTUZero(self.ipr, "br77")
        e = self.assertRaises(IfaceError, lookup_ext_iface, ["br77"], ipr=ipr)
        self.assertIn("failed to determine MTU", str(e))
        self.assertEqual(lookup_ext_iface(["ext0"], ipr=ipr).mtu, 1400)

    def test_opens_own_iproute(self):
        """With ipr=None, the current namespace is read (here: by moving into ours)."""
        self.add_default_route()
        code = ("from flannel_tw.kernel.iface import lookup_ext_iface as l;"
                "r=l(); print(r.name, r.addr, r.mtu)")
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", code],
            check=True, capture_output=True, text=True,
            env=dict(os.environ, PYTHONPATH=here))
        self.assertEqual(out.stdout.split(), ["ext0", "10.9.1.5", "1400"])
