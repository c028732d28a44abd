"""The etcd subnet manager and the lease watcher against a real etcd (v2 API), started
by the suite on a free loopback port."""

import json
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw.lease.allocate import OutOfSubnets
from flannel_tw.model.config import parse_config
from flannel_tw.model.events import REMOVED
from flannel_tw.lease.watch import LeaseWatcher
from flannel_tw.testing.etcd import shared_etcd, start_etcd_for_test, unique_prefix
from flannel_tw.testing.polling import CONFIG_JSON, ManagerTestMixin, attrs, wait_until


class AcquireTests(ManagerTestMixin, unittest.TestCase):
    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.server.put_config(CONFIG_JSON, prefix=self.prefix)
        self.config = parse_config(CONFIG_JSON)

    @defer.inlineCallbacks
    def test_config_is_read_and_validated(self):
        config = yield self.make_manager().get_network_config()
        self.assertEqual((config.network, config.subnet_len, str(config.subnet_min),
                          str(config.subnet_max), config.backend_type),
                         (IPv4Network("10.5.0.0/16"), 24, "10.5.1.0", "10.5.255.0", "udp"))

    @defer.inlineCallbacks
    def test_acquire_writes_flanneld_value_with_ttl(self):
        lease = yield self.make_manager().acquire_lease(self.config, attrs("192.0.2.1"))
        node = self.raw("%s-24" % lease.subnet.network_address)
        self.assertEqual(node["value"], '{"PublicIP":"192.0.2.1"}')
        self.assertTrue(86390 <= node["ttl"] <= 86400, node)
        self.assertTrue(IPv4Address("10.5.1.0") <= lease.subnet.network_address
                        <= IPv4Address("10.5.255.0"))
        self.assertEqual(lease.subnet.prefixlen, 24)
        self.assertTrue(86390 <= lease.ttl <= 86400)

    @defer.inlineCallbacks
    def test_restart_reuses_same_subnet(self):
        first = yield self.make_manager(seed=1).acquire_lease(self.config, attrs("192.0.2.1"))
        again = yield self.make_manager(seed=2).acquire_lease(self.config, attrs("192.0.2.1"))
        self.assertEqual(first.subnet, again.subnet)
        leases, _ = yield self.make_manager().list_leases()
        self.assertEqual(len(leases), 1)

    @defer.inlineCallbacks
    def test_previous_subnet_reused_when_free(self):
        wanted = IPv4Network("10.5.77.0/24")
        lease = yield self.make_manager().acquire_lease(self.config, attrs("192.0.2.1"), wanted)
        self.assertEqual(lease.subnet, wanted)

    @defer.inlineCallbacks
    def test_previous_subnet_of_another_host_is_never_taken_over(self):
        wanted = IPv4Network("10.5.77.0/24")
        self.server.v2_put(self.prefix + "/subnets/10.5.77.0-24", '{"PublicIP":"192.0.2.9"}',
                           ttl=86400)
        lease = yield self.make_manager().acquire_lease(self.config, attrs("192.0.2.1"), wanted)
        self.assertNotEqual(lease.subnet, wanted)
        self.assertEqual(self.raw("10.5.77.0-24")["value"], '{"PublicIP":"192.0.2.9"}')

    @defer.inlineCallbacks
    def test_reservation_kept_without_ttl(self):
        self.server.v2_put(self.prefix + "/subnets/10.5.200.0-24", '{"PublicIP":"192.0.2.1"}')
        manager = self.make_manager()
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.1"))
        self.assertEqual(lease.subnet, IPv4Network("10.5.200.0/24"))
        self.assertTrue(lease.is_reservation)
        renewed = yield manager.renew_lease(lease)
        self.assertTrue(renewed.is_reservation)
        self.assertNotIn("ttl", self.raw("10.5.200.0-24"))

    @defer.inlineCallbacks
    def test_own_lease_outside_config_is_replaced(self):
        self.server.v2_put(self.prefix + "/subnets/10.6.3.0-24", '{"PublicIP":"192.0.2.1"}',
                           ttl=600)
        lease = yield self.make_manager().acquire_lease(self.config, attrs("192.0.2.1"))
        self.assertIn(lease.subnet, list(IPv4Network("10.5.0.0/16").subnets(new_prefix=24)))
        self.assertRaises(Exception, self.raw, "10.6.3.0-24")

    @defer.inlineCallbacks
    def test_renewal_is_conditional_on_our_value(self):
        manager = self.make_manager()
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.1"))
        key = "%s-24" % lease.subnet.network_address
        self.server.v2_put(self.prefix + "/subnets/" + key, '{"PublicIP":"192.0.2.50"}', ttl=600)
        with self.assertRaises(Exception) as cm:
            yield manager.renew_lease(lease)
        self.assertEqual(getattr(cm.exception, "error_code", None), 101)
        self.assertEqual(self.raw(key)["value"], '{"PublicIP":"192.0.2.50"}')

    @defer.inlineCallbacks
    def test_twenty_managers_at_once_get_distinct_subnets(self):
        config = parse_config('{"Network": "10.5.0.0/16"}')
        managers = [self.make_manager(seed=i) for i in range(20)]
        leases = yield defer.gatherResults(
            [m.acquire_lease(config, attrs("192.0.2.%d" % (i + 1)))
             for i, m in enumerate(managers)], consumeErrors=True)
        subnets = [l.subnet for l in leases]
        self.assertEqual(len(set(subnets)), 20)
        listed, _ = yield managers[0].list_leases()
        self.assertEqual(sorted(l.subnet for l in listed), sorted(subnets))
        owners = {l.subnet: str(l.attrs.public_ip) for l in listed}
        self.assertEqual(sorted(owners.values()), sorted("192.0.2.%d" % (i + 1) for i in range(20)))

    @defer.inlineCallbacks
    def test_out_of_subnets_names_pool_size(self):
        config = parse_config('{"Network": "10.9.0.0/24", "SubnetLen": 26}')
        manager = self.make_manager()
        got = []
        for i in range(3):
            got.append((yield manager.acquire_lease(config, attrs("192.0.2.%d" % (i + 1)))))
        with self.assertRaises(OutOfSubnets) as cm:
            yield manager.acquire_lease(config, attrs("192.0.2.99"))
        self.assertEqual(cm.exception.pool_size, 3)

    @defer.inlineCallbacks
    def test_bad_nodes_are_skipped(self):
        self.server.v2_put(self.prefix + "/subnets/10.5.3.0-24", "not json")
        self.server.v2_put(self.prefix + "/subnets/garbage", '{"PublicIP":"192.0.2.3"}')
        self.server.v2_put(self.prefix + "/subnets/10.5.4.0-24", '{"PublicIP":"192.0.2.4"}')
        leases, index = yield self.make_manager().list_leases()
        self.assertEqual([str(l.subnet) for l in leases], ["10.5.4.0/24"])
        self.assertGreater(index, 0)


