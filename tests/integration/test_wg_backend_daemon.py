"""
The daemon with the wireguard backend against a real etcd (v2 and v3 keyspaces), the
device faked (flannel_tw.testing.wg_fakes): the lease value as stored, byte for byte, the
key file beside the subnet file, FLANNEL_MTU, and peers following leases written by
another host.
"""
import json
import os
from ipaddress import IPv4Address

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw.backend.wireguard import key as wgkey
from flannel_tw.backend.wireguard.backend import WireguardBackend
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.host.subnetfile import parse_env
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.testing.etcd import shared_etcd, unique_prefix
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.v3raw import raw_kv, raw_put
from flannel_tw.testing.wg_fakes import FakeDeviceOpener, RecordingLink

IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500)
CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard", "PSK": "%s"}}' % (
    wgkey.encode(bytes(32)),)
PEER = wgkey.PrivateKey(b"\x07" * 32)


class WireguardDaemonTests(unittest.TestCase):
    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.dir = os.path.abspath(self.mktemp())
        self.subnet_file = os.path.join(self.dir, "run", "subnet.env")
        self.opener = FakeDeviceOpener()
        self.backends = []

    def make_daemon(self, api):
        if api == "v3":
            from flannel_tw.etcd.registry_v3 import EtcdV3Registry
            from flannel_tw.etcd.v3client import EtcdV3Client
            client = EtcdV3Client(reactor, [self.server.url])
            registry = EtcdV3Registry(client, prefix=self.prefix)
        else:
            client = EtcdV2Client(reactor, [self.server.url])
            registry = EtcdV2Registry(client, prefix=self.prefix)
        self.addCleanup(client.close)

        def factory(name, reactor_, ext_iface):
            b = WireguardBackend(reactor_, ext_iface, subnet_file=self.subnet_file,
                                 environ={}, open_device=self.opener,
                                 configure_link=RecordingLink(),
                                 to_thread=lambda f, *a: defer.maybeDeferred(f, *a))
            self.backends.append(b)
            return b
        d = daemon_mod.FlannelDaemon(
            reactor, SubnetManager(registry), IFACE,
            daemon_mod.DaemonSettings(subnet_file=self.subnet_file, config_retry=0.05),
            backend_factory=factory, notify=lambda *a: None, exit=lambda code: None,
            etcd_client=client)
        d.startService()
        self.addCleanup(d.stopService)
        return d

    def peer_value(self):
        return ('{"PublicIP":"192.0.2.2","BackendType":"wireguard",'
                '"BackendData":{"PublicKey":"%s"}}' % PEER.public_b64)

    @defer.inlineCallbacks
    def check(self, api, read_value, write_peer, expected):
        d = self.make_daemon(api)
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING and d.watcher is not None
                         and d.watcher.state == "watching", timeout=20)
        backend = self.backends[0]
        key = wgkey.load_or_create(os.path.join(self.dir, "run", "wgkey"))
        self.assertEqual(backend.key, key)
        subnet = d.lease.subnet
        name = "%s-%d" % (subnet.network_address, subnet.prefixlen)
        self.assertEqual(read_value(name), expected % key.public_b64)
        env = parse_env(open(self.subnet_file).read())
        self.assertEqual(env["FLANNEL_MTU"], "1420")
        # another host's lease becomes a peer (endpoint at our own ListenPort)
        other = "10.5.200.0-24" if name != "10.5.200.0-24" else "10.5.201.0-24"
        write_peer(other, self.peer_value())
        dev = self.opener.devices["flannel-wg"]
        yield wait_until(lambda: PEER.public in dev.device_peers, timeout=20)
        self.assertEqual(dev.device_peers[PEER.public].endpoint, ("192.0.2.2", 51820))
        self.assertEqual(dev.device_peers[PEER.public].preshared_key, bytes(32))

    def test_v2(self):
        self.server.put_config(CONFIG, prefix=self.prefix)
        return self.check(
            "v2",
            lambda n: json.loads(json.dumps(self.server.v2_get(
                "%s/subnets/%s" % (self.prefix, n))))["node"]["value"],
            lambda n, v: self.server.v2_put("%s/subnets/%s" % (self.prefix, n), v),
            '{"PublicIP":"192.0.2.1","BackendType":"wireguard",'
            '"BackendData":{"PublicKey":"%s"}}')

    def test_v3(self):
        raw_put(self.server, self.prefix + "/config", CONFIG)
        return self.check(
            "v3",
            lambda n: raw_kv(self.server, "%s/subnets/%s" % (self.prefix, n))["value"],
            lambda n, v: raw_put(self.server, "%s/subnets/%s" % (self.prefix, n), v),
            '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"wireguard",'
            '"BackendData":{"PublicKey":"%s"}}')
