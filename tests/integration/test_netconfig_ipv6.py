"""flannel-tw config set|get with a dual-stack config on a real etcd (v2 and v3)."""
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.model.config import parse_config
from flannel_tw.testing.netconfig_fixtures import SharedEtcdRunner
from flannel_tw.testing.v3raw import raw_kv

DUAL = ('{"Network": "10.7.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00:7::/48", '
        '"IPv6SubnetLen": 64, "Backend": {"Type": "vxlan"}}')


class DualStackConfigTests(SharedEtcdRunner, unittest.TestCase):

    @defer.inlineCallbacks
    def test_set_and_get_v2(self):
        code, out, err = yield self.config("set", DUAL, env=self.env)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.stored(self.server, self.prefix)["value"], DUAL)
        config = parse_config(self.stored(self.server, self.prefix)["value"])
        self.assertEqual((config.enable_ipv6, str(config.ipv6_network)), (True, "fc00:7::/48"))
        code, out, _err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (0, DUAL + "\n"))

    @defer.inlineCallbacks
    def test_set_v3(self):
        code, out, err = yield self.config("set", "--etcd-api=v3", DUAL, env=self.env)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(raw_kv(self.server, self.prefix + "/config")["value"], DUAL)
