"""Hostile input against a real etcd: malformed leases are skipped with one warning
each, and the good ones still arrive (the pure fuzz tests are in tests/unit/test_fuzz.py)."""

from twisted.internet import defer, reactor
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.testing.etcd import shared_etcd, unique_prefix
from flannel_tw.testing.harness import capture_logs, logged
from flannel_tw.testing.fuzz_fixtures import DEEP


class RealEtcdBadLeaseTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_malformed_leases_are_skipped_with_one_warning_each(self):
        server = shared_etcd()
        prefix = unique_prefix(self)
        logs = capture_logs(self)
        subnets = prefix + "/subnets/"
        bad = {
            "10.5.1.0-24": "not json",
            "10.5.2.0-24": '{"publicip": 5}',
            "10.5.3.0-24": '["PublicIP", "10.0.0.1"]',
            "10.5.4.0-24": '{"PublicIP": "10.0.0.999"}',
            "10.5.5.0-24": DEEP[:2000] + DEEP[-2000:],  # nested past any sane depth
            "garbage": '{"PublicIP": "10.0.0.1"}',
            "10.5.6.0-99": '{"PublicIP": "10.0.0.1"}',
        }
        for key, value in bad.items():
            server.v2_put(subnets + key, value)
        server.v2_put(subnets + "10.5.7.0-24", '{"PublicIP": "10.0.0.7"}')
        client = EtcdV2Client(reactor, [server.url])
        self.addCleanup(client.close)
        manager = SubnetManager(EtcdV2Registry(client, prefix=prefix))
        for _ in range(3):
            leases, _ = yield manager.list_leases()
            self.assertEqual([str(l.subnet) for l in leases], ["10.5.7.0/24"])
        warned = logged(logs, "Ignoring bad subnet node", LogLevel.warn)
        self.assertEqual(len(warned), len(bad), warned)
        for key in bad:
            self.assertEqual(len([w for w in warned if subnets + key + " " in w]), 1, key)

        # the same hostile value arriving through a watch is stepped past, warned once
        _, index = yield manager.list_leases()
        d = manager.watch_leases(index + 1)
        server.v2_put(subnets + "10.5.8.0-24", "{{{")
        event, new_index = yield d
        self.assertIsNone(event)
        self.assertGreater(new_index, index)
        self.assertEqual(len(logged(logs, subnets + "10.5.8.0-24", LogLevel.warn)), 1)
