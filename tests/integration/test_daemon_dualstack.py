"""
The daemon with a dual-stack config on a real etcd, v2 and v3 (issue 15): its lease is
an & key with its PublicIPv6, subnet.env has the IPv6 lines in flanneld's order, a
restart keeps both subnets, and an IPv4-only peer's lease is routed beside a dual-stack
one (RecordingBackend: no data plane).
"""
from ipaddress import IPv4Address, IPv6Address

from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.host.subnetfile import parse_env
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.testing.etcd import shared_etcd, unique_prefix
from flannel_tw.testing.harness import DaemonHarness
from flannel_tw.testing.v3raw import raw_kv, raw_put

IFACE6 = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                  public_ip=IPv4Address("192.0.2.1"), mtu=1500,
                  addr6=IPv6Address("fd00:250::1"), public_ipv6=IPv6Address("fd00:250::1"))
DUAL = ('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:5::/48"}')


class Mixin(DaemonHarness):
    api = None

    def setUp(self):
        DaemonHarness.setUp(self)
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.write("config", DUAL)

    def daemon(self):
        return self.run_daemon(self.make_daemon([self.server.url], prefix=self.prefix,
                                                iface=IFACE6, api=self.api))

    @defer.inlineCallbacks
    def test_dual_stack_lease_subnet_env_and_restart(self):
        first = self.daemon()
        yield self.running(first)
        lease = first.lease
        self.assertIsNotNone(lease.ipv6_subnet)
        self.assertEqual(self.read("subnets/" + lease.key_name),
                         '{"PublicIP":"192.0.2.1","PublicIPv6":"fd00:250::1"}')
        with open(self.subnet_file) as f:
            env = parse_env(f.read())
        self.assertEqual(list(env), ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK",
                                     "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"])
        self.assertEqual((env["FLANNEL_IPV6_NETWORK"], env["FLANNEL_IPV6_SUBNET"]),
                         ("fd00:10:5::/48", "%s/64" % (lease.ipv6_subnet.network_address + 1)))
        yield first.stopService()
        second = self.daemon()
        yield self.running(second)
        self.assertEqual((second.lease.subnet, second.lease.ipv6_subnet),
                         (lease.subnet, lease.ipv6_subnet))

    @defer.inlineCallbacks
    def test_ipv4_only_and_dual_stack_peers(self):
        self.write("subnets/10.5.200.0-24", '{"PublicIP":"192.0.2.9"}')
        self.write("subnets/10.5.201.0-24&fd00:10:5:c9::-64",
                   '{"PublicIP":"192.0.2.10","PublicIPv6":"fd00:250::a"}')
        d = self.daemon()
        yield self.running(d)
        routed = {str(ev.lease.subnet): ev.lease for e in self.backends[0].events
                  if e[0] == "events" for ev in e[1]}
        self.assertEqual(set(routed), {"10.5.200.0/24", "10.5.201.0/24"})
        self.assertIsNone(routed["10.5.200.0/24"].ipv6_subnet)
        self.assertEqual(str(routed["10.5.201.0/24"].ipv6_subnet), "fd00:10:5:c9::/64")
        self.assertNotIn(d.lease.subnet, [l.subnet for l in routed.values()])


class V2Tests(Mixin, unittest.TestCase):
    api = "v2"

    def write(self, name, value):
        self.server.v2_put("%s/%s" % (self.prefix, name), value)

    def read(self, name):
        nodes = self.server.v2_get(self.prefix + "/subnets")["node"]["nodes"]
        return [n["value"] for n in nodes if n["key"] == "%s/%s" % (self.prefix, name)][0]


class V3Tests(Mixin, unittest.TestCase):
    api = "v3"

    def write(self, name, value):
        raw_put(self.server, "%s/%s" % (self.prefix, name), value)

    def read(self, name):
        return raw_kv(self.server, "%s/%s" % (self.prefix, name))["value"]
