"""
IPv6 in the routed backends (issue 15), logic against the recording fake kernel: the
vxlan flannel-v6 device and BackendV6Data, host-gw IPv6 routes, and the mixed stacks
flanneld v0.20 crashes on (an IPv4-only host seeing "&" leases, a dual-stack host seeing
IPv4-only leases, a lease with a missing or bad BackendV6Data). The real-kernel parts
are in tests.lab.test_vxlan (KernelVxlanV6Tests, KernelHostGwV6Tests) and
tests.lab.test_dualstack_routed.
"""
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet import defer, task
from twisted.trial import unittest

from flannel_tw.backend.hostgw import HostGwBackend, HostGwError, HostGwRoute
from flannel_tw.backend.vxlan.backend import VxlanBackend, lease_attrs
from flannel_tw.backend.vxlan.device import VxlanPeer, VxlanSpec
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.model.config import parse_config
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.testing.fakes import FakeKernel
from flannel_tw.testing.kernel_fixtures import IFACE, MAC1, MAC2, logged, sync

IFACE6 = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                  public_ip=IPv4Address("192.168.250.11"), mtu=1500,
                  addr6=IPv6Address("fd00:250::11"), public_ipv6=IPv6Address("fd00:250::11"))
NET6 = IPv6Network("fc00:5::/48")
MAC3 = "02:00:00:00:00:03"


def config(kind="vxlan", v6=True, backend=None):
    text = '{"Network":"10.5.0.0/16",%s"Backend":%s}' % (
        '"EnableIPv6":true,"IPv6Network":"fc00:5::/48",' if v6 else "",
        backend or '{"Type":"%s"}' % kind)
    return parse_config(text)


def dual(i, kind="vxlan", v6=True, data6="mac", public_ipv6=True, subnet6=None):
    """Host i's lease: 10.5.i.0/24, with v6 (default) fc00:5:0:i::/64."""
    data = {"VtepMAC": "02:00:00:00:04:%02x" % i} if kind == "vxlan" else None
    if data6 == "mac":
        data6 = {"VNI": 1, "VtepMAC": "02:00:00:00:06:%02x" % i} if kind == "vxlan" else None
    attrs = LeaseAttrs(public_ip=IPv4Address("192.168.250.%d" % (10 + i)), backend_type=kind,
                       backend_data=data,
                       public_ipv6=(IPv6Address("fd00:250::%d" % (10 + i))
                                    if v6 and public_ipv6 else None),
                       backend_v6_data=data6 if v6 else None)
    return Lease(subnet=IPv4Network("10.5.%d.0/24" % i), attrs=attrs, ttl=86400,
                 ipv6_subnet=(IPv6Network(subnet6 or "fc00:5:0:%x::/64" % i) if v6 else None))


def v4peer(i):
    return VxlanPeer(IPv4Network("10.5.%d.0/24" % i), IPv4Address("192.168.250.%d" % (10 + i)),
                     "02:00:00:00:04:%02x" % i)


def v6peer(i):
    return VxlanPeer(IPv6Network("fc00:5:0:%x::/64" % i), IPv6Address("fd00:250::%d" % (10 + i)),
                     "02:00:00:00:06:%02x" % i)


def added(*leases):
    return [LeaseEvent(ADDED, l) for l in leases]


def warnings(log):
    return [m for level, m in log if level == "warn"]


def errors(log):
    return [m for level, m in log if level == "error"]


