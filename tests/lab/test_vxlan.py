"""The vxlan backend: options and lease attrs (pure), the backend's event logic against a
recording fake kernel, and the kernel code (flannel_tw.kernel.batch, backend/vxlan/device.py,
backend/hostgw.py) on a real kernel inside a private network namespace (root only)."""

import errno
import socket
import subprocess
import uuid
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyroute2.netlink.exceptions import NetlinkError
from twisted.trial import unittest

from flannel_tw.backend.hostgw import HostGwRoute
from flannel_tw.backend.vxlan.device import VxlanPeer, VxlanSpec, random_mac
from flannel_tw.kernel.batch import KernelError
from flannel_tw.kernel.rtnetlink import RouteEntry, route_request
from flannel_tw.testing.kernel_fixtures import MAC1, MAC2
from flannel_tw.testing.kernel_fixtures import LabKernel as Kernel
from flannel_tw.testing import skips


def sh(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


class NamespaceCase(unittest.TestCase):
    """A fresh namespace with a veth pair, eth0 = 192.168.250.11/24 (peer 'peer' .12)."""

    skip = skips.missing(root=True, tools=("ip",))

    def setUp(self):
        self.ns = "fltk" + uuid.uuid4().hex[:8]
        sh("ip", "netns", "add", self.ns)
        self.addCleanup(sh, "ip", "netns", "del", self.ns)
        self.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer")
        self.ip("addr", "add", "192.168.250.11/24", "dev", "eth0")
        self.ip("link", "set", "eth0", "up")
        self.ip("link", "set", "peer", "up")
        self.ip("link", "set", "lo", "up")
        self.kernel = Kernel(netns=self.ns)
        self.addCleanup(self.kernel.close)
        self.eth0 = self.kernel.link_index("eth0")

    def ip(self, *args):
        return sh("ip", "-n", self.ns, *args)

    def bridge(self, *args):
        return sh("bridge", "-n", self.ns, *args)


class KernelVxlanTests(NamespaceCase):
    def spec(self, **kw):
        kw.setdefault("vni", 1)
        kw.setdefault("link_index", self.eth0)
        kw.setdefault("local", IPv4Address("192.168.250.11"))
        return VxlanSpec(**kw)

    def test_create_reuse_recreate(self):
        index, mac, what = self.kernel.ensure_vxlan(self.spec())
        self.assertEqual(what, "created")
        details = self.ip("-d", "link", "show", "flannel.1")
        self.assertIn("vxlan id 1 local 192.168.250.11 dev eth0", details)
        self.assertIn("dstport 8472 nolearning", details)
        self.assertIn("mtu 1450", details)
        self.assertIn("link/ether %s" % mac, details)
        again = self.kernel.ensure_vxlan(self.spec())
        self.assertEqual(again, (index, mac, "reused"))
        _, mac2, what = self.kernel.ensure_vxlan(self.spec(port=4789))
        self.assertTrue(what.startswith("recreated"), what)
        self.assertIn("port 8472 (want 4789)", what)
        self.assertIn("dstport 4789", self.ip("-d", "link", "show", "flannel.1"))

    def test_gbp_and_learning_make_it_incompatible(self):
        self.ip("link", "add", "flannel.5", "type", "vxlan", "id", "5", "dev", "eth0",
                "local", "192.168.250.11", "dstport", "0")      # learning on
        _, _, what = self.kernel.ensure_vxlan(self.spec(vni=5, gbp=True))
        self.assertIn("learning 1 (want 0)", what)
        self.assertIn("gbp False (want True)", what)
        self.assertIn(" gbp ", self.ip("-d", "link", "show", "flannel.5"))
        self.assertEqual(self.kernel.ensure_vxlan(self.spec(vni=5, gbp=True))[2], "reused")

    def test_not_a_vxlan_device(self):
        self.ip("link", "add", "flannel.1", "type", "bridge")
        _, _, what = self.kernel.ensure_vxlan(self.spec())
        self.assertIn("link type bridge", what)

    def test_address(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        out = self.ip("-4", "addr", "show", "dev", "flannel.1")
        self.assertEqual(out.count("inet "), 1)
        self.assertIn("inet 10.5.1.0/32", out)
        self.assertIn("UP", self.ip("link", "show", "flannel.1"))
        self.kernel.configure_vxlan(index, IPv4Address("10.5.2.0"))      # one other: replaced
        out = self.ip("-4", "addr", "show", "dev", "flannel.1")
        self.assertEqual(out.count("inet "), 1)
        self.assertIn("inet 10.5.2.0/32", out)
        self.ip("addr", "add", "10.9.9.9/32", "dev", "flannel.1")
        self.ip("addr", "add", "10.9.9.8/32", "dev", "flannel.1")
        e = self.assertRaises(KernelError, self.kernel.configure_vxlan, index,
                              IPv4Address("10.5.3.0"))
        self.assertIn("incompatible addresses", str(e))

    def entries(self):
        return (self.ip("route", "show", "dev", "flannel.1"),
                self.ip("neigh", "show", "dev", "flannel.1"),
                self.bridge("fdb", "show", "dev", "flannel.1"))

    def test_peer_entries_exactly_once(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        peer = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        for _ in range(2):
            got = self.kernel.install_vxlan_peer(index, self.eth0, peer)
        self.assertFalse(got.direct)
        routes, neigh, fdb = self.entries()
        self.assertEqual(routes.strip(), "10.5.2.0/24 via 10.5.2.0 onlink")
        self.assertEqual(neigh.strip(), "10.5.2.0 lladdr %s PERMANENT" % MAC1)
        self.assertEqual([l for l in fdb.splitlines() if "dst" in l],
                         ["%s dst 192.168.250.12 self permanent" % MAC1])
        self.assertEqual(self.kernel.fdb(index), [(MAC1, IPv4Address("192.168.250.12"))])
        self.assertEqual(self.kernel.neighbours(index), [(IPv4Address("10.5.2.0"), MAC1)])
        self.kernel.remove_vxlan_peer(index, self.eth0, peer)
        self.kernel.remove_vxlan_peer(index, self.eth0, peer)          # already gone: fine
        routes, neigh, fdb = self.entries()
        self.assertEqual((routes.strip(), neigh.strip()), ("", ""))
        self.assertNotIn("dst", fdb)

    def test_direct_routing(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        near = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        got = self.kernel.install_vxlan_peer(index, self.eth0, near, direct_routing=True)
        self.assertTrue(got.direct)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(),
                         "10.5.2.0/24 via 192.168.250.12 dev eth0")
        self.assertEqual(self.entries()[1].strip(), "")
        self.ip("route", "add", "10.77.0.0/16", "via", "192.168.250.1")
        far = VxlanPeer(IPv4Network("10.5.3.0/24"), IPv4Address("10.77.0.1"), MAC2)
        self.assertFalse(self.kernel.install_vxlan_peer(index, self.eth0, far,
                                                        direct_routing=True).direct)
        self.kernel.remove_vxlan_peer(index, self.eth0, got)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(), "")

    def test_failed_route_undoes_neighbour_and_fdb(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))

        class Failing(Kernel):
            def _peer_route(self, peer, index):     # a device that does not exist
                return route_request("replace", peer.subnet, peer.gateway, 999999,
                                     onlink=True)
        peer = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        failing = Failing(self.ns)
        self.addCleanup(failing.close)
        e = self.assertRaises(NetlinkError, failing.install_vxlan_peer, index, self.eth0,
                              peer)
        self.assertEqual(e.code, errno.ENODEV)
        routes, neigh, fdb = self.entries()
        self.assertEqual((routes.strip(), neigh.strip()), ("", ""))
        self.assertNotIn("dst", fdb)

    def test_batch_failure_undoes_only_that_entry(self):
        """One batch, three peers; the middle one's route fails: only its entries go."""
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        bad = IPv4Network("10.5.3.0/24")

        class Failing(Kernel):
            def _peer_route(self, peer, index):
                if peer.subnet == bad:
                    index = 999999
                return Kernel._peer_route(self, peer, index)
        peers = [VxlanPeer(IPv4Network("10.5.%d.0/24" % i), IPv4Address("192.168.250.%d" % i),
                           "02:00:00:00:00:%02x" % i) for i in (2, 3, 4)]
        failing = Failing(self.ns)
        self.addCleanup(failing.close)
        results = failing.apply_vxlan_peers(index, self.eth0, [(None, p) for p in peers])
        self.assertEqual(results[0], peers[0])
        self.assertIsInstance(results[1], NetlinkError)
        self.assertEqual(results[2], peers[2])
        self.assertEqual(sorted(r.subnet for r in self.kernel.routes(IPv4Network("10.5.0.0/16"))),
                         [peers[0].subnet, peers[2].subnet])
        self.assertEqual(sorted(self.kernel.neighbours(index)),
                         [(p.gateway, p.mac) for p in (peers[0], peers[2])])
        self.assertEqual(sorted(self.kernel.fdb(index)),
                         [(p.mac, p.public_ip) for p in (peers[0], peers[2])])

    def test_big_batch_one_socket_few_datagrams(self):
        """1,000 peers in one call: every entry in place, a handful of datagrams."""
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        peers = [VxlanPeer(IPv4Network("10.%d.%d.0/24" % (6 + i // 256, i % 256)),
                           IPv4Address("192.168.250.%d" % (100 + i % 100)),
                           "02:00:00:00:%02x:%02x" % (i >> 8, i & 255)) for i in range(1000)]
        before = self.kernel.netlink.sends
        results = self.kernel.apply_vxlan_peers(index, self.eth0, [(None, p) for p in peers])
        self.assertEqual(results, peers)
        self.assertLessEqual(self.kernel.netlink.sends - before, 3 * 4)   # 4 windows
        self.assertEqual(len(self.kernel.routes(IPv4Network("10.0.0.0/8"))), 1000)
        self.assertEqual(len(self.kernel.neighbours(index)), 1000)
        self.assertEqual(len(self.kernel.fdb(index)), 1000)
        # moved: remove + install in the same batch, and removals only
        moved = [replace(p, public_ip=IPv4Address("192.168.250.9")) for p in peers[:10]]
        changes = [(p, m) for p, m in zip(peers[:10], moved)] + [(p, None) for p in peers[10:]]
        results = self.kernel.apply_vxlan_peers(index, self.eth0, changes)
        self.assertEqual(results, moved + [None] * 990)
        self.assertEqual(sorted(self.kernel.fdb(index)),
                         sorted((m.mac, m.public_ip) for m in moved))
        self.assertEqual(len(self.kernel.routes(IPv4Network("10.0.0.0/8"))), 10)

    def test_remove_stale(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        keep = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        gone = VxlanPeer(IPv4Network("10.5.3.0/24"), IPv4Address("192.168.250.13"), MAC2)
        self.kernel.install_vxlan_peer(index, self.eth0, keep)
        self.kernel.install_vxlan_peer(index, self.eth0, gone)
        self.ip("route", "add", "10.5.4.0/24", "via", "192.168.250.14", "dev", "eth0")
        self.ip("route", "add", "10.6.0.0/24", "via", "192.168.250.14", "dev", "eth0")  # not ours
        removed = self.kernel.remove_stale(IPv4Network("10.5.0.0/16"), [keep.subnet], index,
                                           self.eth0, [MAC1])
        self.assertEqual(sorted(removed), sorted([
            "route 10.5.3.0/24 via 10.5.3.0", "route 10.5.4.0/24 via 192.168.250.14",
            "neighbour 10.5.3.0 lladdr %s" % MAC2, "fdb %s dst 192.168.250.13" % MAC2]))
        routes, neigh, fdb = self.entries()
        self.assertEqual(routes.strip(), "10.5.2.0/24 via 10.5.2.0 onlink")
        self.assertNotIn(MAC2, neigh + fdb)
        self.assertIn("10.6.0.0/24", self.ip("route"))
        self.assertNotIn("10.5.4.0", self.ip("route"))


class KernelHostGwTests(NamespaceCase):
    def test_route_replace_and_check(self):
        route = HostGwRoute(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"))
        for _ in range(2):
            self.kernel.install_hostgw(route, self.eth0)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(),
                         "10.5.2.0/24 via 192.168.250.12 dev eth0")
        self.assertTrue(self.kernel.has_route(route.subnet, route.gateway, self.eth0))
        moved = HostGwRoute(route.subnet, IPv4Address("192.168.250.13"))
        self.kernel.install_hostgw(moved, self.eth0)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(),
                         "10.5.2.0/24 via 192.168.250.13 dev eth0")
        self.assertFalse(self.kernel.has_route(route.subnet, route.gateway, self.eth0))
        self.kernel.remove_hostgw(route, self.eth0)      # not that gateway: stays
        self.assertIn("10.5.2.0/24", self.ip("route"))
        self.kernel.remove_hostgw(moved, self.eth0)
        self.assertNotIn("10.5.2.0/24", self.ip("route"))

    def test_unreachable_gateway(self):
        route = HostGwRoute(IPv4Network("10.5.2.0/24"), IPv4Address("10.77.0.1"))
        e = self.assertRaises(NetlinkError, self.kernel.install_hostgw, route, self.eth0)
        self.assertEqual(e.code, 101)   # ENETUNREACH: not on the link


class NamespaceV6Case(NamespaceCase):
    """NamespaceCase plus IPv6 on the link: eth0 fd00:250::11/64 (fd00:250::12 and the
    rest of the /64 are "other hosts": on the link, not local)."""

    def setUp(self):
        NamespaceCase.setUp(self)
        self.ip("addr", "add", "fd00:250::11/64", "dev", "eth0", "nodad")


class KernelVxlanV6Tests(NamespaceV6Case):
    """flannel-v6.<VNI> and its peers on a real kernel (issue 15)."""

    NET6 = IPv6Network("fc00:5::/48")

    def spec(self, **kw):
        kw.setdefault("vni", 1)
        kw.setdefault("link_index", self.eth0)
        kw.setdefault("local", IPv6Address("fd00:250::11"))
        return VxlanSpec(**kw)

    def device(self, address="fc00:5:0:1::"):
        index, mac, what = self.kernel.ensure_vxlan(self.spec(mac=random_mac()))
        self.kernel.configure_vxlan(index, IPv6Address(address))
        return index

    def test_create_reuse_recreate(self):
        mac = random_mac()
        index, got, what = self.kernel.ensure_vxlan(self.spec(mac=mac, gbp=True))
        self.assertEqual((got, what), (mac, "created"))
        details = self.ip("-d", "link", "show", "flannel-v6.1")
        self.assertIn("vxlan id 1 local fd00:250::11 dev eth0", details)
        self.assertIn("dstport 8472 nolearning", details)
        self.assertIn(" gbp ", details)
        self.assertIn("link/ether %s" % mac, details)
        self.assertEqual(sh("ip", "netns", "exec", self.ns, "cat",
                            "/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra").strip(), "0")
        self.assertEqual(sh("cat", "/proc/sys/net/ipv6/conf/default/accept_ra").strip() != "",
                         True)
        # reused with its own MAC, whatever the spec's
        self.assertEqual(self.kernel.ensure_vxlan(self.spec(mac=random_mac(), gbp=True)),
                         (index, mac, "reused"))
        # the v4 device beside it is another device
        index4, _, what4 = self.kernel.ensure_vxlan(
            VxlanSpec(vni=1, link_index=self.eth0, local=IPv4Address("192.168.250.11")))
        self.assertEqual(what4, "created")
        self.assertNotEqual(index4, index)
        _, _, what = self.kernel.ensure_vxlan(self.spec(mac=mac))
        self.assertTrue(what.startswith("recreated"), what)
        self.assertIn("gbp True (want False)", what)
        _, _, what = self.kernel.ensure_vxlan(self.spec(mac=mac,
                                                        local=IPv6Address("fd00:250::99")))
        self.assertIn("local fd00:250::11 (want fd00:250::99)", what)

    def test_address(self):
        index = self.device()
        self.ip("addr", "add", "fc00:9::9/64", "dev", "flannel-v6.1", "nodad")
        self.ip("addr", "add", "fc00:9::8/128", "dev", "flannel-v6.1", "nodad")
        self.kernel.configure_vxlan(index, IPv6Address("fc00:5:0:1::"))
        out = self.ip("-6", "addr", "show", "dev", "flannel-v6.1", "scope", "global")
        self.assertEqual(out.count("inet6 "), 1, out)
        self.assertIn("inet6 fc00:5:0:1::/128", out)
        self.assertIn("UP", self.ip("link", "show", "flannel-v6.1"))
        link_local = self.ip("-6", "addr", "show", "dev", "flannel-v6.1", "scope", "link")
        self.assertIn("inet6 fe80::", link_local)                   # link-local kept
        self.kernel.configure_vxlan(index, IPv6Address("fc00:5:0:7::"))   # moved lease
        out = self.ip("-6", "addr", "show", "dev", "flannel-v6.1", "scope", "global")
        self.assertEqual(out.count("inet6 "), 1, out)
        self.assertIn("inet6 fc00:5:0:7::/128", out)
        # the IPv4 rule is not the IPv6 one: several IPv4 addresses are still an error
        self.assertNotIn("inet ", self.ip("addr", "show", "dev", "flannel-v6.1"))

    def entries(self):
        return (self.ip("-6", "route", "show", "dev", "flannel-v6.1"),
                self.ip("-6", "neigh", "show", "dev", "flannel-v6.1"),
                self.bridge("fdb", "show", "dev", "flannel-v6.1"))

    def test_peer_entries_exactly_once(self):
        index = self.device()
        peer = VxlanPeer(IPv6Network("fc00:5:0:2::/64"), IPv6Address("fd00:250::12"), MAC1)
        for _ in range(2):
            got = self.kernel.install_vxlan_peer(index, self.eth0, peer)
        self.assertFalse(got.direct)
        routes, neigh, fdb = self.entries()
        self.assertIn("fc00:5:0:2::/64 via fc00:5:0:2:: metric 1024 onlink", routes)
        self.assertEqual(neigh.strip(), "fc00:5:0:2:: lladdr %s PERMANENT" % MAC1)
        self.assertEqual([l for l in fdb.splitlines() if "dst" in l],
                         ["%s dst fd00:250::12 self permanent" % MAC1])
        self.assertEqual(self.kernel.fdb(index), [(MAC1, IPv6Address("fd00:250::12"))])
        self.assertEqual(self.kernel.neighbours(index, socket.AF_INET6),
                         [(IPv6Address("fc00:5:0:2::"), MAC1)])
        self.assertEqual(self.kernel.routes(self.NET6), [
            RouteEntry(peer.subnet, peer.gateway, index)])
        self.kernel.remove_vxlan_peer(index, self.eth0, peer)
        self.kernel.remove_vxlan_peer(index, self.eth0, peer)          # already gone: fine
        routes, neigh, fdb = self.entries()
        self.assertNotIn("fc00:5:0:2::", routes + neigh)
        self.assertNotIn("dst", fdb)

    def test_direct_routing(self):
        index = self.device()
        near = VxlanPeer(IPv6Network("fc00:5:0:2::/64"), IPv6Address("fd00:250::12"), MAC1)
        got = self.kernel.install_vxlan_peer(index, self.eth0, near, direct_routing=True)
        self.assertTrue(got.direct)
        self.assertIn("fc00:5:0:2::/64 via fd00:250::12 dev eth0",
                      self.ip("-6", "route", "show", "fc00:5:0:2::/64"))
        self.assertEqual(self.entries()[1].strip(), "")
        self.ip("-6", "route", "add", "fd77::/64", "via", "fd00:250::12")
        far = VxlanPeer(IPv6Network("fc00:5:0:3::/64"), IPv6Address("fd77::1"), MAC2)
        self.assertFalse(self.kernel.install_vxlan_peer(index, self.eth0, far,
                                                        direct_routing=True).direct)
        self.kernel.remove_vxlan_peer(index, self.eth0, got)
        self.assertEqual(self.ip("-6", "route", "show", "fc00:5:0:2::/64").strip(), "")

    def test_one_batch_both_families(self):
        index4, _, _ = self.kernel.ensure_vxlan(
            VxlanSpec(vni=1, link_index=self.eth0, local=IPv4Address("192.168.250.11")))
        self.kernel.configure_vxlan(index4, IPv4Address("10.5.1.0"))
        index6 = self.device()
        p4 = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        p6 = VxlanPeer(IPv6Network("fc00:5:0:2::/64"), IPv6Address("fd00:250::12"), MAC2)
        results = self.kernel.apply_vxlan_peers(index4, self.eth0, [(None, p4), (None, p6)],
                                                index6=index6)
        self.assertEqual(results, [p4, p6])
        self.assertEqual(self.kernel.fdb(index4), [(MAC1, IPv4Address("192.168.250.12"))])
        self.assertEqual(self.kernel.fdb(index6), [(MAC2, IPv6Address("fd00:250::12"))])
        # without a flannel-v6 device, an IPv6 peer fails alone
        results = self.kernel.apply_vxlan_peers(index4, self.eth0, [(p4, None), (None, p6)])
        self.assertIsNone(results[0])
        self.assertIsInstance(results[1], KernelError)

    def test_remove_stale(self):
        index = self.device()
        keep = VxlanPeer(IPv6Network("fc00:5:0:2::/64"), IPv6Address("fd00:250::12"), MAC1)
        gone = VxlanPeer(IPv6Network("fc00:5:0:3::/64"), IPv6Address("fd00:250::13"), MAC2)
        self.kernel.install_vxlan_peer(index, self.eth0, keep)
        self.kernel.install_vxlan_peer(index, self.eth0, gone)
        self.ip("-6", "route", "add", "fc00:5:0:4::/64", "via", "fd00:250::14", "dev", "eth0")
        self.ip("-6", "route", "add", "fc00:6::/64", "via", "fd00:250::14", "dev", "eth0")
        removed = self.kernel.remove_stale(self.NET6, [keep.subnet], index, self.eth0, [MAC1])
        self.assertEqual(sorted(removed), sorted([
            "route fc00:5:0:3::/64 via fc00:5:0:3::",
            "route fc00:5:0:4::/64 via fd00:250::14",
            "neighbour fc00:5:0:3:: lladdr %s" % MAC2, "fdb %s dst fd00:250::13" % MAC2]))
        routes, neigh, fdb = self.entries()
        self.assertIn("fc00:5:0:2::/64 via fc00:5:0:2::", routes)
        self.assertNotIn("fc00:5:0:3::", routes)
        self.assertNotIn(MAC2, neigh + fdb)
        self.assertIn("fc00:6::/64", self.ip("-6", "route"))
        self.assertNotIn("fc00:5:0:4::", self.ip("-6", "route"))


class KernelHostGwV6Tests(NamespaceV6Case):
    def test_route_replace_and_check(self):
        route = HostGwRoute(IPv6Network("fc00:5:0:2::/64"), IPv6Address("fd00:250::12"))
        for _ in range(2):
            self.kernel.install_hostgw(route, self.eth0)
        self.assertIn("fc00:5:0:2::/64 via fd00:250::12 dev eth0",
                      self.ip("-6", "route", "show", "fc00:5:0:2::/64"))
        self.assertTrue(self.kernel.has_route(route.subnet, route.gateway, self.eth0))
        moved = HostGwRoute(route.subnet, IPv6Address("fd00:250::13"))
        self.kernel.install_hostgw(moved, self.eth0)
        self.assertFalse(self.kernel.has_route(route.subnet, route.gateway, self.eth0))
        self.assertTrue(self.kernel.has_route(route.subnet, moved.gateway, self.eth0))
        self.kernel.remove_hostgw(moved, self.eth0)
        self.assertNotIn("fc00:5:0:2::", self.ip("-6", "route"))
        removed = []
        self.kernel.install_hostgw(route, self.eth0)
        removed = self.kernel.remove_stale(IPv6Network("fc00:5::/48"), [], None, self.eth0)
        self.assertEqual(removed, ["route fc00:5:0:2::/64 via fd00:250::12"])
