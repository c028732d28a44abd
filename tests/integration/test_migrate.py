"""flannel_tw.tools.migrate (``flannel-tw etcd migrate``) against a real etcd 3.5 serving
both keyspaces: the config and the leases copied from v2 to v3 (a TTL lease with a new
etcd lease of its remaining TTL, a reservation without one, the value in flanneld
v0.20's form), hostile keys skipped and named, create-only (a v3 key already there left
alone, a second run copies nothing), a different v3 config refused with nothing written,
and the command as a process."""

import io
import json
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw.tools import migrate
from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing.etcd import shared_etcd, unique_prefix
from flannel_tw.testing.v3raw import raw_kv, raw_put, v3

CONFIG = '{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan"}}'
VXLAN = '{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff"}}'
VXLAN_V3 = ('{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff"}}')


class MigrateTests(unittest.TestCase):
    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.env = {"FLANNELD_ETCD_ENDPOINTS": self.server.url,
                    "FLANNELD_ETCD_PREFIX": self.prefix}

    @defer.inlineCallbacks
    def migrate(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = yield migrate.run(reactor, ["migrate"] + list(argv), out, err,
                                 environ=dict(self.env))
        return code, out.getvalue(), err.getvalue()

    def sub(self, name):
        return "%s/subnets/%s" % (self.prefix, name)

    def ttl_left(self, kv):
        answer = v3(self.server, "/v3/lease/timetolive", {"ID": kv["lease"]})
        return int(answer["TTL"])

    @defer.inlineCallbacks
    def test_copy_then_nothing_to_do(self):
        self.server.put_config(CONFIG, self.prefix)
        self.server.v2_put(self.sub("10.7.3.0-24"), VXLAN, ttl=600)
        self.server.v2_put(self.sub("10.7.4.0-24"), '{"PublicIP":"192.0.2.8"}')   # reservation
        self.server.v2_put(self.sub("x10.7.3.0-24"), '{"PublicIP":"192.0.2.66"}', ttl=600)
        self.server.v2_put(self.sub("10.7.5.0-24"), '{"PublicIP":"127.0.0.1"}', ttl=600)

        code, out, err = yield self.migrate()
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("config: copied to v3 (%s/config" % self.prefix, out)
        self.assertIn("skipped %r (bad-key)" % self.sub("x10.7.3.0-24"), out)
        self.assertIn("skipped %r (public-ip)" % self.sub("10.7.5.0-24"), out)
        self.assertTrue(out.endswith("2 copied, 0 already there, 2 skipped as invalid\n"), out)

        self.assertEqual(raw_kv(self.server, self.prefix + "/config")["value"], CONFIG)
        self.assertNotIn("lease", raw_kv(self.server, self.prefix + "/config"))
        leased = raw_kv(self.server, self.sub("10.7.3.0-24"))
        self.assertEqual(leased["value"], VXLAN_V3)
        self.assertGreaterEqual(self.ttl_left(leased), 590)
        self.assertLessEqual(self.ttl_left(leased), 600)
        reserved = raw_kv(self.server, self.sub("10.7.4.0-24"))
        self.assertEqual(reserved["value"], '{"PublicIP":"192.0.2.8","PublicIPv6":null}')
        self.assertNotIn("lease", reserved, "a reservation has no etcd lease")
        self.assertIsNone(raw_kv(self.server, self.sub("x10.7.3.0-24")))
        self.assertIsNone(raw_kv(self.server, self.sub("10.7.5.0-24")))

        code, out, err = yield self.migrate()
        self.assertEqual((code, err), (0, ""))
        self.assertIn("config: already in v3", out)
        self.assertTrue(out.endswith("0 copied, 2 already there, 2 skipped as invalid\n"), out)
        self.assertEqual(raw_kv(self.server, self.sub("10.7.3.0-24"))["mod_revision"],
                         leased["mod_revision"], "the second run writes nothing")

    @defer.inlineCallbacks
    def test_v3_key_already_there_left_alone(self):
        self.server.put_config(CONFIG, self.prefix)
        self.server.v2_put(self.sub("10.7.3.0-24"), VXLAN, ttl=600)
        self.server.v2_put(self.sub("10.7.6.0-24"), '{"PublicIP":"192.0.2.9"}', ttl=600)
        newer = '{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"udp"}'
        revision = raw_put(self.server, self.sub("10.7.3.0-24"), newer)
        code, out, err = yield self.migrate()
        self.assertEqual((code, err), (0, ""))
        self.assertIn("%s already in v3, left alone" % self.sub("10.7.3.0-24"), out)
        self.assertTrue(out.endswith("1 copied, 1 already there, 0 skipped as invalid\n"), out)
        kv = raw_kv(self.server, self.sub("10.7.3.0-24"))
        self.assertEqual((kv["value"], int(kv["mod_revision"])), (newer, revision))
        self.assertIsNotNone(raw_kv(self.server, self.sub("10.7.6.0-24")))

    @defer.inlineCallbacks
    def test_different_v3_config_refused_nothing_written(self):
        self.server.put_config(CONFIG, self.prefix)
        self.server.v2_put(self.sub("10.7.3.0-24"), VXLAN, ttl=600)
        other = '{"Network": "10.8.0.0/16"}'
        raw_put(self.server, self.prefix + "/config", other)
        code, out, err = yield self.migrate()
        self.assertEqual(code, 1)
        self.assertIn("already holds a different network config", err)
        self.assertIn("nothing written", err)
        self.assertNotIn("copied", out)
        self.assertEqual(raw_kv(self.server, self.prefix + "/config")["value"], other)
        self.assertIsNone(raw_kv(self.server, self.sub("10.7.3.0-24")))

    @defer.inlineCallbacks
    def test_same_v3_config_accepted(self):
        self.server.put_config(CONFIG, self.prefix)
        raw_put(self.server, self.prefix + "/config",
                '{"Backend":{"Type":"vxlan"},"Network":"10.7.0.0/16"}')
        self.server.v2_put(self.sub("10.7.3.0-24"), VXLAN, ttl=600)
        code, out, err = yield self.migrate()
        self.assertEqual((code, err), (0, ""))
        self.assertIn("config: already in v3", out)
        self.assertTrue(out.endswith("1 copied, 0 already there, 0 skipped as invalid\n"), out)

    def test_as_process_with_flags(self):
        self.server.put_config(CONFIG, self.prefix)
        self.server.v2_put(self.sub("10.7.3.0-24"), VXLAN, ttl=600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        proc = subprocess.run(
            [sys.executable, "-m", "flannel_tw.tools.cli", "etcd", "migrate",
             "-etcd-endpoints=" + self.server.url, "--etcd-prefix", self.prefix],
            cwd=repo_root(), env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        self.assertIn("1 copied, 0 already there, 0 skipped as invalid", proc.stdout)
        self.assertEqual(json.loads(raw_kv(self.server, self.sub("10.7.3.0-24"))["value"])
                         ["PublicIPv6"], None)
