"""The daemon's second, dual-stack interface choice (flanneld v0.20): made once the
network config says EnableIPv6, before the backend is built; a failure is fatal (exit 1,
as flanneld). Fakes: FakeSubnetManager, RecordingBackend, task.Clock."""

import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet import defer, task
from twisted.trial import unittest

from flannel_tw.daemon import FAILED, DaemonSettings, FlannelDaemon
from flannel_tw.kernel.iface import ExtIface, IfaceError
from flannel_tw.model.config import NetworkConfig
from flannel_tw.testing.fakes import FakeSubnetManager, RecordingBackend
from flannel_tw.testing.harness import capture_logs, logged

V4 = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
              public_ip=IPv4Address("192.0.2.1"), mtu=1500)
DUAL = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                public_ip=IPv4Address("192.0.2.1"), mtu=1500,
                addr6=IPv6Address("fd00:250::b"), public_ipv6=IPv6Address("fd00:250::b"))


def config(ipv6):
    extra = {}
    if ipv6:
        extra = dict(enable_ipv6=True, ipv6_network=IPv6Network("fd00:10:5::/48"),
                     ipv6_subnet_len=64, ipv6_subnet_min=IPv6Address("fd00:10:5:1::"),
                     ipv6_subnet_max=IPv6Address("fd00:10:5:ffff::"))
    return NetworkConfig(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                         subnet_min=IPv4Address("10.5.1.0"),
                         subnet_max=IPv4Address("10.5.255.0"), backend_type="udp", **extra)


class DualStackIfaceTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.built = []         # the ext_iface each backend was built with
        self.asked = []
        self.exits = []
        self.logs = capture_logs(self)

    def daemon(self, iface_v6):
        def factory(name, reactor, ext_iface):
            self.built.append(ext_iface)
            return RecordingBackend(ext_iface.public_ip)

        def lookup():
            self.asked.append(True)
            return iface_v6()
        d = FlannelDaemon(self.clock, self.manager, V4,
                          DaemonSettings(subnet_file=os.path.abspath(self.mktemp())),
                          backend_factory=factory, notify=lambda m: None,
                          exit=self.exits.append, iface_v6=lookup)
        d.startService()
        self.addCleanup(d.stopService)
        return d

    def test_ipv6_config_chooses_again_before_the_backend(self):
        d = self.daemon(lambda: DUAL)
        self.assertEqual(self.asked, [])           # nothing before the config
        self.manager.next("get_network_config")[2].callback(config(ipv6=True))
        self.assertEqual(self.asked, [True])
        self.assertEqual(self.built, [DUAL])
        self.assertEqual(d.ext_iface, DUAL)
        self.assertTrue(logged(self.logs, "IPv6 enabled: using interface eth0 with "
                                          "addresses 192.0.2.1 and fd00:250::b"))
        self.assertEqual(self.exits, [])

    def test_ipv4_config_keeps_the_first_choice(self):
        d = self.daemon(lambda: DUAL)
        self.manager.next("get_network_config")[2].callback(config(ipv6=False))
        self.assertEqual((self.asked, self.built, d.ext_iface), ([], [V4], V4))

    def test_no_interface_for_dual_stack_is_fatal(self):
        def fails():
            raise IfaceError("v6 default route interface eth1 must be the same with v4 "
                             "default route interface eth0")
        d = self.daemon(fails)
        self.manager.next("get_network_config")[2].callback(config(ipv6=True))
        self.assertEqual(self.exits, [1])
        self.assertEqual(self.built, [])
        self.assertEqual(self.manager.pending, [])     # no config retry, no lease
        self.assertTrue(logged(self.logs, "Failed to find interface to use (IPv6 enabled): "
                                          "v6 default route interface eth1 must be the same"))
        self.assertEqual(d.phase, FAILED)

    def test_no_public_ipv6_is_warned(self):
        self.daemon(lambda: V4)      # --iface <IPv4> without --public-ipv6
        self.manager.next("get_network_config")[2].callback(config(ipv6=True))
        self.assertEqual(self.built, [V4])
        self.assertTrue(logged(self.logs, "no public IPv6 address: --iface 192.0.2.1 is an "
                                          "IPv4 address"))


