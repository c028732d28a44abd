"""
The daemon's dual-stack lease wiring (issue 15): our lease attrs get the PublicIPv6 of
the interface choice when the config enables IPv6; the previous subnets (v4 and v6) come
from subnet.env (a hostile file: one warning, none used); subnet.env gets
FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET; a lease whose v6 part alone changes rewrites
it. Fakes: FakeSubnetManager, RecordingBackend, task.Clock.
"""
import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet import task
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw.daemon import DaemonSettings, FlannelDaemon
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.model.config import NetworkConfig
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.testing.fakes import FakeSubnetManager, RecordingBackend
from flannel_tw.testing.harness import capture_logs, logged

IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500,
                 addr6=IPv6Address("fd00:250::b"), public_ipv6=IPv6Address("fd00:250::b"))
DUAL = NetworkConfig(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                     subnet_min=IPv4Address("10.5.1.0"), subnet_max=IPv4Address("10.5.255.0"),
                     backend_type="udp", enable_ipv6=True,
                     ipv6_network=IPv6Network("fd00:10:5::/48"), ipv6_subnet_len=64,
                     ipv6_subnet_min=IPv6Address("fd00:10:5:1::"),
                     ipv6_subnet_max=IPv6Address("fd00:10:5:ffff::"))
V4 = NetworkConfig(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                   subnet_min=IPv4Address("10.5.1.0"), subnet_max=IPv4Address("10.5.255.0"),
                   backend_type="udp")
NET = IPv4Network("10.5.7.0/24")
NET6 = IPv6Network("fd00:10:5:7::/64")


class Base(unittest.TestCase):

    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.path = os.path.abspath(self.mktemp())
        self.logs = capture_logs(self)

    def start(self, subnet_env=None, iface=IFACE):
        if subnet_env is not None:
            with open(self.path, "w") as f:
                f.write(subnet_env)
        d = FlannelDaemon(self.clock, self.manager, iface, DaemonSettings(subnet_file=self.path),
                          backend_factory=lambda name, reactor, iface: RecordingBackend(
                              iface.public_ip),
                          notify=lambda m: None, exit=lambda code: None, rules_factory=None)
        d.startService()
        self.addCleanup(d.stopService)
        return d

    def acquire_call(self, config):
        self.manager.next("get_network_config")[2].callback(config)
        name, args, d = self.manager.next("acquire_lease")
        return args, d

    def read_env(self):
        with open(self.path) as f:
            return f.read()



