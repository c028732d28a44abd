"""The daemon on etcd v3 (C{--etcd-api=v3}'s client and registry, the JSON gateway)
against a misbehaving real etcd (a private server per test): not up at start, killed
mid-run, compacted past the watch's revision, our lease revoked, our subnet taken while
we were away. The v2 counterparts are in tests/integration/test_faults.py; a recording
backend stands in for the data plane, so "no route removed" means "no REMOVED event
reached the backend"."""

import os
from ipaddress import IPv4Network

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw.host.subnetfile import parse_env
from flannel_tw.lease import keeper as keeper_mod
from flannel_tw.testing import skips
from flannel_tw.testing.etcd import EtcdServer, start_etcd_for_test
from flannel_tw.testing.harness import CONFIG, DaemonHarness, PREFIX, free_port, logged, sleep
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.v3raw import _b64, raw_kv, raw_put, v3

OURS = '{"PublicIP":"192.0.2.1","PublicIPv6":null}'


def peer_value(i):
    return '{"PublicIP":"192.0.2.%d","PublicIPv6":null}' % i


def grant(server, ttl=600):
    return int(v3(server, "/v3/lease/grant", {"TTL": str(ttl)})["ID"])


def put_peer(server, net, i, ttl=600):
    """A peer's lease key C{<prefix>/subnets/10.5.<net>.0-24} with a v3 lease; the revision."""
    return raw_put(server, PREFIX + "/subnets/10.5.%d.0-24" % net, peer_value(i),
                   lease=grant(server, ttl))


