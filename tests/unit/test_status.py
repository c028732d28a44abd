"""
flannel_tw.observe.status: the health judgement as a pure function of hand-built
snapshots, the /healthz body's fields, the snapshot's immutability, and
FlannelDaemon.status() before it runs.
"""
import dataclasses
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import task
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.lease.status import KeeperStatus, WatcherStatus
from flannel_tw.observe.status import DaemonStatus, Health, health_body, judge
from flannel_tw.testing.fakes import FakeSubnetManager

KEEPER = KeeperStatus(state="held", lease_ok=True, renewals=2, renewal_failures=1,
                      last_renewal_at=100.0, renewal_failing_for=None, lease_expires_in=80000.0)
WATCHER = WatcherStatus(state="watching", failures=0, resyncs=0, last_event_at=90.0,
                        peers=3, retained=0)
RUNNING = DaemonStatus(phase="running", ready=True, lease=IPv4Network("10.5.1.0/24"),
                       network=IPv4Network("10.5.0.0/16"), public_ip=IPv4Address("192.0.2.1"),
                       backend="udp", keeper=KEEPER, lease_lost=False, watcher=WATCHER,
                       etcd_answered_ago=10.0, watch_silent_for=5.0, etcd_stale_after=90.0,
                       routes=3)
FIELDS = {"healthy", "etcd_ok", "watch_ok", "watch_silent_for", "etcd_answered_ago", "keeper",
          "lease_lost", "watcher", "ready", "phase", "lease", "public_ip", "backend",
          "renewals", "last_renewal_at", "renewal_failing_for", "lease_expires_in",
          "watch_failures", "last_watch_event_at", "peers", "routes"}


class JudgeTests(unittest.TestCase):
    def test_running_with_lease_and_etcd_is_healthy(self):
        self.assertEqual(judge(RUNNING), Health(healthy=True, etcd_ok=True, watch_ok=True))

    def test_each_cause_of_ill_health(self):
        bad = {
            "not running": replace(RUNNING, phase="acquiring"),
            "no keeper": replace(RUNNING, keeper=None),
            "lease not ok": replace(RUNNING, keeper=replace(KEEPER, lease_ok=False)),
            "etcd never answered": replace(RUNNING, etcd_answered_ago=None),
            "etcd stale": replace(RUNNING, etcd_answered_ago=90.1),
            "watch stuck": replace(RUNNING, watch_silent_for=90.1),
        }
        for cause, status in bad.items():
            self.assertFalse(judge(status).healthy, cause)
        self.assertFalse(judge(bad["etcd stale"]).etcd_ok)
        self.assertEqual(judge(bad["watch stuck"])[1:], (True, False))

    def test_boundaries(self):
        self.assertTrue(judge(replace(RUNNING, etcd_answered_ago=90.0,
                                      watch_silent_for=90.0)).healthy)
        self.assertTrue(judge(replace(RUNNING, watch_silent_for=None)).healthy)   # no watch
        self.assertTrue(judge(replace(RUNNING, etcd_stale_after=5.0,
                                      etcd_answered_ago=5.0, watch_silent_for=1.0)).healthy)

    def test_watch_failures_are_reported_not_judged(self):
        status = replace(RUNNING, watcher=replace(WATCHER, failures=7, state="retrying"))
        self.assertTrue(judge(status).healthy)
        self.assertEqual(health_body(status)["watch_failures"], 7)


class BodyTests(unittest.TestCase):
    def test_fields_of_a_running_daemon(self):
        body = health_body(RUNNING)
        self.assertEqual(set(body), FIELDS)
        self.assertEqual(body, {
            "healthy": True, "etcd_ok": True, "watch_ok": True, "watch_silent_for": 5.0,
            "etcd_answered_ago": 10.0, "keeper": "held", "lease_lost": False,
            "watcher": "watching", "ready": True, "phase": "running", "lease": "10.5.1.0/24",
            "public_ip": "192.0.2.1", "backend": "udp", "renewals": 2,
            "last_renewal_at": 100.0, "renewal_failing_for": None,
            "lease_expires_in": 80000.0, "watch_failures": 0, "last_watch_event_at": 90.0,
            "peers": 3, "routes": 3})

    def test_daemon_waiting_for_config(self):
        daemon = daemon_mod.FlannelDaemon(
            task.Clock(), FakeSubnetManager(),
            ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                     public_ip=IPv4Address("192.0.2.1"), mtu=1500),
            daemon_mod.DaemonSettings(), notify=lambda _m: None, exit=lambda _c: None)
        body = health_body(daemon.status())
        self.assertEqual(set(body), FIELDS)
        self.assertEqual(
            {k: body[k] for k in ("healthy", "etcd_ok", "keeper", "lease_lost", "watcher",
                                  "lease", "backend", "renewals", "peers", "routes",
                                  "public_ip", "ready")},
            {"healthy": False, "etcd_ok": False, "keeper": None, "lease_lost": None,
             "watcher": None, "lease": None, "backend": None, "renewals": 0, "peers": 0,
             "routes": None, "public_ip": "192.0.2.1", "ready": False})


class SnapshotTests(unittest.TestCase):
    def test_frozen_and_detached(self):
        counters = {"packets_in": 1}
        errors = {"transport": 2}
        status = replace(RUNNING, backend_counters=counters, etcd_errors=errors)
        counters["packets_in"] = 99
        errors["transport"] = 99
        self.assertEqual((status.backend_counters["packets_in"], status.etcd_errors["transport"]),
                         (1, 2))
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, status, "ready", False)

        def put():
            status.skipped["bad-key"] = 1
        self.assertRaises(TypeError, put)
