"""
flannel_tw.wiring: the object graph built from the options in one place (no network:
nothing is started; the services are only built).
"""
from twisted.internet import reactor
from twisted.trial import unittest

from flannel_tw import wiring
from flannel_tw.daemon import FlannelDaemon
from flannel_tw.tap import Options


def options(*argv):
    opts = Options(environ={})
    opts.parseOptions(["--etcd-endpoints=http://127.0.0.1:9", "--iface=127.0.0.1",
                       "--iptables-forward-rules=false"] + list(argv))
    return opts


class BuildTests(unittest.TestCase):
    def build(self, *argv):
        d = wiring.build_daemon(options(*argv), reactor)
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(d._keeper_clock.close)
        return d

    def test_the_daemon_gets_its_parts(self):
        d = self.build("--etcd-prefix=/x/net", "--subnet-lease-renew-margin=30")
        self.assertIsInstance(d, FlannelDaemon)
        self.assertEqual(d.etcd_client.endpoints, ["http://127.0.0.1:9"])
        self.assertEqual(d.manager.prefix, "/x/net")
        self.assertEqual(d.settings.renew_margin, 1800.0)
        self.assertEqual(str(d.ext_iface.addr), "127.0.0.1")
        self.assertEqual(list(d), [])        # no health or metrics port: no services

    def test_health_and_metrics_services_when_their_ports_are_set(self):
        d = self.build("--healthz-port=8471", "--healthz-ip=127.0.0.1",
                       "--metrics-port=8472", "--metrics-ip=127.0.0.2")
        listening = sorted((svc.endpoint._port, svc.endpoint._interface) for svc in d)
        self.assertEqual(listening, [(8471, "127.0.0.1"), (8472, "127.0.0.2")])


class EtcdApiTests(unittest.TestCase):
    """--etcd-api picks the etcd client and the registry under the subnet manager."""

    def build(self, *argv):
        d = wiring.build_daemon(options(*argv), reactor)
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(d._keeper_clock.close)
        return d

    def test_v2(self):
        from flannel_tw.etcd.client import EtcdV2Client
        from flannel_tw.etcd.registry import EtcdV2Registry
        d = self.build("--etcd-api=v2")
        self.assertIsInstance(d.etcd_client, EtcdV2Client)
        self.assertIsInstance(d.manager._registry, EtcdV2Registry)

    def test_auto_by_default_builds_each_keyspace_when_asked(self):
        from flannel_tw.etcd.client import EtcdV2Client
        from flannel_tw.etcd.registry import EtcdV2Registry
        from flannel_tw.etcd.registry_v3 import EtcdV3Registry
        from flannel_tw.etcd.v3client import EtcdV3Client
        from flannel_tw.lease.keyspace import KeyspaceManager
        d = self.build("--etcd-prefix=/x/net", "--etcd-username=u", "--etcd-password=p")
        self.assertIsInstance(d.manager, KeyspaceManager)
        self.assertEqual(d.manager.built_clients(), [])        # nothing built yet
        self.assertEqual(d.etcd_client.endpoints, ["http://127.0.0.1:9"])
        v2_client, v2_registry = d.manager.part("v2")
        v3_client, v3_registry = d.manager.part("v3")
        self.assertIsInstance(v2_client, EtcdV2Client)
        self.assertIsInstance(v2_registry, EtcdV2Registry)
        self.assertIsInstance(v3_client, EtcdV3Client)
        self.assertIsInstance(v3_registry, EtcdV3Registry)
        self.assertIs(v3_registry._client, v3_client)
        self.assertEqual((v3_registry.prefix, v2_registry.prefix), ("/x/net", "/x/net"))
        self.assertEqual((v3_client._username, v3_client._password), ("u", "p"))
        self.assertIs(d.manager.part("v3")[0], v3_client)       # built once

    def test_v3(self):
        from flannel_tw.etcd.registry_v3 import EtcdV3Registry
        from flannel_tw.etcd.v3client import EtcdV3Client
        d = self.build("--etcd-api=v3", "--etcd-prefix=/x/net", "--etcd-username=u",
                       "--etcd-password=p")
        self.assertIsInstance(d.etcd_client, EtcdV3Client)
        self.assertIsInstance(d.manager._registry, EtcdV3Registry)
        self.assertIs(d.manager._registry._client, d.etcd_client)
        self.assertEqual((d.manager.prefix, d.etcd_client.endpoints),
                         ("/x/net", ["http://127.0.0.1:9"]))
        self.assertEqual((d.etcd_client._username, d.etcd_client._password), ("u", "p"))
