"""
The daemon's judgement of etcd for /healthz, on a task.Clock with a fake subnet manager:
what counts as "etcd answers" for the periodic probe, and a watch that has been silent
for longer than the stale window.
"""
from ipaddress import IPv4Address

from twisted.internet import task
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw.model.config import ConfigError
from flannel_tw.etcd.errors import EtcdError, EtcdMemberError, EtcdUnavailable, KeyNotFound
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.testing.fakes import FakeSubnetManager

IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500)


class ProbeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.daemon = daemon_mod.FlannelDaemon(self.clock, self.manager, IFACE,
                                               daemon_mod.DaemonSettings(),
                                               notify=lambda _m: None, exit=lambda _c: None)
        self.daemon.etcd_ok_at = 0.0

    def probe(self, failure):
        self.clock.advance(10)
        d = self.daemon._probe_etcd()
        _name, _args, pending = self.manager.next("get_network_config")
        pending.errback(failure)
        self.successResultOf(d)
        return self.daemon.etcd_ok_at

    def test_an_answer_from_etcd_counts(self):
        self.assertEqual(self.probe(KeyNotFound(100, "Key not found", "/c", 3)), 10)
        self.assertEqual(self.probe(ConfigError("no Network")), 20)
        self.assertEqual(self.probe(EtcdError(110, "Unauthorized", "", 0)), 30)

    def test_a_member_without_leader_does_not_count(self):
        # a client without fail-over would hand these up as plain etcd errors
        self.assertEqual(self.probe(EtcdError(300, "Raft Internal Error", "no leader", 0)), 0)
        self.assertEqual(self.probe(EtcdError(301, "During Leader Election", "", 0)), 0)
        self.assertEqual(self.probe(EtcdMemberError("HTTP 503", status=503)), 0)
        self.assertEqual(self.probe(EtcdUnavailable(
            {"http://a:1": EtcdMemberError("no leader", status=500, code=300)})), 0)


class WatchSilenceTests(unittest.TestCase):
    """/healthz fails while the lease watch in flight has been silent for longer than
    etcd_stale_after (the client would have checked its member well before)."""

    def test_a_silent_watch_is_judged(self):
        class Client:
            silence = None

            def watch_silence(self):
                return self.silence

        daemon = daemon_mod.FlannelDaemon(task.Clock(), FakeSubnetManager(), IFACE,
                                          daemon_mod.DaemonSettings(etcd_stale_after=90.0),
                                          notify=lambda _m: None, exit=lambda _c: None)
        daemon.etcd_client = client = Client()
        for silence, ok in ((None, True), (0.0, True), (89.9, True), (90.1, False)):
            client.silence = silence
            health = daemon.health()
            self.assertEqual((health["watch_ok"], health["watch_silent_for"]), (ok, silence))
            if not ok:
                self.assertFalse(health["healthy"])