class EtcdV3FaultTests(DaemonHarness, unittest.TestCase):
    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        skips.require_etcd()

    def daemon(self, server, **kw):
        return self.run_daemon(self.make_daemon(server.endpoints, api="v3", **kw))

    @defer.inlineCallbacks
    def test_etcd_not_up_at_start_waits_with_backoff_then_runs(self):
        server = EtcdServer(client_port=free_port())
        self.addCleanup(server.stop)
        d = self.daemon(server, config_retry=0.1, config_retry_max=0.8)
        yield sleep(3.0)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        fetches = d.manager.calls["get_network_config"]
        self.assertGreaterEqual(fetches, 3)
        self.assertLessEqual(fetches, 9)
        refused = logged(self.logs, "Couldn't fetch network config", LogLevel.error)
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("Connection refused", refused[0])

        server.start()
        raw_put(server, PREFIX + "/config", CONFIG)
        yield self.running(d)
        kv = raw_kv(server, self.key(d.lease.subnet))
        self.assertEqual(kv["value"], OURS)
        self.assertTrue(os.path.exists(self.subnet_file))
        self.assertEqual(self.notified, ["READY=1"])
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_etcd_killed_mid_run_watch_resumes_no_route_removed_no_tight_loop(self):
        server = start_etcd_for_test(self)
        raw_put(server, PREFIX + "/config", CONFIG)
        put_peer(server, 250, 250)
        d = self.daemon(server)
        yield self.running(d)
        backend = self.backends[0]
        self.assertEqual(self.added_subnets(backend), ["10.5.250.0/24"])
        subnet = d.lease.subnet
        before = d.manager.calls["watch_leases"]

        server.kill()
        yield sleep(4.0)
        during = d.manager.calls["watch_leases"] - before
        self.assertGreaterEqual(during, 1)
        self.assertLessEqual(during, 5)
        self.assertEqual(d.phase, daemon_mod.RUNNING)

        server.start()
        put_peer(server, 251, 251)
        yield wait_until(lambda: "10.5.251.0/24" in self.added_subnets(backend), timeout=30)
        self.assertEqual(self.removed_events(backend), [])
        self.assertEqual(d.lease.subnet, subnet)
        self.assertEqual(raw_kv(server, self.key(subnet))["value"], OURS)
        self.assertNotIn(("stop",), backend.events)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_compaction_past_the_watch_revision_relists_and_routes_stay_right(self):
        server = start_etcd_for_test(self)
        raw_put(server, PREFIX + "/config", CONFIG)
        put_peer(server, 250, 250)
        put_peer(server, 252, 252)
        d = self.daemon(server)
        yield self.running(d)
        backend = self.backends[0]
        self.assertEqual(sorted(self.added_subnets(backend)), ["10.5.250.0/24", "10.5.252.0/24"])
        cursor = d.watcher.cursor
        lists = d.manager.calls["list_leases"]

        # the watch falls behind (etcd down while the watcher backs off); meanwhile one
        # peer comes, one goes, one changes its address, and the store is compacted to
        # its latest revision: the watch's next revision no longer exists
        server.kill()
        yield sleep(3.0)
        server.start()
        put_peer(server, 251, 251)
        v3(server, "/v3/kv/deleterange", {"key": _b64(PREFIX + "/subnets/10.5.250.0-24")})
        put_peer(server, 252, 99)
        for i in range(20):
            revision = raw_put(server, "/filler/%d" % i, "x")
        v3(server, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
        self.assertGreater(revision, cursor + 20)

        yield wait_until(lambda: d.manager.calls["list_leases"] > lists, timeout=30)
        outside = logged(self.logs, "etcd index outside history", LogLevel.warn)
        self.assertEqual(len(outside), 1, outside)
        yield wait_until(lambda: set(d.watcher.leases) >= {IPv4Network("10.5.251.0/24")}
                         and IPv4Network("10.5.250.0/24") not in d.watcher.leases, timeout=10)
        self.assertEqual(str(d.watcher.leases[IPv4Network("10.5.252.0/24")].attrs.public_ip),
                         "192.0.2.99")
        self.assertGreaterEqual(d.watcher.cursor, revision)
        removed = [str(ev.lease.subnet) for ev in self.removed_events(backend)]
        self.assertEqual(removed, ["10.5.250.0/24"])
        self.assertIn("10.5.251.0/24", self.added_subnets(backend))
        # the watch goes on from the re-listed revision: a later peer is routed
        put_peer(server, 253, 253)
        yield wait_until(lambda: "10.5.253.0/24" in self.added_subnets(backend), timeout=10)
        self.assertEqual(d.manager.calls["list_leases"], lists + 1)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_our_lease_revoked_is_reacquired_and_backend_keeps_running(self):
        server = start_etcd_for_test(self)
        raw_put(server, PREFIX + "/config", CONFIG)
        d = self.daemon(server)
        yield self.running(d)
        subnet = d.lease.subnet
        old = raw_kv(server, self.key(subnet))["lease"]
        v3(server, "/v3/lease/revoke", {"ID": old})
        self.assertIsNone(raw_kv(server, self.key(subnet)))

        yield wait_until(lambda: raw_kv(server, self.key(subnet)) is not None, timeout=20)
        yield wait_until(lambda: d.keeper.state == keeper_mod.HELD, timeout=5)
        kv = raw_kv(server, self.key(subnet))
        self.assertEqual(kv["value"], OURS)
        self.assertNotEqual(kv["lease"], old)
        self.assertGreater(int(v3(server, "/v3/lease/timetolive", {"ID": kv["lease"]})["TTL"]),
                           86000)
        self.assertEqual(d.lease.subnet, subnet)
        self.assertNotIn(("stop",), self.backends[0].events)
        self.assertEqual(self.removed_events(self.backends[0]), [])
        self.assertEqual(d.phase, daemon_mod.RUNNING)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_subnet_taken_while_away_is_never_overwritten(self):
        server = start_etcd_for_test(self)
        raw_put(server, PREFIX + "/config", CONFIG)
        first = self.make_daemon(server.endpoints, api="v3")
        first.startService()
        yield self.running(first)
        subnet = first.lease.subnet
        yield first.stopService()
        other = '{"PublicIP":"192.0.2.77","PublicIPv6":null}'
        raw_put(server, self.key(subnet), other, lease=grant(server))

        second = self.daemon(server)
        yield self.running(second)
        self.assertNotEqual(second.lease.subnet, subnet)
        self.assertEqual(raw_kv(server, self.key(subnet))["value"], other)
        self.assertEqual(raw_kv(server, self.key(second.lease.subnet))["value"], OURS)
        env = parse_env(open(self.subnet_file).read())
        self.assertEqual(env["FLANNEL_SUBNET"],
                         "%s/24" % (second.lease.subnet.network_address + 1))
        held = logged(self.logs, "is held by 192.0.2.77; not taking it over", LogLevel.warn)
        self.assertEqual(len(held), 1, held)