class DualStackWiringTests(Base):

    def test_dual_stack_attrs_previous_and_subnet_env(self):
        daemon = self.start("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\n"
                            "FLANNEL_IPV6_NETWORK=fd00:10:5::/48\n"
                            "FLANNEL_IPV6_SUBNET=fd00:10:5:7::1/64\n")
        args, d = self.acquire_call(DUAL)
        config, attrs, previous, previous6 = args
        self.assertEqual(attrs, LeaseAttrs(IPv4Address("192.0.2.1"),
                                           public_ipv6=IPv6Address("fd00:250::b")))
        self.assertEqual((previous, previous6), (NET, NET6))
        d.callback(Lease(NET, attrs, ttl=86400, modified_index=5, ipv6_subnet=NET6))
        self.assertEqual(self.read_env(),
                         "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\n"
                         "FLANNEL_IPV6_NETWORK=fd00:10:5::/48\n"
                         "FLANNEL_IPV6_SUBNET=fd00:10:5:7::1/64\n"
                         "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")
        self.assertTrue(daemon.ready)
        # the keeper re-acquired with a new v6 part only: subnet.env rewritten
        new6 = IPv6Network("fd00:10:5:9::/64")
        daemon._new_lease(Lease(NET, attrs, ttl=86400, ipv6_subnet=new6), daemon.lease)
        self.assertIn("FLANNEL_IPV6_SUBNET=fd00:10:5:9::1/64\n", self.read_env())

    def test_ipv4_config_attrs_and_env_unchanged(self):
        self.start("FLANNEL_SUBNET=10.5.7.1/24\nFLANNEL_IPV6_SUBNET=fd00:10:5:7::1/64\n")
        args, d = self.acquire_call(V4)
        self.assertEqual(args[1:], (LeaseAttrs(IPv4Address("192.0.2.1")), NET,
                                    NET6))    # the manager decides: v6 must be absent
        d.callback(Lease(NET, args[1], ttl=86400, modified_index=5))
        self.assertEqual(self.read_env(), "FLANNEL_NETWORK=10.5.0.0/16\n"
                                          "FLANNEL_SUBNET=10.5.7.1/24\n"
                                          "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")

    def test_hostile_subnet_env_is_one_warning_and_absent(self):
        self.start("FLANNEL_SUBNET=10.5.7.1/24\nFLANNEL_IPV6_SUBNET=10.9.9.9/24\n")
        args, d = self.acquire_call(DUAL)
        self.assertEqual(args[2:], (None,))
        warnings = logged(self.logs, "Ignoring the previous subnets in", LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("FLANNEL_IPV6_SUBNET", warnings[0])

    def test_no_public_ipv6_leaves_it_unset(self):
        """--iface <IPv4> without --public-ipv6: no PublicIPv6 (V6-HOST warns), no crash."""
        self.start(iface=replace(IFACE, addr6=None, public_ipv6=None))
        args, d = self.acquire_call(DUAL)
        self.assertIsNone(args[1].public_ipv6)
        d.callback(Lease(NET, args[1], ttl=86400, modified_index=5, ipv6_subnet=NET6))
        self.assertIn("FLANNEL_IPV6_SUBNET=fd00:10:5:7::1/64\n", self.read_env())


class DualStackWatcherWiringTests(Base):
    """The watcher gets the config's IPv6 network: a peer's dual-stack lease reaches the
    backend with its v6 part (IPv6 on) or as its v4 part alone (IPv4 only)."""

    def run_with_peer(self, config):
        backends = []

        def factory(name, reactor, iface):
            backends.append(RecordingBackend(iface.public_ip))
            return backends[-1]
        d = FlannelDaemon(self.clock, self.manager, IFACE, DaemonSettings(subnet_file=self.path),
                          backend_factory=factory, notify=lambda m: None,
                          exit=lambda code: None, rules_factory=None)
        d.startService()
        self.addCleanup(d.stopService)
        args, acquired = self.acquire_call(config)
        own6 = NET6 if config.enable_ipv6 else None
        acquired.callback(Lease(NET, args[1], ttl=86400, modified_index=5, ipv6_subnet=own6))
        peer = Lease(IPv4Network("10.5.8.0/24"),
                     LeaseAttrs(IPv4Address("192.0.2.8"), public_ipv6=IPv6Address("fd00:250::8"),
                                backend_v6_data={"x": 1}),
                     ttl=86400, key="10.5.8.0-24&fd00:10:5:8::-64",
                     ipv6_subnet=IPv6Network("fd00:10:5:8::/64"))
        self.manager.next("list_leases")[2].callback(([peer], 10))
        return [e.lease for kind, *rest in backends[0].events if kind == "events"
                for e in rest[0]]

    def test_ipv6_on_events_carry_the_v6_part(self):
        leases = self.run_with_peer(DUAL)
        self.assertEqual([(l.ipv6_subnet, l.attrs.public_ipv6) for l in leases],
                         [(IPv6Network("fd00:10:5:8::/64"), IPv6Address("fd00:250::8"))])

    def test_ipv4_only_events_carry_the_v4_part(self):
        leases = self.run_with_peer(V4)
        self.assertEqual([(l.subnet, l.ipv6_subnet, l.attrs.public_ipv6) for l in leases],
                         [(IPv4Network("10.5.8.0/24"), None, None)])
