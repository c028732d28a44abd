"""Compare-and-delete on both registries (the IRegistry seam) against the real etcd:
the v2 keyspace (prevIndex) and the v3 keyspace (a txn on mod_revision)."""

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.errors import KeyNotFound, TestFailed
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.etcd.registry_v3 import EtcdV3Registry
from flannel_tw.etcd.v3client import EtcdV3Client
from flannel_tw.testing.etcd import shared_etcd, unique_prefix

VALUE = '{"PublicIP":"192.0.2.1"}'


class DeleteMixin:
    def setUp(self):
        server = shared_etcd()
        client = self.client_class(reactor, server.endpoints, request_timeout=5.0)
        self.addCleanup(client.close)
        self.registry = self.registry_class(client, unique_prefix(self))

    @defer.inlineCallbacks
    def test_delete_if_unchanged(self):
        written = yield self.registry.create("10.5.1.0-24", VALUE, 600)
        index = yield self.registry.delete("10.5.1.0-24", prev_index=written.modified_index)
        self.assertGreater(index, written.modified_index)
        with self.assertRaises(KeyNotFound):
            yield self.registry.get("10.5.1.0-24")

    @defer.inlineCallbacks
    def test_changed_key_is_not_deleted(self):
        written = yield self.registry.create("10.5.2.0-24", VALUE, 600)
        renewed = yield self.registry.set("10.5.2.0-24", VALUE, 600)
        with self.assertRaises(TestFailed):
            yield self.registry.delete("10.5.2.0-24", prev_index=written.modified_index)
        still = yield self.registry.get("10.5.2.0-24")
        self.assertEqual(still.modified_index, renewed.modified_index)

    @defer.inlineCallbacks
    def test_missing_key(self):
        with self.assertRaises(KeyNotFound):
            yield self.registry.delete("10.5.3.0-24", prev_index=5)
        with self.assertRaises(KeyNotFound):
            yield self.registry.delete("10.5.3.0-24")

    @defer.inlineCallbacks
    def test_unconditional_delete_returns_its_index(self):
        written = yield self.registry.create("10.5.4.0-24", VALUE, None)
        index = yield self.registry.delete("10.5.4.0-24")
        self.assertGreater(index, written.modified_index)


class V2DeleteTests(DeleteMixin, unittest.TestCase):
    client_class, registry_class = EtcdV2Client, EtcdV2Registry


class V3DeleteTests(DeleteMixin, unittest.TestCase):
    client_class, registry_class = EtcdV3Client, EtcdV3Registry
