"""``flannel-tw config get|set --etcd-api=auto|v2|v3`` against a real etcd 3.5: the v3
keyspace read and written over the JSON gateway (checked with independent gateway
calls), auto choosing as the daemon does, and an etcd that serves no v2."""

from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.testing.etcd import shared_etcd, start_etcd_for_test, unique_prefix
from flannel_tw.testing.netconfig_fixtures import CONFIG, Runner
from flannel_tw.testing.v3raw import raw_kv, raw_put

OTHER = '{"Network": "10.8.0.0/16"}'


class V3ConfigTests(unittest.TestCase, Runner):
    timeout = 60

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.env = {"FLANNELD_ETCD_ENDPOINTS": self.server.url,
                    "FLANNELD_ETCD_PREFIX": self.prefix}

    def v3_value(self):
        kv = raw_kv(self.server, self.prefix + "/config")
        return kv and kv["value"]

    def v2_value(self):
        node = self.stored(self.server, self.prefix)
        return node and node["value"]

    @defer.inlineCallbacks
    def test_v3_set_get_unchanged(self):
        code, out, err = yield self.config("set", "--etcd-api=v3", CONFIG, env=self.env)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("wrote %s/config in the v3 keyspace (etcd %s) (put, etcd revision "
                      % (self.prefix, self.server.url), out)
        kv = raw_kv(self.server, self.prefix + "/config")
        self.assertEqual(kv["value"], CONFIG)
        self.assertNotIn("lease", kv)                       # the config has no lease
        self.assertIsNone(self.v2_value())
        code, out, err = yield self.config("get", "-etcd-api=v3", env=self.env)
        self.assertEqual((code, out, err), (0, CONFIG + "\n", ""))
        code, out, _ = yield self.config("set", "--etcd-api=v3", CONFIG, env=self.env)
        self.assertEqual(code, 0)
        self.assertIn("unchanged", out)
        self.assertEqual(raw_kv(self.server, self.prefix + "/config")["mod_revision"],
                         kv["mod_revision"], "the same value is not written again")
        # v2 alone does not see it
        code, out, err = yield self.config("get", "--etcd-api=v2", env=self.env)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no network config at %s/config (etcd %s) in the v2 keyspace"
                      % (self.prefix, self.server.url), err)

    @defer.inlineCallbacks
    def test_v3_from_the_environment_and_invalid_refused(self):
        env = dict(self.env, FLANNELD_ETCD_API="v3")
        code, _out, err = yield self.config("set", '{"Network": "10.7.0.0/33"}', env=env)
        self.assertEqual(code, 1)
        self.assertIn("nothing written", err)
        self.assertIsNone(self.v3_value())
        code, _out, _err = yield self.config("set", CONFIG, env=env)
        self.assertEqual((code, self.v3_value(), self.v2_value()), (0, CONFIG, None))
        code, _out, err = yield self.config("get", "--etcd-api=v4", env=env)
        self.assertEqual(code, 2)
        self.assertIn("--etcd-api", err)

    @defer.inlineCallbacks
    def test_auto_get_says_which(self):
        raw_put(self.server, self.prefix + "/config", CONFIG)
        code, out, err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (0, CONFIG + "\n"))
        self.assertIn("only in the v3 keyspace (key %s/config)" % self.prefix, err)
        self.server.put_config(CONFIG, prefix=self.prefix)
        code, out, err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (0, CONFIG + "\n"))
        self.assertIn("both keyspaces hold the same network config", err)
        self.assertIn("using v3", err)

    @defer.inlineCallbacks
    def test_auto_refuses_two_different_configs(self):
        raw_put(self.server, self.prefix + "/config", CONFIG)
        self.server.put_config(OTHER, prefix=self.prefix)
        code, out, err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (1, ""))
        for part in ("two different network configs", repr(CONFIG), repr(OTHER),
                     "--etcd-api=v2|v3"):
            self.assertIn(part, err)
        code, out, err = yield self.config("set", '{"Network": "10.9.0.0/16"}', env=self.env)
        self.assertEqual(code, 1)
        self.assertIn("nothing written", err)
        self.assertEqual((self.v2_value(), self.v3_value()), (OTHER, CONFIG))

    @defer.inlineCallbacks
    def test_auto_set_writes_where_the_config_is(self):
        raw_put(self.server, self.prefix + "/config", CONFIG)
        code, out, _err = yield self.config("set", OTHER, env=self.env)
        self.assertEqual(code, 0)
        self.assertIn("only in the v3 keyspace", out)
        self.assertEqual((self.v2_value(), self.v3_value()), (None, OTHER))
        # both the same: both written, so that they stay the same
        self.server.put_config(OTHER, prefix=self.prefix)
        code, out, _err = yield self.config("set", CONFIG, env=self.env)
        self.assertEqual(code, 0)
        self.assertIn("writing both", out)
        self.assertEqual((self.v2_value(), self.v3_value()), (CONFIG, CONFIG))

    @defer.inlineCallbacks
    def test_auto_set_on_an_empty_etcd_writes_v2(self):
        code, out, _err = yield self.config("set", CONFIG, env=self.env)
        self.assertEqual(code, 0)
        self.assertIn("writing v2", out)
        self.assertEqual((self.v2_value(), self.v3_value()), (CONFIG, None))


class NoV2EtcdTests(unittest.TestCase, Runner):
    timeout = 60

    @defer.inlineCallbacks
    def test_auto_uses_v3_and_v2_fails_clearly(self):
        server = start_etcd_for_test(self, enable_v2=False)
        env = {"FLANNELD_ETCD_ENDPOINTS": server.url}
        code, out, err = yield self.config("set", CONFIG, env=env)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("etcd serves no v2; writing v3", out)
        self.assertEqual(raw_kv(server, "/coreos.com/network/config")["value"], CONFIG)
        code, out, err = yield self.config("get", env=env)
        self.assertEqual((code, out), (0, CONFIG + "\n"))
        self.assertIn("only in the v3 keyspace", err)
        code, out, err = yield self.config("get", "--etcd-api=v2", env=env)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("flannel-tw config: etcd: etcd answered HTTP 404", err)
