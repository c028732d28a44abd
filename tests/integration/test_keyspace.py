"""--etcd-api=auto (the default) on a real etcd 3.5: the real daemon (twistd's object
graph from flannel_tw.wiring, alloc backend, no iptables) chooses the keyspace that
holds the network config, refuses two different configs while it keeps waiting, and
runs on an etcd that serves no v2."""
import os
from ipaddress import IPv4Network

from twisted.internet import defer, reactor
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw import wiring
from flannel_tw.etcd.errors import EtcdProtocolError
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.etcd.registry_v3 import EtcdV3Registry
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.tap import Options
from flannel_tw.testing.etcd import (EtcdHTTPError, shared_etcd, start_etcd_for_test,
                                     unique_prefix)
from flannel_tw.testing.harness import capture_logs, logged
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.v3raw import raw_kv, raw_put, v3

CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}'
SAME = '{ "Backend": {"Type": "alloc"}, "Network": "10.5.0.0/16" }'
OTHER = '{"Network": "10.6.0.0/16", "Backend": {"Type": "alloc"}}'


class AutoKeyspaceTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.logs = capture_logs(self)

    def start(self, server=None, *flags):
        server = server or self.server
        subnet_file = os.path.join(os.path.abspath(self.mktemp()), "subnet.env")
        os.makedirs(os.path.dirname(subnet_file))
        options = Options(environ={})
        options.parseOptions([
            "--etcd-endpoints=%s" % server.url, "--etcd-prefix=%s" % self.prefix,
            "--iface=127.0.0.1", "--subnet-file=%s" % subnet_file,
            "--iptables-forward-rules=false"] + list(flags))
        d = wiring.build_daemon(options, reactor)
        d.startService()
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(lambda: d.running and d.stopService())
        return d

    def key(self, subnet):
        return "%s/subnets/%s-%d" % (self.prefix, subnet.network_address, subnet.prefixlen)

    def chosen_lines(self):
        return logged(self.logs, "keyspace (--etcd-api=auto)", LogLevel.info)

    @defer.inlineCallbacks
    def test_config_only_in_v2_runs_on_v2(self):
        self.server.put_config(CONFIG, prefix=self.prefix)
        d = self.start()
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        self.assertEqual(d.manager.chosen, "v2")
        self.assertIsInstance(d.manager.manager._registry, EtcdV2Registry)
        node = self.server.v2_get(self.key(d.lease.subnet))["node"]
        self.assertEqual(node["value"], '{"PublicIP":"127.0.0.1"}')       # v0.10's form
        self.assertIsNone(raw_kv(self.server, self.key(d.lease.subnet)))  # nothing in v3
        [line] = self.chosen_lines()
        self.assertIn("Using etcd's v2 keyspace", line)
        self.assertIn("only in the v2 keyspace (%s/v2/keys%s/config)"
                      % (self.server.url, self.prefix), line)

    @defer.inlineCallbacks
    def test_config_only_in_v3_runs_on_v3(self):
        raw_put(self.server, self.prefix + "/config", CONFIG)
        d = self.start()
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        self.assertEqual(d.manager.chosen, "v3")
        self.assertIsInstance(d.manager.manager._registry, EtcdV3Registry)
        kv = raw_kv(self.server, self.key(d.lease.subnet))
        self.assertEqual(kv["value"], '{"PublicIP":"127.0.0.1","PublicIPv6":null}')
        self.assertTrue(86390 <= int(v3(self.server, "/v3/lease/timetolive",
                                        {"ID": kv["lease"]})["TTL"]) <= 86400)
        with self.assertRaises(EtcdHTTPError):        # nothing in the v2 keyspace
            self.server.v2_get(self.prefix + "/subnets")
        [line] = self.chosen_lines()
        self.assertIn("only in the v3 keyspace", line)
        # the watcher runs on v3 too: a peer written there is seen
        peer = IPv4Network("10.5.250.0/24") if d.lease.subnet != IPv4Network(
            "10.5.250.0/24") else IPv4Network("10.5.251.0/24")
        raw_put(self.server, self.key(peer), '{"PublicIP":"192.0.2.9","PublicIPv6":null}')
        yield wait_until(lambda: peer in d.watcher.leases, timeout=10)

    @defer.inlineCallbacks
    def test_same_config_in_both_runs_on_v3_and_says_so(self):
        self.server.put_config(SAME, prefix=self.prefix)
        raw_put(self.server, self.prefix + "/config", CONFIG)
        d = self.start()
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        self.assertEqual(d.manager.chosen, "v3")
        self.assertIsNotNone(raw_kv(self.server, self.key(d.lease.subnet)))
        [line] = self.chosen_lines()
        self.assertIn("both keyspaces hold the same network config", line)
        self.assertIn("using v3", line)

    @defer.inlineCallbacks
    def test_different_configs_refused_while_waiting_then_fixed(self):
        self.server.put_config(OTHER, prefix=self.prefix)
        raw_put(self.server, self.prefix + "/config", CONFIG)
        d = self.start()
        yield wait_until(lambda: logged(self.logs, "two different network configs",
                                        LogLevel.error), timeout=10)
        yield wait_until(lambda: d.config_attempts >= 2, timeout=10)
        [error] = logged(self.logs, "two different network configs", LogLevel.error)
        for part in ("%s/v2/keys%s/config" % (self.server.url, self.prefix),
                     "key %s/config" % (self.prefix,), repr(OTHER), repr(CONFIG),
                     "--etcd-api=v2|v3"):
            self.assertIn(part, error)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)   # still waiting, not exited
        self.assertIsNone(d.manager.chosen)
        self.assertTrue(d.running)
        self.server.v2_delete(self.prefix + "/config")         # the operator fixes it
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=30)
        self.assertEqual(d.manager.chosen, "v3")
        self.assertIsNotNone(raw_kv(self.server, self.key(d.lease.subnet)))

    @defer.inlineCallbacks
    def test_etcd_without_v2_runs_on_v3(self):
        server = start_etcd_for_test(self, enable_v2=False)
        # the v2 client on this etcd: a 404 that is not an etcd error body
        client = EtcdV2Client(reactor, server.endpoints, request_timeout=5.0)
        self.addCleanup(client.close)
        f = yield self.assertFailure(client.get(self.prefix + "/config"), EtcdProtocolError)
        self.assertEqual(f.status, 404)
        raw_put(server, self.prefix + "/config", CONFIG)
        d = self.start(server)
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        self.assertEqual(d.manager.chosen, "v3")
        kv = raw_kv(server, self.key(d.lease.subnet))
        self.assertEqual(kv["value"], '{"PublicIP":"127.0.0.1","PublicIPv6":null}')
        self.assertEqual(logged(self.logs, "Couldn't fetch network config"), [])

    @defer.inlineCallbacks
    def test_v2_auth_only_cluster_runs_on_v2(self):
        # user and password for etcd's v2 auth; v3 auth is off, so v3 is read without a
        # token (not "authentication is not enabled" forever)
        server = start_etcd_for_test(self)
        server.enable_v2_auth("s3cret")
        server.put_config(CONFIG, prefix=self.prefix)
        d = self.start(server, "--etcd-username=root", "--etcd-password=s3cret")
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        self.assertEqual(d.manager.chosen, "v2")

    @defer.inlineCallbacks
    def test_explicit_v2_ignores_v3(self):
        raw_put(self.server, self.prefix + "/config", CONFIG)
        d = self.start(None, "--etcd-api=v2")
        yield wait_until(lambda: d.config_attempts >= 1 and logged(
            self.logs, "Couldn't fetch network config"), timeout=10)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        self.assertEqual(logged(self.logs, "Using etcd's v2 keyspace (--etcd-api=v2)"),
                         ["Using etcd's v2 keyspace (--etcd-api=v2)"])
