"""EtcdV3Registry and EtcdV3Client against a real etcd 3.5 (its JSON gateway, /v3/),
checked with independent synchronous requests to the same gateway."""

from ipaddress import IPv4Network

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw.etcd.errors import (EtcdIndexWentBack, EventIndexCleared, KeyNotFound,
                                    NodeExist, TestFailed)
from flannel_tw.etcd.registry_v3 import EtcdV3Registry
from flannel_tw.etcd.v3client import EtcdV3Client, WatchCompacted
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.testing.etcd import shared_etcd, start_etcd_for_test, unique_prefix
from flannel_tw.testing.polling import CONFIG_JSON, attrs
from flannel_tw.testing.v3raw import _b64, raw_kv, raw_put, v3

VALUE = '{"PublicIP":"192.0.2.1","PublicIPv6":null}'


class V3Mixin:
    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.client = EtcdV3Client(reactor, self.server.endpoints, request_timeout=5.0)
        self.addCleanup(self.client.close)
        self.registry = EtcdV3Registry(self.client, self.prefix)

    def ttl_of(self, lease):
        return int(v3(self.server, "/v3/lease/timetolive", {"ID": str(lease)})["TTL"])


class RegistryTests(V3Mixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_config_read(self):
        raw_put(self.server, self.prefix + "/config", CONFIG_JSON)
        text = yield self.registry.get_config()
        self.assertEqual(text, CONFIG_JSON)

    @defer.inlineCallbacks
    def test_missing_config_is_key_not_found(self):
        with self.assertRaises(KeyNotFound):
            yield self.registry.get_config()

    @defer.inlineCallbacks
    def test_create_only_race(self):
        first = yield self.registry.create("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', 86400)
        with self.assertRaises(NodeExist):
            yield self.registry.create("10.5.1.0-24", '{"PublicIP":"192.0.2.2"}', 86400)
        kv = raw_kv(self.server, self.prefix + "/subnets/10.5.1.0-24")
        self.assertEqual(kv["value"], VALUE)
        self.assertEqual(int(kv["mod_revision"]), first.modified_index)
        self.assertTrue(86390 <= self.ttl_of(kv["lease"]) <= 86400)
        self.assertEqual(first.ttl, 86400)

    @defer.inlineCallbacks
    def test_concurrent_creates_one_wins(self):
        results = yield defer.DeferredList(
            [self.registry.create("10.5.2.0-24", '{"PublicIP":"192.0.2.%d"}' % i, 86400)
             for i in range(1, 6)], consumeErrors=True)
        wins = [r for ok, r in results if ok]
        losses = [r for ok, r in results if not ok]
        self.assertEqual(len(wins), 1)
        self.assertTrue(all(f.check(NodeExist) for f in losses))

    @defer.inlineCallbacks
    def test_cas_renew_grants_a_new_lease(self):
        first = yield self.registry.create("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', 86400)
        lease1 = raw_kv(self.server, self.prefix + "/subnets/10.5.1.0-24")["lease"]
        again = yield self.registry.compare_and_set("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}',
                                                    86400, prev_index=first.modified_index)
        kv = raw_kv(self.server, self.prefix + "/subnets/10.5.1.0-24")
        self.assertNotEqual(kv["lease"], lease1)
        self.assertEqual(int(kv["mod_revision"]), again.modified_index)
        self.assertGreater(again.modified_index, first.modified_index)
        with self.assertRaises(TestFailed):
            yield self.registry.compare_and_set("10.5.1.0-24", "{}", 86400,
                                                prev_index=first.modified_index)
        with self.assertRaises(KeyNotFound):
            yield self.registry.compare_and_set("10.5.9.0-24", "{}", 86400, prev_index=5)
        self.assertEqual(raw_kv(self.server, self.prefix + "/subnets/10.5.1.0-24")["value"],
                         VALUE)

    @defer.inlineCallbacks
    def test_reservation_has_no_lease_and_is_kept(self):
        raw_put(self.server, self.prefix + "/subnets/10.5.7.0-24", '{"PublicIP":"192.0.2.7"}')
        records, cursor = yield self.registry.list()
        (rec,) = records
        self.assertIsNone(rec.ttl)
        again = yield self.registry.compare_and_set("10.5.7.0-24", '{"PublicIP":"192.0.2.7"}',
                                                    None, prev_index=rec.modified_index)
        kv = raw_kv(self.server, self.prefix + "/subnets/10.5.7.0-24")
        self.assertNotIn("lease", kv)
        self.assertIsNone(again.ttl)

    @defer.inlineCallbacks
    def test_list_and_watch_see_create_renew_delete_expire(self):
        raw_put(self.server, self.prefix + "/subnetsX", "not a lease")  # outside the range
        raw_put(self.server, self.prefix + "/subnets/a/deep", "not a lease")
        records, cursor = yield self.registry.list()
        self.assertEqual(records, [])
        created = yield self.registry.create("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', 86400)
        renewed = yield self.registry.compare_and_set("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}',
                                                      86400, prev_index=created.modified_index)
        yield self.registry.delete("10.5.1.0-24")
        short = yield self.registry.create("10.5.3.0-24", '{"PublicIP":"192.0.2.3"}', 2)
        seen = []
        index = cursor + 1
        while len(seen) < 5:
            change = yield self.registry.watch(index)
            seen.append(change)
            index = change.record.modified_index + 1
        self.assertEqual([(c.removed, c.record.key.rsplit("/", 1)[1]) for c in seen],
                         [(False, "10.5.1.0-24"), (False, "10.5.1.0-24"), (True, "10.5.1.0-24"),
                          (False, "10.5.3.0-24"), (True, "10.5.3.0-24")])
        self.assertEqual([c.record.modified_index for c in seen[:4]],
                         [created.modified_index, renewed.modified_index,
                          renewed.modified_index + 1, short.modified_index])
        self.assertEqual(seen[0].record.value, VALUE)
        self.assertTrue(0 < seen[0].record.ttl <= 86400)
        self.assertEqual(seen[2].prev_value, VALUE)   # the deleted value, from prev_kv
        self.assertEqual(seen[4].prev_value, '{"PublicIP":"192.0.2.3","PublicIPv6":null}')
        records, _ = yield self.registry.list()
        self.assertEqual(records, [])

    @defer.inlineCallbacks
    def test_events_sharing_a_revision_are_all_handed_out(self):
        _, cursor = yield self.registry.list()
        k1, k2 = self.prefix + "/subnets/10.5.1.0-24", self.prefix + "/subnets/10.5.2.0-24"
        v3(self.server, "/v3/kv/txn", {"success": [
            {"request_put": {"key": _b64(k1), "value": _b64("{}")}},
            {"request_put": {"key": _b64(k2), "value": _b64("{}")}}]})
        first = yield self.registry.watch(cursor + 1)
        second = yield self.registry.watch(first.record.modified_index + 1)
        self.assertEqual(first.record.modified_index, second.record.modified_index)
        self.assertEqual({first.record.key, second.record.key}, {k1, k2})

    @defer.inlineCallbacks
    def test_compacted_watch_is_typed_error(self):
        _, cursor = yield self.registry.list()
        yield self.registry.create("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', None)
        rev = raw_put(self.server, self.prefix + "/other", "x")
        v3(self.server, "/v3/kv/compaction", {"revision": str(rev)})
        with self.assertRaises(WatchCompacted) as cm:
            yield self.registry.watch(cursor + 1)
        self.assertIsInstance(cm.exception, EventIndexCleared)
        self.assertEqual(cm.exception.compact_revision, rev)


class WentBackTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_watch_beyond_the_store_revision_is_index_went_back(self):
        server = start_etcd_for_test(self)
        client = EtcdV3Client(reactor, server.endpoints, request_timeout=5.0)
        self.addCleanup(client.close)
        registry = EtcdV3Registry(client, "/coreos.com/network")
        _, cursor = yield registry.list()
        with self.assertRaises(EtcdIndexWentBack):
            yield registry.watch(cursor + 1000)


class ManagerOverV3Tests(V3Mixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_acquire_stores_flanneld_v020_value(self):
        raw_put(self.server, self.prefix + "/config", CONFIG_JSON)
        import random
        manager = SubnetManager(self.registry, rand=random.Random(3))
        config = yield manager.get_network_config()
        vx = LeaseAttrs(attrs("192.0.2.5").public_ip, "vxlan",
                        {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"})
        lease = yield manager.acquire_lease(config, vx)
        key = "%s/subnets/%s-%d" % (self.prefix, lease.subnet.network_address,
                                    lease.subnet.prefixlen)
        kv = raw_kv(self.server, key)
        self.assertEqual(kv["value"], '{"PublicIP":"192.0.2.5","PublicIPv6":null,'
                                      '"BackendType":"vxlan",'
                                      '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}')
        self.assertTrue(86390 <= self.ttl_of(kv["lease"]) <= 86400)
        self.assertTrue(lease.subnet.subnet_of(IPv4Network("10.5.0.0/16")))
        renewed = yield manager.renew_lease(lease)
        kv2 = raw_kv(self.server, key)
        self.assertNotEqual(kv2["lease"], kv["lease"])
        self.assertEqual(kv2["value"], kv["value"])
        again = yield SubnetManager(self.registry).acquire_lease(config, vx)
        self.assertEqual(again.subnet, lease.subnet)
        leases, _ = yield manager.list_leases()
        self.assertEqual([l.subnet for l in leases], [lease.subnet])
        self.assertIsNotNone(renewed)


class AuthTests(unittest.TestCase):
    """v3 auth on a private etcd: a token from /v3/auth/authenticate in the
    Authorization header; an invalid token (expired, or from a restarted member) is
    replaced by authenticating again."""

    def setUp(self):
        self.server = start_etcd_for_test(self)
        v3(self.server, "/v3/auth/user/add", {"name": "root", "password": "pw"})
        v3(self.server, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        v3(self.server, "/v3/auth/enable", {})

    def client(self, **kwargs):
        client = EtcdV3Client(reactor, self.server.endpoints, request_timeout=5.0, **kwargs)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_authenticated_registry_and_invalid_token_renewed(self):
        client = self.client(username="root", password="pw")
        registry = EtcdV3Registry(client, "/coreos.com/network")
        yield client.put("/coreos.com/network/config", CONFIG_JSON)
        self.assertEqual((yield registry.get_config()), CONFIG_JSON)
        client._token = "bogus.1"          # as after the token's TTL or a member restart
        self.assertEqual((yield registry.get_config()), CONFIG_JSON)
        self.assertNotEqual(client._token, "bogus.1")

    @defer.inlineCallbacks
    def test_wrong_password_and_no_user_fail_as_answers(self):
        from flannel_tw.etcd.v3client import EtcdV3Error
        with self.assertRaises(EtcdV3Error) as cm:
            yield self.client(username="root", password="bad").range("/a")
        self.assertIn("invalid user ID or password", cm.exception.message)
        with self.assertRaises(EtcdV3Error) as cm:
            yield self.client().range("/a")
        self.assertIn("user name is empty", cm.exception.message)


class DaemonOverV3Tests(unittest.TestCase):
    """twistd's object graph (L{flannel_tw.wiring.build_daemon}) with --etcd-api=v3 on a
    real etcd 3.5: alloc backend (a lease, no data plane), no iptables."""

    timeout = 60

    @defer.inlineCallbacks
    def test_daemon_runs_on_v3_and_sees_a_peer(self):
        import os
        from flannel_tw import daemon as daemon_mod, wiring
        from flannel_tw.tap import Options
        from flannel_tw.testing.polling import wait_until
        server = shared_etcd()
        prefix = unique_prefix(self)
        raw_put(server, prefix + "/config",
                '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}')
        subnet_file = os.path.join(os.path.abspath(self.mktemp()), "subnet.env")
        os.makedirs(os.path.dirname(subnet_file))
        options = Options(environ={})
        options.parseOptions([
            "--etcd-api=v3", "--etcd-endpoints=%s" % server.url, "--etcd-prefix=%s" % prefix,
            "--iface=127.0.0.1", "--subnet-file=%s" % subnet_file,
            "--iptables-forward-rules=false"])
        d = wiring.build_daemon(options, reactor)
        d.startService()
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(lambda: d.running and d.stopService())
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        subnet = d.lease.subnet
        key = "%s/subnets/%s-%d" % (prefix, subnet.network_address, subnet.prefixlen)
        kv = raw_kv(server, key)
        self.assertEqual(kv["value"], '{"PublicIP":"127.0.0.1","PublicIPv6":null}')
        self.assertTrue(86390 <= int(v3(server, "/v3/lease/timetolive",
                                        {"ID": kv["lease"]})["TTL"]) <= 86400)
        with open(subnet_file) as f:
            self.assertIn("FLANNEL_SUBNET=%s/%d\n" % (subnet.network_address + 1,
                                                      subnet.prefixlen), f.read())
        from flannel_tw.testing.etcd import EtcdHTTPError
        with self.assertRaises(EtcdHTTPError):        # nothing in the v2 keyspace
            server.v2_get(prefix + "/subnets")
        peer = IPv4Network("10.5.250.0/24") if subnet != IPv4Network("10.5.250.0/24") \
            else IPv4Network("10.5.251.0/24")
        raw_put(server, "%s/subnets/%s-24" % (prefix, peer.network_address),
                '{"PublicIP":"192.0.2.9","PublicIPv6":null}')
        yield wait_until(lambda: peer in d.watcher.leases, timeout=10)
        self.assertEqual(str(d.watcher.leases[peer].attrs.public_ip), "192.0.2.9")


class TLSTests(unittest.TestCase):
    """The v3 client over https with a client certificate (the transport the v2 client
    uses: the same TLS policy and failure messages)."""

    timeout = 60

    def setUp(self):
        import os
        from flannel_tw.testing.certs import make_pki
        self.pki = make_pki(os.path.join(os.path.abspath(self.mktemp()), "pki"))
        self.server = start_etcd_for_test(self, tls=self.pki.etcd_tls())

    @defer.inlineCallbacks
    def test_registry_over_tls_and_missing_client_certificate(self):
        from flannel_tw.etcd.errors import EtcdUnavailable
        from flannel_tw.etcd.tls import tls_policy
        self.assertTrue(self.server.url.startswith("https://"))
        client = EtcdV3Client(reactor, self.server.endpoints, request_timeout=5.0,
                              tls=tls_policy(self.pki.ca, self.pki.client_cert,
                                             self.pki.client_key))
        self.addCleanup(client.close)
        registry = EtcdV3Registry(client, "/coreos.com/network")
        rec = yield registry.create("10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', 86400)
        records, cursor = yield registry.list()
        self.assertEqual([(r.key, r.modified_index) for r in records],
                         [(rec.key, rec.modified_index)])
        bare = EtcdV3Client(reactor, self.server.endpoints, request_timeout=5.0,
                            tls=tls_policy(self.pki.ca))
        self.addCleanup(bare.close)
        e = yield self.assertFailure(bare.range("/coreos.com/network/config"), EtcdUnavailable)
        self.assertIn("etcd rejected our client certificate", str(e))
