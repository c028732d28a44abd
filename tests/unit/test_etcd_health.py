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
from flannel_tw.observe.etcdprobe import EtcdProbe
from flannel_tw.observe.status import health_body
from flannel_tw.testing.fakes import FakeSubnetManager

IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500)


class ProbeTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.probe_ = EtcdProbe(self.clock, self.manager, interval=30.0)
        self.probe_.answered_at = 0.0

    def probe(self, failure):
        self.clock.advance(10)
        d = self.probe_.probe()
        _name, _args, pending = self.manager.next("get_network_config")
        pending.errback(failure)
        self.successResultOf(d)
        return self.probe_.answered_at

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

    def test_probes_every_interval_from_start_until_stopped(self):
        self.probe_.answered_at = None
        self.assertIsNone(self.probe_.answered_ago())
        self.clock.advance(5)
        self.probe_.start()
        self.assertEqual(self.probe_.answered_ago(), 0.0)
        self.clock.advance(30)
        self.assertEqual([e[0] for e in self.manager.events], ["get_network_config"])
        self.assertEqual(self.probe_.answered_ago(), 30.0)
        self.probe_.stop()
        self.clock.advance(60)
        self.assertEqual(len(self.manager.events), 1)


class WatchSilenceTests(unittest.TestCase):
    """/healthz fails while the lease watch in flight has been silent for longer than
    etcd_stale_after (the client would have checked its member well before)."""

    def test_a_silent_watch_is_judged(self):
        class Client:
            silence = None
            error_counts = {}

            def watch_silence(self):
                return self.silence

        daemon = daemon_mod.FlannelDaemon(task.Clock(), FakeSubnetManager(), IFACE,
                                          daemon_mod.DaemonSettings(etcd_stale_after=90.0),
                                          notify=lambda _m: None, exit=lambda _c: None)
        daemon.etcd_client = client = Client()
        for silence, ok in ((None, True), (0.0, True), (89.9, True), (90.1, False)):
            client.silence = silence
            health = health_body(daemon.status())
            self.assertEqual((health["watch_ok"], health["watch_silent_for"]), (ok, silence))
            if not ok:
                self.assertFalse(health["healthy"])
