"""
Reusing and renewing our lease against a real etcd: compare-and-swap on the
modifiedIndex, so a key changed between our list and our write is never overwritten,
and a lease rewritten by another process with our PublicIP is noticed.
"""
import os

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw.model.config import parse_config
from flannel_tw.etcd.errors import TestFailed
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.testing.etcd import shared_etcd, start_etcd_for_test, unique_prefix

from flannel_tw.testing.harness import CONFIG, DaemonHarness, logged, sleep
from flannel_tw.testing.polling import CONFIG_JSON, ManagerTestMixin, attrs, wait_until
from flannel_tw.observe.status import health_body

OURS = '{"PublicIP":"192.0.2.1"}'


class WriteBetweenListAndSet(EtcdV2Registry):
    """The real registry; right after its first list, C{intrude()} writes to etcd."""

    def __init__(self, *a, intrude, **kw):
        EtcdV2Registry.__init__(self, *a, **kw)
        self._intrude = intrude
        self.lists = 0

    @defer.inlineCallbacks
    def list(self):
        result = yield EtcdV2Registry.list(self)
        self.lists += 1
        if self.lists == 1:
            self._intrude()
        return result


class ReuseCASTests(ManagerTestMixin, unittest.TestCase):
    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.server.put_config(CONFIG_JSON, prefix=self.prefix)
        self.config = parse_config(CONFIG_JSON)
        self.key = self.prefix + "/subnets/10.5.40.0-24"

    def intruding_manager(self, intrude):
        from twisted.internet import reactor
        client = EtcdV2Client(reactor, [self.server.url])
        self.addCleanup(client.close)
        self.registry = WriteBetweenListAndSet(client, prefix=self.prefix, intrude=intrude)
        return SubnetManager(self.registry)

    @defer.inlineCallbacks
    def test_key_taken_between_list_and_write_is_not_overwritten(self):
        self.server.v2_put(self.key, OURS, ttl=86400)     # our old lease
        intruder = '{"PublicIP":"192.0.2.99"}'
        manager = self.intruding_manager(lambda: self.server.v2_put(self.key, intruder,
                                                                    ttl=86400))
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.1"))
        self.assertEqual(self.server.v2_get(self.key)["node"]["value"], intruder)
        self.assertNotEqual(str(lease.subnet), "10.5.40.0/24")
        self.assertEqual(self.registry.lists, 2)                 # looked again after the race
        self.assertEqual(manager.reused_leases, {})

    @defer.inlineCallbacks
    def test_key_rewritten_with_our_ip_between_list_and_write_is_looked_at_again(self):
        self.server.v2_put(self.key, OURS, ttl=86400)
        manager = self.intruding_manager(lambda: self.server.v2_put(self.key, OURS, ttl=600))
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.1"))
        self.assertEqual(self.registry.lists, 2)
        node = self.server.v2_get(self.key)["node"]
        self.assertEqual(str(lease.subnet), "10.5.40.0/24")
        self.assertEqual(lease.modified_index, node["modifiedIndex"])
        self.assertEqual(manager.reused_leases, {lease.subnet: lease.modified_index})

    @defer.inlineCallbacks
    def test_renewal_fails_when_someone_else_rewrote_our_value(self):
        manager = self.make_manager()
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.1"))
        key = self.prefix + "/subnets/%s-24" % lease.subnet.network_address
        other = self.server.v2_put(key, OURS, ttl=600)    # same value, another writer
        yield self.assertFailure(manager.renew_lease(lease), TestFailed)
        node = self.server.v2_get(key)["node"]
        self.assertEqual(node["modifiedIndex"], other["node"]["modifiedIndex"])  # untouched
        self.assertLessEqual(node["ttl"], 600)

    @defer.inlineCallbacks
    def test_renewal_of_our_own_write_succeeds(self):
        manager = self.make_manager()
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.1"))
        renewed = yield manager.renew_lease(lease)
        renewed2 = yield manager.renew_lease(renewed)
        self.assertGreater(renewed2.modified_index, renewed.modified_index)
        self.assertEqual(manager.reused_leases, {})


class TwoHostsOnePublicIPTests(DaemonHarness, unittest.TestCase):
    """Two daemons with the same PublicIP on one real etcd: the second stands down."""

    timeout = 60

    @defer.inlineCallbacks
    def test_second_host_does_not_share_the_first_hosts_lease(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        first = self.run_daemon(self.make_daemon(server.endpoints))
        yield self.running(first)
        subnet = first.lease.subnet
        second = self.run_daemon(self.make_daemon(
            server.endpoints, subnet_file=os.path.join(self.dir, "second", "subnet.env")))
        yield wait_until(lambda: second.keeper is not None
                         and second.keeper.state == "conflict", timeout=20)
        self.assertEqual(second.lease.subnet, subnet)     # it reused the lease, then saw
        self.assertTrue(second.keeper.lease_lost)         # the first host write it back
        self.assertFalse(health_body(second.status())["healthy"])
        self.assertEqual(first.keeper.state, "held")
        self.assertTrue(health_body(first.status())["healthy"])
        stood_down = logged(self.logs, "standing down", LogLevel.critical)
        wrote_back = logged(self.logs, "writing our lease back once", LogLevel.critical)
        self.assertEqual(len(stood_down), 1, stood_down)
        self.assertEqual(len(wrote_back), 1, wrote_back)
        self.assertIn("192.0.2.1", stood_down[0])
        self.assertIn(str(subnet), stood_down[0])
        # the key is the first host's last write, and nobody writes any more
        key = self.key(subnet)
        index = server.v2_get(key)["node"]["modifiedIndex"]
        self.assertEqual(index, first.keeper.lease.modified_index)
        yield sleep(1.0)
        self.assertEqual(server.v2_get(key)["node"]["modifiedIndex"], index)
        self.assertEqual(second.keeper.state, "conflict")
        # once the first host is gone and its lease expired, the second one takes it
        yield first.stopService()
        server.v2_delete(key)
        yield wait_until(lambda: second.keeper.state == "held", timeout=20)
        self.assertFalse(second.keeper.lease_lost)
