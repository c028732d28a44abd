"""
Backend capabilities are declared (flannel_tw.interfaces), not probed: each real backend
and each backend fake is checked with verifyObject against every interface it declares,
and the daemon, driven on a task.Clock with a fake subnet manager, uses an optional part
(reconcile, reconfigure, routes, counters) only when the backend declares it.
"""
import os
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw import daemon as daemon_mod
from flannel_tw.backend.registry import FACTORIES
from flannel_tw.interfaces import (IBackend, ICountingBackend, IReconcilingBackend,
                                   IReconfiguringBackend, IRoutesBackend, ISubnetManager)
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.model.config import parse_config
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.testing.backend_fakes import CapableBackend, UndeclaredBackend
from flannel_tw.testing.fakes import FakeSubnetManager, RecordingBackend

IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500)
OPTIONAL = (IReconcilingBackend, IReconfiguringBackend, IRoutesBackend, ICountingBackend)
CONFIG = parse_config('{"Network": "10.5.0.0/16"}')
ATTRS = LeaseAttrs(public_ip=IFACE.public_ip)


def declared(obj):
    return {i for i in (IBackend,) + OPTIONAL if i.providedBy(obj)}


class DeclarationTests(unittest.TestCase):
    def test_real_backends(self):
        expected = {
            "alloc": {IBackend},
            "udp": {IBackend, IReconfiguringBackend, IRoutesBackend, ICountingBackend},
            "vxlan": {IBackend, IReconcilingBackend},
            "host-gw": {IBackend, IReconcilingBackend, IReconfiguringBackend},
            "wireguard": {IBackend, IReconcilingBackend, IReconfiguringBackend,
                          ICountingBackend},
        }
        for name, factory in FACTORIES.items():
            backend = factory(task.Clock(), IFACE)
            self.assertEqual(declared(backend), expected[name], name)
            for interface in declared(backend):
                verifyObject(interface, backend)

    def test_fakes(self):
        for backend in (RecordingBackend(IFACE.public_ip), CapableBackend(IFACE.public_ip),
                        UndeclaredBackend(IFACE.public_ip)):
            for interface in declared(backend):
                verifyObject(interface, backend)
        self.assertEqual(declared(CapableBackend(IFACE.public_ip)), {IBackend} | set(OPTIONAL))
        self.assertEqual(declared(UndeclaredBackend(IFACE.public_ip)), {IBackend})
        verifyObject(ISubnetManager, FakeSubnetManager())


class DaemonUsesDeclaredPartsTests(unittest.TestCase):
    def run_daemon(self, backend):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        path = os.path.join(self.mktemp(), "subnet.env")
        daemon = daemon_mod.FlannelDaemon(
            self.clock, self.manager, IFACE, daemon_mod.DaemonSettings(subnet_file=path),
            backend_factory=lambda *_a: backend, notify=lambda _m: None,
            exit=lambda _c: None)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        self.manager.next("get_network_config")[2].callback(CONFIG)
        self.lease = Lease(IPv4Network("10.5.1.0/24"), ATTRS, ttl=86400)
        self.manager.next("acquire_lease")[2].callback(self.lease)
        self.assertEqual(daemon.phase, daemon_mod.RUNNING)
        self.manager.next("list_leases")[2].callback(([self.lease], 10))
        return daemon

    def take_new_subnet(self, daemon):
        new = Lease(IPv4Network("10.5.9.0/24"), ATTRS, ttl=86400)
        daemon._new_lease(new, self.lease)

    def test_declared_parts_are_used(self):
        backend = CapableBackend(IFACE.public_ip)
        daemon = self.run_daemon(backend)
        self.assertIn(("reconcile", [self.lease]), backend.events)
        self.take_new_subnet(daemon)
        self.assertEqual(backend.events[-1][0], "reconfigure")
        backend.routes[IPv4Network("10.5.2.0/24")] = IPv4Address("192.0.2.2")
        backend.counters["packets_out"] = 3
        status = daemon.status()
        self.assertEqual((status.routes, dict(status.backend_counters)),
                         (1, {"packets_out": 3}))

    def test_undeclared_parts_are_not_used(self):
        backend = UndeclaredBackend(IFACE.public_ip)
        daemon = self.run_daemon(backend)
        self.take_new_subnet(daemon)
        self.assertEqual([e for e in backend.events if e[0] in ("reconcile", "reconfigure")],
                         [])
        status = daemon.status()
        self.assertEqual((status.routes, status.backend_counters), (None, None))


class AllocBackendTests(unittest.TestCase):
    def test_keeps_nothing_of_the_events_it_is_given(self):
        """No record for tests in production code: the fakes record (RecordingBackend)."""
        from flannel_tw.backend.alloc import AllocBackend
        from flannel_tw.model.events import ADDED, LeaseEvent
        backend = AllocBackend(task.Clock(), IFACE)
        before = repr(vars(backend))
        lease = Lease(IPv4Network("10.5.2.0/24"), LeaseAttrs(IPv4Address("192.0.2.2")))
        for _ in range(3):
            backend.handle_events([LeaseEvent(ADDED, lease)])
        self.assertEqual(repr(vars(backend)), before)
