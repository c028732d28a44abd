"""
Dual-stack leases (issue 15) against a real etcd, through the v2 registry and the v3
registry alike: the & key and the value as stored byte for byte, reuse after a restart,
watch events carrying the v6 part, IPv4-only and dual-stack leases in one keyspace (each
side taking and routing what it can), hostile v6 parts skipped (their v4 parts routed).
"""
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.etcd.registry_v3 import EtcdV3Registry
from flannel_tw.etcd.v3client import EtcdV3Client
from flannel_tw.lease.allocate import fits_ipv6
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.lease.watch import LeaseWatcher
from flannel_tw.model.config import parse_config
from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.testing.etcd import shared_etcd, unique_prefix
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.v3raw import _b64, raw_kv, raw_put, v3

DUAL_JSON = ('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", '
             '"Backend": {"Type": "vxlan"}}')
V4_JSON = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
DUAL = parse_config(DUAL_JSON)
V4 = parse_config(V4_JSON)
MAC = {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}
MAC6 = {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"}


def attrs6(n):
    return LeaseAttrs(IPv4Address("192.0.2.%d" % n), "vxlan", MAC,
                      public_ipv6=IPv6Address("2001:db8::%x" % n), backend_v6_data=MAC6)


def attrs4(n):
    return LeaseAttrs(IPv4Address("192.0.2.%d" % n), "vxlan", MAC)


class DualStackMixin:
    """Subclasses set up C{self.server}, C{self.prefix} and implement C{make_manager},
    C{put} (raw write of a lease key) and C{stored} (raw read: the value, or None)."""

    @defer.inlineCallbacks
    def test_dual_stack_acquire_key_and_value(self):
        lease = yield self.make_manager().acquire_lease(DUAL, attrs6(1))
        self.assertTrue(fits_ipv6(DUAL, lease.ipv6_subnet))
        name = "%s-24&%s-64" % (lease.subnet.network_address, lease.ipv6_subnet.network_address)
        self.assertEqual(lease.key_name, name)
        self.assertEqual(self.stored(name),
                         '{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1",'
                         '"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":'
                         '"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":'
                         '"aa:bb:cc:dd:ee:02"}}')
        leases, _ = yield self.make_manager().list_leases()
        self.assertEqual([(l.key, l.subnet, l.ipv6_subnet, l.is_canonical) for l in leases],
                         [(name, lease.subnet, lease.ipv6_subnet, True)])

    @defer.inlineCallbacks
    def test_reuse_after_restart(self):
        first = yield self.make_manager(seed=1).acquire_lease(DUAL, attrs6(1))
        again = yield self.make_manager(seed=2).acquire_lease(DUAL, attrs6(1))
        self.assertEqual((again.subnet, again.ipv6_subnet), (first.subnet, first.ipv6_subnet))
        leases, _ = yield self.make_manager().list_leases()
        self.assertEqual(len(leases), 1)
        renewed = yield self.make_manager().renew_lease(again)
        self.assertEqual(renewed.ipv6_subnet, first.ipv6_subnet)

    @defer.inlineCallbacks
    def test_config_switched_to_dual_stack_keeps_the_v4_subnet(self):
        old = yield self.make_manager().acquire_lease(V4, attrs4(1))
        self.assertIsNone(old.ipv6_subnet)
        self.assertEqual(self.stored(old.key_name).startswith('{"PublicIP":"192.0.2.1"'), True)
        new = yield self.make_manager().acquire_lease(DUAL, attrs6(1))
        self.assertEqual(new.subnet, old.subnet)
        self.assertIsNotNone(new.ipv6_subnet)
        self.assertIsNone(self.stored(old.key_name))
        leases, _ = yield self.make_manager().list_leases()
        self.assertEqual([l.key for l in leases], [new.key_name])

    @defer.inlineCallbacks
    def test_ipv4_and_dual_stack_leases_in_one_keyspace(self):
        """Another host's IPv4-only lease and a dual-stack host: each acquires, no crash,
        no subnet twice; the IPv4-only host sees the dual-stack lease as its v4 part."""
        self.put("10.5.1.0-24", attrs4(9).to_json())
        dual = yield self.make_manager(seed=3).acquire_lease(DUAL, attrs6(1))
        v4 = yield self.make_manager(seed=3).acquire_lease(V4, attrs4(2))
        self.assertEqual(len({dual.subnet, v4.subnet, IPv4Network("10.5.1.0/24")}), 3)
        self.assertIsNone(v4.ipv6_subnet)
        self.assertEqual(v4.key_name, "%s-24" % v4.subnet.network_address)
        seen = []
        watcher = self.watcher(V4, v4, seen)
        yield wait_until(lambda: len(seen) >= 2)
        got = {str(e.lease.subnet): e.lease for e in seen}
        self.assertEqual(set(got), {"10.5.1.0/24", str(dual.subnet)})
        self.assertIsNone(got[str(dual.subnet)].ipv6_subnet)
        self.assertIsNone(got[str(dual.subnet)].attrs.public_ipv6)
        watcher.stop()

    @defer.inlineCallbacks
    def test_watch_events_carry_the_v6_part(self):
        ours = yield self.make_manager().acquire_lease(DUAL, attrs6(1))
        seen = []
        watcher = self.watcher(DUAL, ours, seen)
        yield wait_until(lambda: watcher.cursor is not None)
        other = yield self.make_manager(seed=7).acquire_lease(DUAL, attrs6(2))
        yield wait_until(lambda: any(e.kind == ADDED for e in seen))
        event = [e for e in seen if e.kind == ADDED][0]
        self.assertEqual((event.lease.subnet, event.lease.ipv6_subnet,
                          event.lease.attrs.public_ipv6, event.lease.attrs.backend_v6_data),
                         (other.subnet, other.ipv6_subnet, IPv6Address("2001:db8::2"), MAC6))
        self.delete(other.key_name)
        yield wait_until(lambda: any(e.kind == REMOVED for e in seen))
        removed = [e for e in seen if e.kind == REMOVED][0]
        self.assertEqual(removed.lease.ipv6_subnet, other.ipv6_subnet)
        watcher.stop()

    @defer.inlineCallbacks
    def test_hostile_v6_leases_skipped(self):
        ours = yield self.make_manager().acquire_lease(
            DUAL, attrs6(1), previous_subnet=IPv4Network("10.5.1.0/24"),
            previous_ipv6_subnet=IPv6Network("fc00:0:0:1::/64"))
        good = attrs6(2).to_json()
        hostile = {
            "10.5.3.0-24&fd00:0:0:3::-64": good,                        # outside IPv6Network
            "10.5.4.0-24&fc00:0:0:4::-80": good,                        # wrong prefix
            "10.5.5.0-24&FC00:0:0:5::-64": good,                        # uppercase: bad key
            "10.5.6.0-24&fc00:0:0:1::-64": good,                        # our v6 subnet
            "10.5.7.0-24&fc00:0:0:7::-64": good.replace('"2001:db8::2"', '"fe80::2"'),
            "10.5.8.0-24&fc00:0:0:8::-64": good.replace('"2001:db8::2"', '"10.0.0.8"'),
            "10.5.9.0-24&fc00:0:0:9::-64": good.replace(
                '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}', '"BackendV6Data":7'),
        }
        for name, value in hostile.items():
            self.put(name, value)
        self.put("10.5.2.0-24&fc00:0:0:2::-64", good)
        seen = []
        watcher = self.watcher(DUAL, ours, seen)
        yield wait_until(lambda: watcher.cursor is not None and len(seen) >= 7)
        # a bad v6 part: the v4 part routed; a bad key or value: nothing
        self.assertEqual(sorted((e.kind, e.lease.key_name) for e in seen),
                         [(ADDED, "10.5.2.0-24&fc00:0:0:2::-64"), (ADDED, "10.5.3.0-24"),
                          (ADDED, "10.5.4.0-24"), (ADDED, "10.5.6.0-24"), (ADDED, "10.5.7.0-24"),
                          (ADDED, "10.5.8.0-24"), (ADDED, "10.5.9.0-24")])
        counts = watcher.skipped_counts()
        self.assertEqual((counts["outside-network"], counts["subnet-length"], counts["bad-key"],
                          counts["overlaps-own"], counts["public-ipv6"], counts["bad-v6-data"]),
                         (1, 1, 1, 1, 2, 1))     # "10.0.0.8": IPv4-mapped, as Go reads it
        self.put("10.5.10.0-24&fc00:0:0:10::-64", good.replace('"2001:db8::2"', '"nope"'))
        yield wait_until(lambda: self.manager.skipped_counts()["bad-value"] == 1)
        # a new host still gets a lease beside them
        newcomer = yield self.make_manager().acquire_lease(DUAL, attrs6(3))
        self.assertTrue(fits_ipv6(DUAL, newcomer.ipv6_subnet))
        watcher.stop()

    def watcher(self, config, own, seen):
        self.manager = self.make_manager()
        kw = {}
        if config.enable_ipv6:
            kw = dict(ipv6_network=config.ipv6_network, ipv6_subnet_len=config.ipv6_subnet_len,
                      own_ipv6_subnet=lambda: own.ipv6_subnet,
                      own_public_ipv6=own.attrs.public_ipv6)
        w = LeaseWatcher(reactor, self.manager, seen.extend, own_subnet=lambda: own.subnet,
                         network=config.network, subnet_len=config.subnet_len,
                         own_public_ip=own.attrs.public_ip, **kw)
        w.start()
        self.addCleanup(w.stop)
        return w


class V2Tests(DualStackMixin, unittest.TestCase):

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.server.put_config(DUAL_JSON, prefix=self.prefix)

    def make_manager(self, seed=None):
        client = EtcdV2Client(reactor, [self.server.url])
        self.addCleanup(client.close)
        return SubnetManager(EtcdV2Registry(client, prefix=self.prefix), rand=random.Random(seed))

    def put(self, name, value):
        self.server.v2_put(self.prefix + "/subnets/" + name, value, ttl=600)

    def delete(self, name):
        self.server.v2_delete(self.prefix + "/subnets/" + name)

    def stored(self, name):
        nodes = self.server.v2_get(self.prefix + "/subnets", recursive=True)["node"].get(
            "nodes", [])
        found = [n["value"] for n in nodes if n["key"] == self.prefix + "/subnets/" + name]
        return found[0] if found else None

    def test_key_is_stored_unescaped(self):
        """The v2 client escapes & and : in the URL path; etcd stores the plain key."""
        d = self.make_manager().acquire_lease(DUAL, attrs6(1))

        def check(lease):
            nodes = self.server.v2_get(self.prefix + "/subnets")["node"]["nodes"]
            self.assertEqual([n["key"] for n in nodes],
                             [self.prefix + "/subnets/" + lease.key_name])
            self.assertIn("&fc00:0:0:", nodes[0]["key"])
        return d.addCallback(check)

    def test_ipv4_only_value_keeps_v010_form(self):
        """IPv4-only: v0.10's value exactly (no PublicIPv6; the v2 writer drops the VNI)."""
        d = self.make_manager().acquire_lease(V4, attrs4(1))
        d.addCallback(lambda lease: self.assertEqual(
            self.stored(lease.key_name),
            '{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":'
            '{"VtepMAC":"aa:bb:cc:dd:ee:01"}}'))
        return d


class V3Tests(DualStackMixin, unittest.TestCase):

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        raw_put(self.server, self.prefix + "/config", DUAL_JSON)

    def make_manager(self, seed=None):
        client = EtcdV3Client(reactor, self.server.endpoints, request_timeout=5.0)
        self.addCleanup(client.close)
        return SubnetManager(EtcdV3Registry(client, self.prefix), rand=random.Random(seed))

    def put(self, name, value):
        raw_put(self.server, self.prefix + "/subnets/" + name, value)

    def delete(self, name):
        v3(self.server, "/v3/kv/deleterange", {"key": _b64(self.prefix + "/subnets/" + name)})

    def stored(self, name):
        kv = raw_kv(self.server, self.prefix + "/subnets/" + name)
        return kv["value"] if kv else None

    def test_ipv4_only_value_gets_public_ipv6_null(self):
        d = self.make_manager().acquire_lease(V4, attrs4(1))
        d.addCallback(lambda lease: self.assertEqual(
            self.stored(lease.key_name),
            '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":'
            '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}'))
        return d
