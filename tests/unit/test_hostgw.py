"""
The host-gw backend's logic against a recording fake kernel on a task.Clock: the NAT
check, lease attrs, routes per remote lease, other types ignored, unreachable peers
logged by name, and the 10 s route check ("Route recovered"). The real-kernel parts are
in tests.lab.test_vxlan (KernelHostGwTests) and tests.lab.test_kernel_overlay.
"""
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from pyroute2.netlink.exceptions import NetlinkError
from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.backend.hostgw import NAT_MESSAGE, HostGwBackend, HostGwError
from flannel_tw.backend.registry import make_backend
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.interfaces import IBackend
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.backend.hostgw import HostGwRoute

from flannel_tw.testing.fakes import FakeKernel
from flannel_tw.testing.kernel_fixtures import IFACE, config, lease, logged, sync


def route(subnet, gw):
    return HostGwRoute(IPv4Network(subnet), IPv4Address(gw))


class HostGwTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.kernel = FakeKernel()
        self.backend = HostGwBackend(self.clock, IFACE, kernel=self.kernel, to_thread=sync)
        self.log = logged(self.backend)
        self.addCleanup(self.backend.stop)

    def start(self):
        cfg = config('{"Type":"host-gw"}')
        attrs = self.successResultOf(self.backend.prepare(cfg))
        self.successResultOf(self.backend.start(cfg, lease("10.5.1.0/24", "192.168.250.11",
                                                           kind="host-gw")))
        return attrs

    def test_interface_and_registry(self):
        verifyObject(IBackend, self.backend)
        self.assertIsInstance(make_backend("host-gw", self.clock, IFACE), HostGwBackend)

    def test_lease_attrs_and_mtu(self):
        attrs = self.start()
        self.assertEqual(attrs.to_json(), '{"PublicIP":"192.168.250.11","BackendType":"host-gw"}')
        self.assertEqual(LeaseAttrs.from_json(attrs.to_json()), attrs)
        self.assertEqual(self.backend.mtu, 1500)

    def test_nat_is_refused(self):
        natted = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                          public_ip=IPv4Address("203.0.113.9"), mtu=1500)
        backend = HostGwBackend(self.clock, natted, kernel=self.kernel, to_thread=sync)
        f = self.failureResultOf(backend.prepare(config('{"Type":"host-gw"}')), HostGwError)
        self.assertIn(NAT_MESSAGE, str(f.value))
        self.assertIn("203.0.113.9", str(f.value))

    def test_routes_follow_leases(self):
        self.start()
        a = lease("10.5.2.0/24", "192.168.250.12", kind="host-gw")
        self.backend.handle_events([LeaseEvent(ADDED, a)])
        self.backend.handle_events([LeaseEvent(ADDED, lease("10.5.2.0/24", "192.168.250.13",
                                                            kind="host-gw"))])
        self.backend.handle_events([LeaseEvent(REMOVED, a)])
        self.successResultOf(self.backend.settle())
        self.assertEqual(self.kernel.events, [
            ("install", route("10.5.2.0/24", "192.168.250.12")),
            ("remove", route("10.5.2.0/24", "192.168.250.12")),
            ("install", route("10.5.2.0/24", "192.168.250.13")),
            ("remove", route("10.5.2.0/24", "192.168.250.13"))])

    def test_other_types_ignored_once_each(self):
        self.start()
        events = [LeaseEvent(ADDED, lease("10.5.3.0/24", "192.168.250.13", kind="")),
                  LeaseEvent(ADDED, lease("10.5.4.0/24", "192.168.250.14"))]     # vxlan
        for _ in range(3):
            self.backend.handle_events(events)
        self.assertEqual(self.kernel.events, [])
        lines = [m for _, m in self.log if m.startswith("Ignoring non-host-gw subnet")]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("10.5.4.0/24", lines[1])
        self.assertIn("'vxlan'", lines[1])

    def test_unreachable_peer_logged_by_name_and_retried_quietly(self):
        self.start()
        self.kernel.fail["install"] = NetlinkError(101, "Network is unreachable")
        far = lease("10.5.7.0/24", "10.77.0.1", kind="host-gw")
        self.backend.handle_events([LeaseEvent(ADDED, far)])
        for _ in range(3):
            self.clock.advance(10)
        errors = [m for level, m in self.log if level == "error"]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("10.5.7.0/24", errors[0])
        self.assertIn("PublicIP 10.77.0.1", errors[0])
        self.assertIn("Network is unreachable", errors[0])
        self.assertEqual(len(self.kernel.events), 4)       # the first try and 3 retries
        del self.kernel.fail["install"]
        self.clock.advance(10)
        self.assertIn(far.subnet, self.backend.installed)

    def test_route_check_every_10s(self):
        self.start()
        self.backend.handle_events([LeaseEvent(ADDED, lease("10.5.2.0/24", "192.168.250.12",
                                                            kind="host-gw"))])
        del self.kernel.events[:]
        self.clock.advance(10)
        self.assertEqual(self.kernel.events, [])          # present: nothing to do
        self.kernel.routes_now.clear()                     # someone deleted it
        self.clock.advance(9.9)
        self.assertEqual(self.kernel.events, [])
        self.clock.advance(0.1)
        self.assertEqual(self.kernel.events, [("install", route("10.5.2.0/24",
                                                                "192.168.250.12"))])
        self.assertEqual(self.backend.recovered, 1)
        self.assertTrue(any(m.startswith("Route recovered: 10.5.2.0/24 via 192.168.250.12 "
                                          "dev eth0") for _, m in self.log))

    def test_batches_and_route_check_recovers_in_one_call(self):
        self.start()
        calls = []
        self.backend._to_thread = lambda f, *a: calls.append(f) or sync(f, *a)
        leases = [lease("10.5.%d.0/24" % i, "192.168.250.%d" % i, kind="host-gw")
                  for i in range(2, 102)]
        self.backend.handle_events([LeaseEvent(ADDED, l) for l in leases])
        self.assertEqual((len(calls), self.kernel.batches), (1, [100]))
        for subnet in [l.subnet for l in leases][::3]:
            del self.kernel.routes_now[subnet]             # someone deleted 34 routes
        del self.kernel.events[:]
        self.clock.advance(10)
        self.assertEqual(len(calls), 2)                     # one dump and one batch
        self.assertEqual(self.kernel.batches, [100, 34])
        self.assertEqual([e[1].subnet for e in self.kernel.events],
                         [l.subnet for l in leases][::3])
        self.assertEqual(self.backend.recovered, 34)
        self.assertEqual(len(self.kernel.routes_now), 100)

    def test_stop_ends_the_check(self):
        self.start()
        self.backend.handle_events([LeaseEvent(ADDED, lease("10.5.2.0/24", "192.168.250.12",
                                                            kind="host-gw"))])
        self.successResultOf(self.backend.stop())
        self.kernel.routes_now.clear()
        del self.kernel.events[:]
        self.clock.advance(30)
        self.assertEqual(self.kernel.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reconcile(self):
        self.start()
        d = self.backend.reconcile([lease("10.5.2.0/24", "192.168.250.12", kind="host-gw"),
                                    lease("10.5.3.0/24", "192.168.250.13", kind="vxlan")])
        self.successResultOf(d)
        self.assertEqual(self.kernel.events[-1], (
            "remove_stale", IPv4Network("10.5.0.0/16"), [IPv4Network("10.5.2.0/24")], None, 7,
            []))

    def test_reconcile_keeps_entries_of_routable_leases_only(self):
        """A hostile lease (alias key, outside Network, loopback PublicIP) in the first
        list does not keep a stale kernel entry alive: it is never routed either."""
        self.start()
        good = lease("10.5.2.0/24", "192.168.250.12", kind="host-gw")
        alias = replace(lease("10.5.4.0/24", "192.168.250.14", kind="host-gw"),
                        key="x10.5.4.0-24")
        d = self.backend.reconcile([good, alias,
                                    lease("10.6.0.0/24", "192.168.250.15", kind="host-gw"),
                                    lease("10.5.5.0/24", "127.0.0.1", kind="host-gw")])
        self.successResultOf(d)
        self.assertEqual(self.kernel.events[-1][2], [IPv4Network("10.5.2.0/24")])

    def test_moved_lease(self):
        self.start()
        a = lease("10.5.2.0/24", "192.168.250.12", kind="host-gw")
        self.backend.handle_events([LeaseEvent(ADDED, a)])
        self.successResultOf(self.backend.reconfigure(config('{"Type":"host-gw"}'), a))
        self.successResultOf(self.backend.settle())
        self.assertEqual(self.backend.own_subnet, a.subnet)
        self.assertEqual(self.backend.installed, {})       # our own subnet now: no route


class FirstListTests(unittest.TestCase):
    """The daemon hands the watcher's first lease list to the backend's reconcile."""

    def test_first_list_only(self):
        from twisted.internet import defer
        from flannel_tw.backend.reconcile import FirstList
        from flannel_tw.testing.fakes import FakeSubnetManager
        manager = FakeSubnetManager()
        seen = []
        listing = FirstList(manager, seen.append)
        a = lease("10.5.2.0/24", "192.168.250.12", kind="host-gw")
        d1 = listing.list_leases()
        manager.next("list_leases")[2].callback(([a], 7))
        self.assertEqual(self.successResultOf(d1), ([a], 7))
        d2 = listing.list_leases()
        manager.next("list_leases")[2].callback(([], 9))
        self.assertEqual(self.successResultOf(d2), ([], 9))
        self.assertEqual(seen, [[a]])
        # the watcher's other call goes to the manager as it is
        d3 = listing.watch_leases(8)
        self.assertIsInstance(d3, defer.Deferred)
        self.assertEqual(manager.next("watch_leases")[1], (8,))
        self.assertFalse(hasattr(listing, "prefix"))     # nothing else passes through
