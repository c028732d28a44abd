"""
A wiped etcd (a private real etcd per test, wiped with SIGKILL and an empty data dir):
the daemon re-creates its own lease, and the peers the wipe took keep their routes until
they are gone for good, i.e. still absent from etcd when their leases would have expired
by the TTL last seen (flannel_tw.lease.watch). A recording backend stands in for the
data plane: "route kept" means "no REMOVED event reached the backend".
"""
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.lease import watch
from flannel_tw.testing.etcd import start_etcd_for_test

from flannel_tw.testing.harness import CONFIG, PREFIX, DaemonHarness, exists, sleep
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing import skips


class WipedEtcdTests(DaemonHarness, unittest.TestCase):
    timeout = 90

    def setUp(self):
        DaemonHarness.setUp(self)
        skips.require_etcd()
        self.patch(watch, "RETAIN_SLACK", 1.0)   # flanneld's one-minute retry, shortened

    def put_peer(self, server, net, ip, ttl):
        server.v2_put(PREFIX + "/subnets/" + net, '{"PublicIP":"%s"}' % ip, ttl=ttl)

    def removed(self, backend):
        return [str(ev.lease.subnet) for ev in self.removed_events(backend)]

    @defer.inlineCallbacks
    def test_wiped_peers_keep_routes_until_their_leases_would_have_expired(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        for i in range(15):  # move the index well past where a fresh cluster starts
            server.v2_put("/filler/%d" % i, "x")
        self.put_peer(server, "10.5.250.0-24", "192.0.2.250", ttl=600)   # re-registers
        self.put_peer(server, "10.5.251.0-24", "192.0.2.251", ttl=600)   # never comes back
        self.put_peer(server, "10.5.252.0-24", "192.0.2.252", ttl=12)    # gone for good soon
        d = self.run_daemon(self.make_daemon(server.endpoints))
        yield self.running(d)
        backend = self.backends[0]
        self.assertEqual(sorted(self.added_subnets(backend)),
                         ["10.5.250.0/24", "10.5.251.0/24", "10.5.252.0/24"])
        subnet = d.lease.subnet

        server.wipe()
        server.put_config(CONFIG)
        # our own lease is re-created; the peers are missing from etcd but keep their routes
        yield wait_until(lambda: exists(server, self.key(subnet)), timeout=30)
        yield wait_until(lambda: d.watcher.state == "watching")
        yield sleep(1.0)
        self.assertEqual(self.removed(backend), [])
        self.assertEqual(len(d.watcher.retained), 3)
        self.assertEqual(len(d.watcher.known), 3)

        # a peer that re-registers (flanneld renews with an unconditional PUT) keeps its
        # route without a gap and is not re-added
        self.put_peer(server, "10.5.250.0-24", "192.0.2.250", ttl=600)
        yield wait_until(lambda: len(d.watcher.retained) == 2)
        self.assertEqual(self.added_subnets(backend).count("10.5.250.0/24"), 1)

        # the 12 s lease would have expired by now: its peer is gone for good; the others
        # stay (their leases had ten minutes left)
        yield wait_until(lambda: self.removed(backend) == ["10.5.252.0/24"], timeout=30)
        yield sleep(1.0)
        self.assertEqual(self.removed(backend), ["10.5.252.0/24"])
        self.assertEqual(sorted(str(s) for s in d.watcher.retained), ["10.5.251.0/24"])
        self.assertEqual(sorted(str(s) for s in d.watcher.known),
                         ["10.5.250.0/24", "10.5.251.0/24"])
        self.assertEqual(d.watcher.state, "watching")
        self.assertEqual(d.lease.subnet, subnet)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_restart_after_a_wipe_trusts_etcd(self):
        """Retention covers a running daemon's memory only: a daemon started on the wiped
        etcd knows nothing of the vanished peers (its first list is the truth)."""
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        self.put_peer(server, "10.5.250.0-24", "192.0.2.250", ttl=600)
        server.wipe()
        server.put_config(CONFIG)
        d = self.run_daemon(self.make_daemon(server.endpoints))
        yield self.running(d)
        self.assertEqual(self.added_subnets(self.backends[0]), [])
        self.assertEqual(d.watcher.retained, {})
