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
from flannel_tw.lease import keeper as keeper_mod
from flannel_tw.testing.etcd import start_etcd_for_test
from flannel_tw.testing.fault_scenarios import FaultScenarios
from flannel_tw.testing.harness import CONFIG, PREFIX, logged, sleep
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.v3raw import _b64, raw_kv, raw_put, v3

OURS = '{"PublicIP":"192.0.2.1","PublicIPv6":null}'


def grant(server, ttl=600):
    return int(v3(server, "/v3/lease/grant", {"TTL": str(ttl)})["ID"])


class EtcdV3FaultTests(FaultScenarios, unittest.TestCase):
    """The shared scenarios (FaultScenarios) over the v3 API, and the v3 faults: a
    compaction, a revoked lease."""

    api = "v3"
    lease_value = '{"PublicIP":"192.0.2.%d","PublicIPv6":null}'

    def put_config(self, server):
        raw_put(server, PREFIX + "/config", CONFIG)

    def put_lease(self, server, key, value):
        """A key on a v3 lease of its own; the revision."""
        return raw_put(server, key, value, lease=grant(server))

    def stored(self, server, key):
        return raw_kv(server, key)["value"]

    @defer.inlineCallbacks
    def test_etcd_not_up_at_start_waits_with_backoff_then_runs(self):
        server, d, _refused = yield self.daemon_before_etcd()

        server.start()
        self.put_config(server)
        yield self.running(d)
        kv = raw_kv(server, self.key(d.lease.subnet))
        self.assertEqual(kv["value"], OURS)
        self.assertTrue(os.path.exists(self.subnet_file))
        self.assertEqual(self.notified, ["READY=1"])
        self.assertEqual(self.exits, [])

    def test_etcd_killed_mid_run_watch_resumes_no_route_removed_no_tight_loop(self):
        return self.etcd_killed_mid_run()

    @defer.inlineCallbacks
    def test_compaction_past_the_watch_revision_relists_and_routes_stay_right(self):
        server = start_etcd_for_test(self)
        self.put_config(server)
        self.put_peer(server, 250, 250)
        self.put_peer(server, 252, 252)
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
        self.put_peer(server, 251, 251)
        v3(server, "/v3/kv/deleterange", {"key": _b64(PREFIX + "/subnets/10.5.250.0-24")})
        self.put_peer(server, 252, 99)
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
        self.put_peer(server, 253, 253)
        yield wait_until(lambda: "10.5.253.0/24" in self.added_subnets(backend), timeout=10)
        self.assertEqual(d.manager.calls["list_leases"], lists + 1)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_our_lease_revoked_is_reacquired_and_backend_keeps_running(self):
        server = start_etcd_for_test(self)
        self.put_config(server)
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
        server, second = yield self.subnet_taken_while_away()
        self.assertEqual(raw_kv(server, self.key(second.lease.subnet))["value"], OURS)
