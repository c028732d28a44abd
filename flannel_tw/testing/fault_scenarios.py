"""Test helpers shared by tests/integration/test_faults.py (etcd v2) and
tests/integration/test_faults_v3.py (etcd v3): the fault scenarios both APIs go through,
written once over the few writes and reads that differ between them.
(No test module imports another: what several need lives here.)"""

from twisted.internet import defer
from twisted.logger import LogLevel

from flannel_tw import daemon as daemon_mod
from flannel_tw.host.subnetfile import parse_env
from flannel_tw.testing import skips
from flannel_tw.testing.etcd import EtcdServer, start_etcd_for_test
from flannel_tw.testing.harness import DaemonHarness, PREFIX, free_port, logged, sleep
from flannel_tw.testing.polling import wait_until


class FaultScenarios(DaemonHarness):
    """
    L{DaemonHarness} on one etcd API, for a C{unittest.TestCase} subclass that sets C{api}
    ("v2" or "v3", as C{--etcd-api}) and C{lease_value} (the value of a lease of
    192.0.2.<i>, a %-format of i), and says how that API writes the network config and a
    lease and reads a key back. The scenarios are methods the subclass's tests call (each
    suite lists all its tests), asserting as they go.
    """

    timeout = 60
    api = None
    lease_value = None

    def setUp(self):
        DaemonHarness.setUp(self)
        skips.require_etcd()

    # what differs between the APIs

    def put_config(self, server):
        """Write the network config (harness.CONFIG) under the prefix."""
        raise NotImplementedError

    def put_lease(self, server, key, value):
        """Write the lease C{key} with C{value}, living 10 minutes."""
        raise NotImplementedError

    def stored(self, server, key):
        """The value etcd holds at C{key}."""
        raise NotImplementedError

    # built on those

    def peer_value(self, i):
        """The lease value a daemon with the public IP 192.0.2.<i> writes."""
        return self.lease_value % i

    def daemon(self, server, **kw):
        """A running daemon (stopped after the test) on C{server}, over this API."""
        return self.run_daemon(self.make_daemon(server.endpoints, api=self.api, **kw))

    def put_peer(self, server, net, i):
        """The lease of 10.5.<net>.0/24 for the peer 192.0.2.<i>."""
        return self.put_lease(server, PREFIX + "/subnets/10.5.%d.0-24" % net,
                              self.peer_value(i))

    # the scenarios

    @defer.inlineCallbacks
    def daemon_before_etcd(self):
        """
        A daemon started while its etcd is not up waits for the config, retrying with
        backoff, and logs once that the connection is refused. Returns the server (not
        started yet), the daemon and that log line.
        """
        server = EtcdServer(client_port=free_port())
        self.addCleanup(server.stop)
        d = self.daemon(server, config_retry=0.1, config_retry_max=0.8)
        yield sleep(3.0)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        # 0.1, 0.2, 0.4, 0.8, 0.8, ... (+<=20%): about 6 fetches in 3 s, not 30.
        fetches = d.manager.calls["get_network_config"]
        self.assertGreaterEqual(fetches, 3)
        self.assertLessEqual(fetches, 9)
        refused = logged(self.logs, "Couldn't fetch network config", LogLevel.error)
        self.assertEqual(len(refused), 1, refused)
        self.assertIn("Connection refused", refused[0])
        return server, d, refused[0]

    @defer.inlineCallbacks
    def etcd_killed_mid_run(self):
        """
        etcd is killed while the daemon runs: the watch retries with backoff (not in a
        tight loop), the daemon keeps running, and once etcd is back the watch resumes:
        a new peer is routed, no route was removed, and our lease is untouched.
        """
        server = start_etcd_for_test(self)
        self.put_config(server)
        self.put_peer(server, 250, 250)
        d = self.daemon(server)
        yield self.running(d)
        backend = self.backends[0]
        self.assertEqual(self.added_subnets(backend), ["10.5.250.0/24"])
        subnet = d.lease.subnet
        before = d.manager.calls["watch_leases"]

        server.kill()
        yield sleep(4.0)
        during = d.manager.calls["watch_leases"] - before
        # the watcher backs off (1 s, 1.5 s, 2.25 s ... + jitter): a handful, not hundreds
        self.assertGreaterEqual(during, 1)
        self.assertLessEqual(during, 5)
        self.assertEqual(d.phase, daemon_mod.RUNNING)

        server.start()
        self.put_peer(server, 251, 251)
        yield wait_until(lambda: "10.5.251.0/24" in self.added_subnets(backend), timeout=30)
        self.assertEqual(self.removed_events(backend), [])
        self.assertEqual(d.lease.subnet, subnet)
        self.assertEqual(self.stored(server, self.key(subnet)), self.peer_value(1))
        self.assertNotIn(("stop",), backend.events)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def subnet_taken_while_away(self):
        """
        Our daemon stops, and another host (192.0.2.77) takes its subnet: the daemon
        started again leaves that lease alone, takes another subnet, writes it to the
        subnet file and says why (once). Returns the server and the second daemon.
        """
        server = start_etcd_for_test(self)
        self.put_config(server)
        first = self.make_daemon(server.endpoints, api=self.api)
        first.startService()
        yield self.running(first)
        subnet = first.lease.subnet
        yield first.stopService()
        other = self.peer_value(77)
        self.put_lease(server, self.key(subnet), other)

        second = self.daemon(server)
        yield self.running(second)
        self.assertNotEqual(second.lease.subnet, subnet)
        self.assertEqual(self.stored(server, self.key(subnet)), other)
        env = parse_env(open(self.subnet_file).read())
        self.assertEqual(env["FLANNEL_SUBNET"],
                         "%s/24" % (second.lease.subnet.network_address + 1))
        held = logged(self.logs, "is held by 192.0.2.77; not taking it over", LogLevel.warn)
        self.assertEqual(len(held), 1, held)
        return server, second