class WatchTests(ManagerTestMixin, unittest.TestCase):
    def setUp(self):
        self.server = start_etcd_for_test(self)
        self.prefix = "/coreos.com/network"
        self.server.put_config(CONFIG_JSON, prefix=self.prefix)
        self.batches = []

    def events(self):
        return [(e.kind, str(e.lease.subnet)) for b in self.batches for e in b]

    def start_watcher(self, manager=None, own=None):
        watcher = LeaseWatcher(reactor, manager or self.make_manager(), self.batches.append,
                               own_subnet=lambda: own)
        watcher.start()
        self.addCleanup(watcher.stop)
        return watcher

    def put(self, net, ip, ttl=86400):
        self.server.v2_put(self.prefix + "/subnets/" + net, json.dumps({"PublicIP": ip},
                                                                      separators=(",", ":")), ttl)

    @defer.inlineCallbacks
    def test_hosts_come_and_go(self):
        self.put("10.5.1.0-24", "192.0.2.1")
        watcher = self.start_watcher(own=IPv4Network("10.5.1.0/24"))
        yield wait_until(lambda: watcher.state == "watching")
        self.put("10.5.2.0-24", "192.0.2.2")
        yield wait_until(lambda: ("added", "10.5.2.0/24") in self.events())
        self.server.v2_delete(self.prefix + "/subnets/10.5.2.0-24")
        yield wait_until(lambda: ("removed", "10.5.2.0/24") in self.events())
        self.put("10.5.3.0-24", "192.0.2.3", ttl=1)
        yield wait_until(lambda: ("removed", "10.5.3.0/24") in self.events(), timeout=15)
        self.assertNotIn("10.5.1.0/24", [s for _, s in self.events()])
        removed = [e for b in self.batches for e in b if e.kind == REMOVED]
        self.assertEqual(str(removed[0].lease.attrs.public_ip), "192.0.2.2")

    @defer.inlineCallbacks
    def test_unparseable_value_does_not_stall(self):
        watcher = self.start_watcher()
        yield wait_until(lambda: watcher.state == "watching")
        self.server.v2_put(self.prefix + "/subnets/10.5.8.0-24", "{broken")
        self.put("10.5.9.0-24", "192.0.2.9")
        yield wait_until(lambda: ("added", "10.5.9.0/24") in self.events())
        self.assertEqual(self.events(), [("added", "10.5.9.0/24")])

    @defer.inlineCallbacks
    def test_index_cleared_recovers_by_relisting(self):
        manager = self.make_manager()
        gate = defer.Deferred()
        real_watch = manager.watch_leases

        def gated_watch(index):
            return gate.addCallback(lambda _: real_watch(index)) if not gate.called \
                else real_watch(index)
        manager.watch_leases = gated_watch
        self.put("10.5.2.0-24", "192.0.2.2")
        watcher = self.start_watcher(manager)
        yield wait_until(lambda: watcher.cursor is not None)
        # while the watcher is held back, 1100 writes push its index out of etcd's history
        self.put("10.5.3.0-24", "192.0.2.3")
        for i in range(1100):
            self.server.v2_put("/flannel-tw-noise", str(i))
        self.server.v2_delete(self.prefix + "/subnets/10.5.2.0-24")
        gate.callback(None)
        yield wait_until(lambda: watcher.resyncs >= 1)
        yield wait_until(lambda: ("removed", "10.5.2.0/24") in self.events())
        self.assertIn(("added", "10.5.3.0/24"), self.events())
        self.assertEqual(sorted(str(s) for s in watcher.known), ["10.5.3.0/24"])

    @defer.inlineCallbacks
    def test_compare_and_delete_means_removed(self):
        self.put("10.5.4.0-24", "192.0.2.4")
        watcher = self.start_watcher()
        yield wait_until(lambda: watcher.state == "watching" and watcher.known)
        self.server._v2("DELETE", self.prefix + "/subnets/10.5.4.0-24",
                        params={"prevValue": '{"PublicIP":"192.0.2.4"}'})
        yield wait_until(lambda: ("removed", "10.5.4.0/24") in self.events())