class VxlanDualStackTests(unittest.TestCase):
    def setUp(self):
        self.kernel = FakeKernel()
        self.backend = VxlanBackend(None, IFACE6, kernel=self.kernel, to_thread=sync)
        self.log = logged(self.backend)

    def start(self, v6=True):
        cfg = config(v6=v6)
        attrs = self.successResultOf(self.backend.prepare(cfg))
        self.successResultOf(self.backend.start(cfg, dual(1, v6=v6)))
        return attrs

    def installed(self):
        return [e[1] for e in self.kernel.events if e[0] == "install"]

    def test_prepare_and_start_make_both_devices(self):
        attrs = self.start()
        ensure = [e[1] for e in self.kernel.events if e[0] == "ensure_vxlan"]
        self.assertEqual(ensure, [
            VxlanSpec(vni=1, link_index=7, local=IPv4Address("192.168.250.11")),
            VxlanSpec(vni=1, link_index=7, local=IPv6Address("fd00:250::11"))])
        self.assertEqual(ensure[1].name, "flannel-v6.1")
        mac6 = ensure[1].mac
        first = int(mac6.split(":")[0], 16)
        self.assertEqual(first & 3, 2, mac6)            # unicast, locally administered
        self.assertEqual(attrs, lease_attrs("192.168.250.11", "0a:0b:0c:0d:0e:0f",
                                            "fd00:250::11", mac6, 1))
        self.assertEqual(attrs.backend_v6_data, {"VNI": 1, "VtepMAC": mac6})
        self.assertEqual(attrs.public_ipv6, IPv6Address("fd00:250::11"))
        self.assertEqual((self.backend.index6, self.backend.mac6, self.backend.device6),
                         (13, mac6, "flannel-v6.1"))
        configured = [e[1:] for e in self.kernel.events if e[0] == "configure_vxlan"]
        self.assertEqual(configured, [(12, IPv4Address("10.5.1.0")),
                                      (13, IPv6Address("fc00:5:0:1::"))])

    def test_same_options_on_both_devices(self):
        cfg = config(backend='{"Type":"vxlan","VNI":7,"Port":4789,"GBP":true}')
        attrs = self.successResultOf(self.backend.prepare(cfg))
        v4, v6 = [e[1] for e in self.kernel.events if e[0] == "ensure_vxlan"]
        self.assertEqual((v6.vni, v6.port, v6.gbp, v6.name), (7, 4789, True, "flannel-v6.7"))
        self.assertEqual((v4.vni, v4.port, v4.gbp), (7, 4789, True))
        self.assertEqual(attrs.backend_v6_data["VNI"], 7)

    def test_ipv4_only_config_makes_no_v6_device(self):
        attrs = self.start(v6=False)
        self.assertEqual(len([e for e in self.kernel.events if e[0] == "ensure_vxlan"]), 1)
        self.assertEqual(attrs, lease_attrs("192.168.250.11", "0a:0b:0c:0d:0e:0f"))
        self.assertIsNone(self.backend.index6)

    def test_no_ipv6_address_routes_ipv4_only(self):
        """EnableIPv6 but no v6 address chosen (an IPv4 --iface without --public-ipv6)."""
        backend = VxlanBackend(None, IFACE, kernel=self.kernel, to_thread=sync)
        log = logged(backend)
        attrs = self.successResultOf(backend.prepare(config()))
        self.assertEqual(attrs, lease_attrs("192.168.250.11", "0a:0b:0c:0d:0e:0f"))
        self.assertEqual(len([e for e in self.kernel.events if e[0] == "ensure_vxlan"]), 1)
        self.assertEqual(len(warnings(log)), 1, log)
        self.assertIn("no IPv6 address", warnings(log)[0])
        self.successResultOf(backend.start(config(), dual(1)))
        backend.handle_events(added(dual(2)))
        self.assertEqual(self.installed(), [v4peer(2)])           # the v6 part: no device
        self.assertEqual((len(warnings(log)), errors(log)), (1, []))   # said once

    def test_dual_stack_peer_both_families(self):
        self.start()
        del self.kernel.events[:]
        self.backend.handle_events(added(dual(2)))
        self.assertEqual(self.installed(), [v4peer(2), v6peer(2)])
        self.assertEqual(self.kernel.index6, 13)
        self.assertEqual(sorted(self.backend.installed, key=lambda s: (s.version, s)),
                         [IPv4Network("10.5.2.0/24"), IPv6Network("fc00:5:0:2::/64")])
        self.backend.handle_events([LeaseEvent(REMOVED, dual(2))])
        self.assertEqual([e for e in self.kernel.events if e[0] == "remove"],
                         [("remove", v4peer(2)), ("remove", v6peer(2))])
        self.assertEqual(self.backend.installed, {})
        self.assertEqual((warnings(self.log), errors(self.log)), ([], []))

    def test_removed_event_without_v6_part_removes_both(self):
        """A removal names the lease; its IPv6 entry goes too, whatever the event holds."""
        self.start()
        self.backend.handle_events(added(dual(2)))
        self.backend.handle_events([LeaseEvent(REMOVED, dual(2, v6=False))])
        self.assertEqual(self.backend.installed, {})

    def test_v6_part_changed(self):
        self.start()
        self.backend.handle_events(added(dual(2)))
        del self.kernel.events[:]
        self.backend.handle_events(added(dual(2, subnet6="fc00:5:0:99::/64")))
        moved = VxlanPeer(IPv6Network("fc00:5:0:99::/64"), v6peer(2).public_ip, v6peer(2).mac)
        self.assertEqual(self.kernel.events, [("remove", v6peer(2)), ("install", moved)])
        # and dropped: a later IPv4-only lease for the subnet
        self.backend.handle_events(added(dual(2, v6=False)))
        self.assertEqual(list(self.backend.installed), [IPv4Network("10.5.2.0/24")])

    # -- mixed stacks (flanneld v0.20 panics or skips the whole event) -----------

    def test_ipv4_only_host_routes_v4_part_of_dual_leases(self):
        self.start(v6=False)
        del self.kernel.events[:]
        self.backend.handle_events(added(dual(2), dual(3, data6=None)))
        self.assertEqual(self.installed(), [v4peer(2), v4peer(3)])
        self.assertEqual((warnings(self.log), errors(self.log)), ([], []))

    def test_dual_stack_host_routes_ipv4_only_lease(self):
        self.start()
        del self.kernel.events[:]
        self.backend.handle_events(added(dual(2, v6=False)))
        self.assertEqual(self.installed(), [v4peer(2)])
        self.assertEqual((warnings(self.log), errors(self.log)), ([], []))

    def test_missing_or_bad_backend_v6_data(self):
        """flanneld skips such an event whole; we route its IPv4 part, one warning each."""
        self.start()
        del self.kernel.events[:]
        bad = [dual(2, data6=None), dual(3, data6={"VtepMAC": "nope"}),
               dual(4, data6="x"), dual(5, public_ipv6=False),
               dual(6, subnet6="fc00:6:0:6::/64")]            # outside IPv6Network
        for _ in range(3):
            self.backend.handle_events(added(*bad))
        self.successResultOf(self.backend.resync())
        self.assertEqual(self.installed(), [v4peer(i) for i in (2, 3, 4, 5, 6)])
        warned = warnings(self.log)
        self.assertEqual(len(warned), 5, warned)
        for i, why in zip((2, 3, 4, 5, 6), ("BackendV6Data", "BackendV6Data", "BackendV6Data",
                                            "no PublicIPv6", "not inside the IPv6Network")):
            line = [w for w in warned if "10.5.%d.0/24" % i in w]
            self.assertEqual(len(line), 1, warned)
            self.assertIn(why, line[0])
            self.assertIn("its IPv4 part is routed", line[0])
        self.assertEqual(errors(self.log), [])
        # fixed later: the IPv6 part is installed
        self.backend.handle_events(added(dual(2)))
        self.assertEqual(self.installed()[-1], v6peer(2))

    def test_own_v6_subnet_never_routed(self):
        self.start()
        del self.kernel.events[:]
        self.backend.handle_events(added(dual(2, subnet6="fc00:5:0:1::/64")))
        self.assertEqual(self.installed(), [v4peer(2)])

    def test_reconcile_both_families(self):
        self.start()
        del self.kernel.events[:]
        removed = self.successResultOf(self.backend.reconcile(
            [dual(1), dual(2), dual(3, v6=False), dual(4, data6=None)]))
        self.assertEqual(removed, ["route 10.5.99.0/24 via None"] * 2)
        self.assertEqual(self.kernel.events, [
            ("remove_stale", IPv4Network("10.5.0.0/16"),
             [IPv4Network("10.5.%d.0/24" % i) for i in (2, 3, 4)], 12, 7,
             sorted(v4peer(i).mac for i in (2, 3, 4))),
            ("remove_stale", NET6, [v6peer(2).subnet], 13, 7, [v6peer(2).mac])])


class HostGwDualStackTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.kernel = FakeKernel()
        self.backend = HostGwBackend(self.clock, IFACE6, kernel=self.kernel, to_thread=sync)
        self.log = logged(self.backend)
        self.addCleanup(self.backend.stop)

    def start(self, v6=True):
        cfg = config("host-gw", v6=v6)
        attrs = self.successResultOf(self.backend.prepare(cfg))
        self.successResultOf(self.backend.start(cfg, dual(1, "host-gw", v6=v6)))
        return attrs

    def test_lease_attrs(self):
        self.assertEqual(self.start().public_ipv6, IPv6Address("fd00:250::11"))

    def test_ipv4_only_config_publishes_no_v6(self):
        self.assertIsNone(self.start(v6=False).public_ipv6)

    def test_no_ipv6_address_publishes_no_v6(self):
        backend = HostGwBackend(self.clock, IFACE, kernel=self.kernel, to_thread=sync)
        log = logged(backend)
        attrs = self.successResultOf(backend.prepare(config("host-gw")))
        self.assertIsNone(attrs.public_ipv6)
        self.assertEqual(len(warnings(log)), 1, log)

    def test_routes_both_families_and_recovers_v6(self):
        self.start()
        self.backend.handle_events(added(dual(2, "host-gw"), dual(3, "host-gw", v6=False),
                                         dual(4, "host-gw", public_ipv6=False)))
        self.assertEqual(sorted(self.kernel.routes_now, key=lambda s: (s.version, s)), [
            IPv4Network("10.5.2.0/24"), IPv4Network("10.5.3.0/24"), IPv4Network("10.5.4.0/24"),
            IPv6Network("fc00:5:0:2::/64")])
        self.assertEqual(self.kernel.routes_now[IPv6Network("fc00:5:0:2::/64")].gateway,
                         IPv6Address("fd00:250::12"))
        warned = warnings(self.log)
        self.assertEqual(len(warned), 1, warned)
        self.assertIn("no PublicIPv6", warned[0])
        del self.kernel.routes_now[IPv6Network("fc00:5:0:2::/64")]       # someone deleted it
        self.clock.advance(10)
        self.assertIn(IPv6Network("fc00:5:0:2::/64"), self.kernel.routes_now)
        self.assertEqual(self.backend.recovered, 1)
        self.backend.handle_events([LeaseEvent(REMOVED, dual(2, "host-gw"))])
        self.assertNotIn(IPv6Network("fc00:5:0:2::/64"), self.kernel.routes_now)

    def test_ipv4_only_host_routes_v4_part(self):
        self.start(v6=False)
        self.backend.handle_events(added(dual(2, "host-gw")))
        self.assertEqual(list(self.kernel.routes_now), [IPv4Network("10.5.2.0/24")])
        self.assertEqual((warnings(self.log), errors(self.log)), ([], []))

    def test_reconcile_both_families(self):
        self.start()
        self.successResultOf(self.backend.reconcile([dual(2, "host-gw"),
                                                     dual(3, "host-gw", public_ipv6=False)]))
        stale = [e for e in self.kernel.events if e[0] == "remove_stale"]
        self.assertEqual(stale, [
            ("remove_stale", IPv4Network("10.5.0.0/16"),
             [IPv4Network("10.5.2.0/24"), IPv4Network("10.5.3.0/24")], None, 7, []),
            ("remove_stale", NET6, [IPv6Network("fc00:5:0:2::/64")], None, 7, [])])
