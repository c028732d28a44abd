"""flannel_tw.tools.migrate (``flannel-tw etcd migrate``) against a real etcd 3.5 serving
both keyspaces: the config and the leases copied from v2 to v3 (a TTL lease with a new
etcd lease of its remaining TTL, a reservation without one, the value in flanneld
v0.20's form), hostile keys skipped and named, create-only (a v3 key already there left
alone, a second run copies nothing), a different v3 config refused with nothing written,
and the command as a process."""

import base64
import io
import json
import os
import signal
import subprocess
import sys

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from flannel_tw.tools import migrate
from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing.etcd import EtcdHTTPError, shared_etcd, unique_prefix
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.v3raw import raw_kv, raw_put, v3

CONFIG = '{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan"}}'
VXLAN = ('{"PublicIP":"192.0.2.7","BackendType":"vxlan",'
         '"BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff"}}')
VXLAN_V3 = ('{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}')


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


def _b64(text):
    return base64.b64encode(text.encode()).decode()


class FollowTests(unittest.TestCase):
    """--follow: changes mirrored both ways within seconds, never back again."""

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.env = {"FLANNELD_ETCD_ENDPOINTS": self.server.url,
                    "FLANNELD_ETCD_PREFIX": self.prefix}
        self.server.put_config(CONFIG, self.prefix)

    def sub(self, name):
        return "%s/subnets/%s" % (self.prefix, name)

    def v2node(self, name):
        try:
            return self.server.v2_get(self.sub(name))["node"]
        except EtcdHTTPError as e:
            if e.status == 404:
                return None
            raise

    def v3ttl(self, name):
        kv = raw_kv(self.server, self.sub(name))
        if kv is None or "lease" not in kv:
            return None
        return int(v3(self.server, "/v3/lease/timetolive", {"ID": kv["lease"]})["TTL"])

    @defer.inlineCallbacks
    def start(self):
        self.out, self.err = io.StringIO(), io.StringIO()
        followers = []
        self.done = migrate.run(reactor, ["migrate", "--follow"], self.out, self.err,
                                environ=dict(self.env), started=followers.append)
        self.addCleanup(self.stop)
        yield wait_until(lambda: followers or self.done.called)
        self.assertFalse(self.done.called, self.err.getvalue())
        self.follower = followers[0]

    @defer.inlineCallbacks
    def stop(self):
        if not self.done.called:
            self.follower.stop()
        code = yield self.done
        return code

    @defer.inlineCallbacks
    def test_v2_changes_show_up_in_v3(self):
        self.server.v2_put(self.sub("10.7.1.0-24"), VXLAN, ttl=600)
        yield self.start()
        self.assertIsNotNone(raw_kv(self.server, self.sub("10.7.1.0-24")))   # the copy

        self.server.v2_put(self.sub("10.7.2.0-24"), '{"PublicIP":"192.0.2.2"}', ttl=300)
        yield wait_until(lambda: raw_kv(self.server, self.sub("10.7.2.0-24")), timeout=5)
        self.assertEqual(raw_kv(self.server, self.sub("10.7.2.0-24"))["value"],
                         '{"PublicIP":"192.0.2.2","PublicIPv6":null}')
        self.assertTrue(290 <= self.v3ttl("10.7.2.0-24") <= 300)

        self.server.v2_put(self.sub("10.7.1.0-24"), VXLAN, ttl=900)        # renewal
        yield wait_until(lambda: (self.v3ttl("10.7.1.0-24") or 0) > 800, timeout=5)

        self.server.v2_delete(self.sub("10.7.1.0-24"))
        yield wait_until(lambda: raw_kv(self.server, self.sub("10.7.1.0-24")) is None,
                         timeout=5)

        self.server.v2_put(self.sub("x10.7.3.0-24"), '{"PublicIP":"192.0.2.3"}', ttl=300)
        yield wait_until(lambda: "skipped %r in v2 (bad-key)" % self.sub("x10.7.3.0-24")
                         in self.out.getvalue(), timeout=5)
        self.assertIsNone(raw_kv(self.server, self.sub("x10.7.3.0-24")))
        # rewritten with the same fault (a renewal): not said again
        self.server.v2_put(self.sub("x10.7.3.0-24"), '{"PublicIP":"192.0.2.3"}', ttl=300)

        # no loop: nothing more is written on either side
        v2index = self.v2node("10.7.2.0-24")["modifiedIndex"]
        v3rev = raw_kv(self.server, self.sub("10.7.2.0-24"))["mod_revision"]
        yield task.deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(self.v2node("10.7.2.0-24")["modifiedIndex"], v2index)
        self.assertEqual(raw_kv(self.server, self.sub("10.7.2.0-24"))["mod_revision"], v3rev)
        self.assertEqual(self.follower.counts, {"mirrored": 2, "deleted": 1, "left": 0,
                                                "skipped": 1})
        code = yield self.stop()
        self.assertEqual(code, 0)
        self.assertIn("stopped following: 2 written, 1 deleted", self.out.getvalue())
        self.assertEqual(self.out.getvalue().count("skipped %r in v2" % self.sub("x10.7.3.0-24")),
                         1)

    @defer.inlineCallbacks
    def test_v3_changes_show_up_in_v2(self):
        raw_put(self.server, self.sub("10.7.9.0-24"), '{"PublicIP":"192.0.2.9","PublicIPv6":null}')
        yield self.start()
        node = self.v2node("10.7.9.0-24")         # a v3-only key at the start
        self.assertEqual(node["value"], '{"PublicIP":"192.0.2.9"}')
        self.assertNotIn("ttl", node)

        lease = v3(self.server, "/v3/lease/grant", {"TTL": 500})["ID"]
        raw_put(self.server, self.sub("10.7.4.0-24"), VXLAN_V3, lease=lease)
        yield wait_until(lambda: self.v2node("10.7.4.0-24"), timeout=5)
        node = self.v2node("10.7.4.0-24")
        self.assertEqual(node["value"], VXLAN)
        self.assertTrue(490 <= node["ttl"] <= 500, node)

        lease = v3(self.server, "/v3/lease/grant", {"TTL": 900})["ID"]    # v0.20's renewal
        raw_put(self.server, self.sub("10.7.4.0-24"), VXLAN_V3, lease=lease)
        yield wait_until(lambda: self.v2node("10.7.4.0-24")["ttl"] > 800, timeout=5)

        v3(self.server, "/v3/kv/deleterange", {"key": _b64(self.sub("10.7.4.0-24"))})
        yield wait_until(lambda: self.v2node("10.7.4.0-24") is None, timeout=5)

        v2index = self.v2node("10.7.9.0-24")["modifiedIndex"]
        v3rev = raw_kv(self.server, self.sub("10.7.9.0-24"))["mod_revision"]
        yield task.deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(self.v2node("10.7.9.0-24")["modifiedIndex"], v2index)
        self.assertEqual(raw_kv(self.server, self.sub("10.7.9.0-24"))["mod_revision"], v3rev)
        self.assertEqual(self.follower.counts, {"mirrored": 3, "deleted": 1, "left": 0,
                                                "skipped": 0})

    @defer.inlineCallbacks
    def test_newer_value_in_other_keyspace_not_overwritten(self):
        """A v2 change arriving after the v3 key changed on its own (not through the
        follower) leaves v3 alone, and so does a v2 delete."""
        self.server.v2_put(self.sub("10.7.5.0-24"), VXLAN, ttl=600)
        yield self.start()
        synced = raw_kv(self.server, self.sub("10.7.5.0-24"))["mod_revision"]
        self.assertEqual(self.follower.synced["10.7.5.0-24"]["v3"], int(synced))
        # the v3 key changes, and the follower has not seen that event yet when a v2
        # change for the same key comes in: hold the lock meanwhile
        yield self.follower.lock.acquire()
        newer = '{"PublicIP":"192.0.2.55","PublicIPv6":null}'
        revision = raw_put(self.server, self.sub("10.7.5.0-24"), newer)
        self.server.v2_put(self.sub("10.7.5.0-24"), '{"PublicIP":"192.0.2.56"}', ttl=600)
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.follower.lock.release()
        yield wait_until(lambda: self.follower.counts["left"] >= 1, timeout=5)
        kv = raw_kv(self.server, self.sub("10.7.5.0-24"))
        self.assertEqual((kv["value"], int(kv["mod_revision"])), (newer, revision))
        self.assertIn("%s changed in v3 on its own: left alone" % self.sub("10.7.5.0-24"),
                      self.out.getvalue())

    def test_process_stops_on_sigterm(self):
        self.server.v2_put(self.sub("10.7.1.0-24"), VXLAN, ttl=600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        env.update(self.env, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flannel_tw.tools.cli", "etcd", "migrate", "--follow"],
            cwd=repo_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "following both keyspaces" in line:
                break
        self.assertIn("1 copied, 0 already there, 0 skipped as invalid\n", "".join(lines))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        self.assertEqual((proc.returncode, err), (0, ""))
        self.assertIn("stopped following: 0 written, 0 deleted", out)

    @defer.inlineCallbacks
    def test_catch_up_after_a_watch_fell_behind(self):
        """What a compacted v3 watch (or a cleared v2 index) does: the keyspace is read
        again; new and changed leases are mirrored, synced ones gone are removed, the
        unchanged ones are not rewritten."""
        self.server.v2_put(self.sub("10.7.1.0-24"), VXLAN, ttl=600)
        self.server.v2_put(self.sub("10.7.2.0-24"), '{"PublicIP":"192.0.2.2"}', ttl=600)
        yield self.start()
        yield self.follower.lock.acquire()          # the watches see nothing meanwhile
        unchanged = self.v2node("10.7.1.0-24")["modifiedIndex"]
        v3(self.server, "/v3/kv/deleterange", {"key": _b64(self.sub("10.7.2.0-24"))})
        raw_put(self.server, self.sub("10.7.8.0-24"), '{"PublicIP":"192.0.2.8","PublicIPv6":null}')
        self.follower.lock.release()
        cursor = yield self.follower._catch_up("v3")
        self.assertGreater(cursor, 0)
        self.assertIsNone(self.v2node("10.7.2.0-24"))
        self.assertEqual(self.v2node("10.7.8.0-24")["value"], '{"PublicIP":"192.0.2.8"}')
        self.assertEqual(self.v2node("10.7.1.0-24")["modifiedIndex"], unchanged)
        # the live watch then brings the same events: already in sync, nothing rewritten
        mirrored = self.v2node("10.7.8.0-24")["modifiedIndex"]
        yield task.deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(self.v2node("10.7.8.0-24")["modifiedIndex"], mirrored)
        self.assertEqual(self.follower.counts["mirrored"], 1)
