"""
/healthz over real HTTP while renewals of our lease fail with an etcd error answer (etcd
itself answers the health probe): unhealthy once the renewal is late, before the lease
expires, and healthy again after a successful renewal.
"""
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.etcd.errors import EtcdError
from flannel_tw.testing.etcd import start_etcd_for_test

from flannel_tw.testing.harness import CONFIG, CountingManager, DaemonHarness
from flannel_tw.testing.health_client import HealthHTTPClient
from flannel_tw.testing.polling import wait_until


class FailingRenewal(CountingManager):
    """The real manager; while C{failing}, every renewal gets an etcd error answer."""

    failing = True

    def renew_lease(self, lease):
        self.calls["renew_lease"] += 1
        if self.failing:
            return defer.fail(EtcdError(110, "The request requires user authentication",
                                        "Insufficient credentials"))
        return CountingManager.renew_lease(self, lease)


class RenewalHealthTests(HealthHTTPClient, DaemonHarness, unittest.TestCase):
    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        self.server = start_etcd_for_test(self)

    @defer.inlineCallbacks
    def test_failing_renewal_is_unhealthy_before_the_lease_expires(self):
        self.server.put_config(CONFIG)
        # renewal 2 s after acquisition (margin: a day minus 2 s); etcd refuses it; /healthz
        # fails once it has failed for 2 s (renew_grace), a day before the lease expires
        d = self.run_daemon(self.make_daemon(self.server.endpoints, manager_class=FailingRenewal,
                                             etcd_probe_interval=0.2,
                                             renew_margin=86398.0, renew_grace=2.0))
        self.listen(d)
        yield self.running(d)
        subnet = d.lease.subnet
        yield wait_until(lambda: d.manager.calls["renew_lease"] >= 1, timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)          # failing, but not for long yet
        self.assertEqual(body["keeper"], "retrying")
        yield wait_until(lambda: d.keeper.renewal_failing_for > 2.2, timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 503, body)
        self.assertTrue(body["etcd_ok"])           # etcd answers: the lease is the problem
        self.assertFalse(body["lease_lost"])
        self.assertEqual(body["lease"], str(subnet))
        self.assertGreater(body["renewal_failing_for"], 2.0)
        self.assertGreater(body["lease_expires_in"], 86000)
        self.assertTrue(self.server.v2_get(self.key(subnet))["node"]["ttl"] > 0)

        d.manager.failing = False
        yield wait_until(lambda: d.keeper.renewals >= 1, timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)
        self.assertIsNone(body["renewal_failing_for"])
        self.assertGreater(body["lease_expires_in"], 86000)
        self.assertEqual(d.lease.subnet, subnet)