class UnusablePublicIPv6Tests(unittest.TestCase):
    """A public IPv6 that peers would skip (leasecheck) is warned about, not fatal."""

    setUp = DualStackIfaceTests.setUp
    daemon = DualStackIfaceTests.daemon

    def test_link_local_only_is_warned(self):
        from dataclasses import replace
        ll = replace(DUAL, addr6=IPv6Address("fe80::5"), public_ipv6=IPv6Address("fe80::5"))
        self.daemon(lambda: ll)
        self.manager.next("get_network_config")[2].callback(config(ipv6=True))
        self.assertEqual(self.built, [ll])          # IPv4 still works: not fatal
        self.assertTrue(logged(self.logs, "The public IPv6 address fe80::5 is link-local: "
                                          "other hosts will not route the IPv6 part"))

    def test_inside_the_overlay_is_warned(self):
        from dataclasses import replace
        inside = replace(DUAL, public_ipv6=IPv6Address("fd00:10:5:7::1"))
        self.daemon(lambda: inside)
        self.manager.next("get_network_config")[2].callback(config(ipv6=True))
        self.assertTrue(logged(self.logs, "is inside the overlay IPv6 network fd00:10:5::/48"))

    def test_usable_is_not_warned(self):
        self.daemon(lambda: DUAL)
        self.manager.next("get_network_config")[2].callback(config(ipv6=True))
        self.assertEqual(logged(self.logs, "other hosts will not route"), [])


class WiringTests(unittest.TestCase):
    """flannel_tw.wiring gives the daemon the dual-stack choice with --public-ipv6."""

    def build(self, *argv):
        from twisted.internet import reactor
        from flannel_tw import wiring
        from flannel_tw.tap import Options
        opts = Options(environ={})
        opts.parseOptions(["--etcd-endpoints=http://127.0.0.1:9", "--iface=127.0.0.1",
                           "--iptables-forward-rules=false"] + list(argv))
        d = wiring.build_daemon(opts, reactor)
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(d._keeper_clock.close)
        return d

    def test_iface_v6_uses_the_options(self):
        d = self.build()
        got = d._iface_v6()         # --iface <IPv4>, no --public-ipv6: no v6 address
        self.assertEqual((str(got.addr), got.addr6, got.public_ipv6), ("127.0.0.1", None, None))
        d = self.build("--public-ipv6=2001:db8::77")     # not on lo: flanneld fails
        e = self.assertRaises(IfaceError, d._iface_v6)
        self.assertIn("2001:db8::77", str(e))
        self.assertIn("No interface with given IPv6 found", str(e))


class RulesTests(unittest.TestCase):
    """The daemon gives the iptables rules the v6 network and subnet when dual-stack."""

    def run_to_rules(self, ipv6, lease6):
        from flannel_tw.model.lease import Lease, LeaseAttrs
        clock, manager, made = task.Clock(), FakeSubnetManager(), []

        class Rules:
            def __init__(self, *args, **kw):
                made.append((args[1:], kw))

            def start(self):
                return defer.Deferred()     # stop here: subnet.env is not the point

            def update(self, *args):
                made.append(("update", args))

            def stop(self):
                pass
        d = FlannelDaemon(clock, manager, DUAL if ipv6 else V4,
                          DaemonSettings(subnet_file=os.path.abspath(self.mktemp()),
                                         ip_masq=True),
                          backend_factory=lambda n, r, i: RecordingBackend(i.public_ip),
                          notify=lambda m: None, exit=lambda c: None, rules_factory=Rules)
        d.startService()
        self.addCleanup(d.stopService)
        manager.next("get_network_config")[2].callback(config(ipv6))
        lease = Lease(subnet=IPv4Network("10.5.34.0/24"),
                      attrs=LeaseAttrs(public_ip=IPv4Address("192.0.2.1")), ttl=86400,
                      ipv6_subnet=IPv6Network(lease6) if lease6 else None)
        manager.next("acquire_lease")[2].callback(lease)
        return d, made

    def test_dual_stack_lease_gives_v6_rules(self):
        d, made = self.run_to_rules(True, "fd00:10:5:22::/64")
        self.assertEqual(made, [((IPv4Network("10.5.0.0/16"), IPv4Network("10.5.34.0/24"), True),
                                 dict(forward=True, network6=IPv6Network("fd00:10:5::/48"),
                                      subnet6=IPv6Network("fd00:10:5:22::/64")))])

    def test_ipv4_only_gives_v4_rules(self):
        d, made = self.run_to_rules(False, None)
        self.assertEqual(made, [((IPv4Network("10.5.0.0/16"), IPv4Network("10.5.34.0/24"), True),
                                 dict(forward=True))])