class BadNodeWarningTests(ManagerTestMixin, unittest.TestCase):
    """Bad nodes are warned about once per node (not per write), and the memory of them
    is bounded however much remote input arrives."""

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.logs = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(self.logs.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs.append)

    def warnings(self, key):
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.logs if "Ignoring bad subnet node" in
                e.get("log_format", "") and e.get("key") == key]

    @defer.inlineCallbacks
    def test_bad_node_rewritten_is_warned_once(self):
        """A bad value renewed again and again (a new index each time) is one warning."""
        key = self.prefix + "/subnets/10.5.3.0-24"
        manager = self.make_manager()
        for i in range(5):
            self.server.v2_put(key, "not json %d" % i, ttl=600)
            yield manager.list_leases()
        self.assertEqual(len(self.warnings(key)), 1, self.warnings(key))
        self.assertEqual(manager.skipped.counts["bad-value"], 1)
        self.assertEqual(manager.skipped_counts(), dict(manager.skipped.counts))

    @defer.inlineCallbacks
    def test_same_bad_value_at_two_keys_is_two_distinct_warnings(self):
        """The log rate limit keys on format and "error": each node's must differ."""
        keys = [self.prefix + "/subnets/10.5.%d.0-24" % i for i in (3, 4)]
        for key in keys:
            self.server.v2_put(key, "not json")
        yield self.make_manager().list_leases()
        events = [e for e in self.logs if "Ignoring bad subnet node" in e.get("log_format", "")]
        self.assertEqual(len({(e["log_format"], str(e["error"])) for e in events}), 2)
        self.assertEqual(sorted(e["key"] for e in events), keys)

    @defer.inlineCallbacks
    def test_deleted_bad_nodes_are_forgotten(self):
        """A full list forgets nodes that are gone; a delete event forgets its node."""
        manager = self.make_manager()
        keys = [self.prefix + "/subnets/junk-%d" % i for i in range(200)]
        for key in keys:
            self.server.v2_put(key, '{"PublicIP":"192.0.2.9"}')
        yield manager.list_leases()
        self.assertEqual(len(manager.skipped), 200)
        self.assertEqual(manager.skipped.counts["bad-key"], 200)
        for key in keys[1:]:
            self.server.v2_delete(key)
        _, index = yield manager.list_leases()
        self.assertEqual(len(manager.skipped), 1)
        d = manager.watch_leases(index + 1)
        self.server.v2_delete(keys[0])
        event, _ = yield d
        self.assertIsNone(event)
        self.assertEqual(len(manager.skipped), 0)
        # the same key written bad again is a new bad node: warned again
        self.server.v2_put(keys[0], "{")
        yield manager.list_leases()
        self.assertEqual(len(self.warnings(keys[0])), 2)

    @defer.inlineCallbacks
    def test_memory_is_bounded_under_a_flood_of_bad_events(self):
        """Distinct bad nodes arriving through the watch (never listed, never deleted)
        fill the memory up to its limit and no further."""
        manager = self.make_manager()
        manager.skipped.limit = 50
        _, index = yield manager.list_leases()
        for i in range(120):
            d = manager.watch_leases(index + 1)
            self.server.v2_put(self.prefix + "/subnets/10.5.%d.0-24" % (i % 250,), "{%d" % i)
            event, index = yield d
            self.assertIsNone(event)
            self.assertLessEqual(len(manager.skipped), 50)
        self.assertEqual(len(manager.skipped), 50)


class HostileKeysAcquireTests(ManagerTestMixin, unittest.TestCase):
    """Keys no valid config hands out neither block allocation nor pass for our lease."""

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.server.put_config(CONFIG_JSON, prefix=self.prefix)
        self.config = parse_config(CONFIG_JSON)

    def put(self, key, ip):
        self.server.v2_put(self.prefix + "/subnets/" + key, json.dumps({"PublicIP": ip}))

    @defer.inlineCallbacks
    def test_supernet_keys_do_not_leave_the_cluster_out_of_subnets(self):
        # flanneld would count each of these as covering the whole pool
        self.put("0.0.0.0-1", "192.0.2.1")
        self.put("10.5.0.0-16", "192.0.2.2")
        self.put("10.5.0.0-17", "192.0.2.3")
        lease = yield self.make_manager(seed=1).acquire_lease(self.config, attrs("192.0.2.50"))
        self.assertTrue(lease.subnet.subnet_of(IPv4Network("10.5.0.0/16")))
        self.assertEqual(lease.subnet.prefixlen, 24)
        self.assertEqual(self.raw(str(lease.subnet.network_address) + "-24")["value"],
                         '{"PublicIP":"192.0.2.50"}')

    @defer.inlineCallbacks
    def test_a_valid_lease_still_blocks_its_subnet(self):
        config = parse_config('{"Network": "10.5.0.0/16", "SubnetMin": "10.5.1.0", '
                              '"SubnetMax": "10.5.2.0"}')
        self.put("10.5.1.0-24", "192.0.2.1")
        lease = yield self.make_manager(seed=1).acquire_lease(config, attrs("192.0.2.50"))
        self.assertEqual(lease.subnet, IPv4Network("10.5.2.0/24"))
        yield self.assertFailure(
            self.make_manager(seed=1).acquire_lease(config, attrs("192.0.2.51")), OutOfSubnets)

    @defer.inlineCallbacks
    def test_alias_key_with_our_public_ip_is_not_reused(self):
        self.put("x10.5.7.0-24", "192.0.2.50")
        manager = self.make_manager(seed=1)
        lease = yield manager.acquire_lease(self.config, attrs("192.0.2.50"))
        self.assertEqual(manager.reused_leases, {})
        self.assertNotEqual(lease.subnet, IPv4Network("10.5.7.0/24"))
        # the alias key is left alone; ours is a fresh, exact key
        self.assertEqual(self.raw("x10.5.7.0-24")["value"], json.dumps({"PublicIP": "192.0.2.50"}))
        self.assertEqual(self.raw(str(lease.subnet.network_address) + "-24")["value"],
                         '{"PublicIP":"192.0.2.50"}')
