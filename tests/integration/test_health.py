"""/healthz and /readyz over real HTTP on loopback, driven by a real etcd that goes away
and comes back; systemd's READY=1 on a real AF_UNIX datagram socket, in-process and
from ``twistd -n flannel`` in a lab namespace, with a clean SIGTERM stop."""

import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.host.sdnotify import sd_notify, sd_status
from flannel_tw.testing.etcd import start_etcd_for_test
from flannel_tw.testing.harness import CONFIG, CountingManager, DaemonHarness, sleep
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.health_client import HealthHTTPClient, notify_socket, received
from flannel_tw.observe.status import health_body


class HealthHTTPTests(HealthHTTPClient, DaemonHarness, unittest.TestCase):
    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        self.server = start_etcd_for_test(self)

    @defer.inlineCallbacks
    def test_healthz_and_readyz_follow_config_lease_and_etcd(self):
        d = self.run_daemon(self.make_daemon(self.server.endpoints, etcd_probe_interval=0.2,
                                             etcd_stale_after=1.0))
        self.listen(d)
        yield wait_until(lambda: d._last_config_error is not None)
        code, body = yield self.healthz()
        self.assertEqual(code, 503)
        self.assertEqual((body["healthy"], body["phase"], body["lease"]),
                         (False, "waiting-config", None))
        self.assertEqual((yield self.get("/readyz")), (503, b"flanneld is not ready yet"))

        self.server.put_config(CONFIG)
        yield self.running(d)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)
        self.assertTrue(body["healthy"] and body["etcd_ok"])
        self.assertEqual(body["lease"], str(d.lease.subnet))
        self.assertEqual(body["backend"], "recording")
        self.assertEqual(body["keeper"], "held")
        for field in ("last_renewal_at", "last_watch_event_at", "etcd_answered_ago",
                      "public_ip", "peers", "watch_failures"):
            self.assertIn(field, body)
        self.assertEqual((yield self.get("/readyz")), (200, b"flanneld is ready"))
        self.assertTrue(os.path.exists(self.subnet_file))
        self.server.v2_put("/coreos.com/network/subnets/10.5.250.0-24",
                           '{"PublicIP":"192.0.2.250"}', ttl=600)
        yield wait_until(lambda: d.watcher.last_event_at is not None)
        code, body = yield self.healthz()
        self.assertEqual((code, body["peers"]), (200, 1))
        self.assertIsNotNone(body["last_watch_event_at"])

        self.server.kill()
        yield wait_until(lambda: not health_body(d.status())["etcd_ok"], timeout=5)
        code, body = yield self.healthz()
        self.assertEqual(code, 503)
        self.assertFalse(body["etcd_ok"])
        self.assertGreater(body["etcd_answered_ago"], 1.0)
        self.assertEqual(body["lease"], str(d.lease.subnet))  # still ours, etcd is the issue
        # readiness is about start-up (subnet.env written), not etcd
        self.assertEqual((yield self.get("/readyz")), (200, b"flanneld is ready"))

        self.server.start()
        yield wait_until(lambda: health_body(d.status())["healthy"], timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)

    @defer.inlineCallbacks
    def test_lease_lost_is_unhealthy_until_reacquired(self):
        self.server.put_config(CONFIG)
        d = self.run_daemon(self.make_daemon(self.server.endpoints,
                                             manager_class=_Refusing))
        self.listen(d)
        yield self.running(d)
        # hold re-acquisition (etcd refuses the create) so that the lost lease shows
        d.manager.refusing = True
        self.server.v2_delete(self.key(d.lease.subnet))
        yield wait_until(lambda: d.keeper.state in ("reacquiring", "lost"), timeout=10)
        yield wait_until(lambda: d.manager.refused >= 1, timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 503, body)
        self.assertIn(body["keeper"], ("reacquiring", "lost"))
        self.assertTrue(body["lease_lost"])
        d.manager.refusing = False
        yield wait_until(lambda: d.keeper.state == "held", timeout=20)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)


class _Refusing(CountingManager):
    """The real subnet manager; acquire_lease fails while C{refusing}."""

    def __init__(self, *a, **kw):
        CountingManager.__init__(self, *a, **kw)
        self.refusing = False
        self.refused = 0

    def acquire_lease(self, *a, **kw):
        if self.refusing:
            self.refused += 1
            return defer.fail(RuntimeError("test: etcd refuses the create"))
        return CountingManager.acquire_lease(self, *a, **kw)


class NotifyTests(DaemonHarness, unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def _run_with_socket(self, address):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        sock = notify_socket(address)
        self.addCleanup(sock.close)
        env_at_notify = []

        def notify(state):
            env_at_notify.append(os.path.exists(self.subnet_file))
            return sd_notify(state, environ={"NOTIFY_SOCKET": address})
        d = self.make_daemon(server.endpoints, notify=notify)
        d._status = lambda text: sd_status(text, environ={"NOTIFY_SOCKET": address})
        self.run_daemon(d)
        yield self.running(d)
        yield sleep(0.1)
        self.assertEqual(received(sock), [
            "STATUS=waiting for network config at %s/coreos.com/network/config" % server.url,
            "STATUS=acquiring lease in 10.5.0.0/16 (recording backend)",
            "STATUS=running: subnet %s via recording" % d.lease.subnet,
            "READY=1"])
        self.assertEqual(env_at_notify, [True])  # READY=1 only after subnet.env exists

    @defer.inlineCallbacks
    def test_status_while_waiting_names_the_cause(self):
        """STATUS= on a real socket while etcd has no config: where, then why."""
        server = start_etcd_for_test(self)
        short = tempfile.mkdtemp(prefix="ftw-")
        self.addCleanup(shutil.rmtree, short, True)
        address = os.path.join(short, "notify")
        sock = notify_socket(address)
        self.addCleanup(sock.close)
        d = self.make_daemon(server.endpoints)
        d._status = lambda text: sd_status(text, environ={"NOTIFY_SOCKET": address})
        self.run_daemon(d)
        got = []

        def waited():
            got.extend(received(sock))
            return len(got) >= 2
        yield wait_until(waited)
        where = "%s/coreos.com/network/config" % server.url
        self.assertEqual(got[0], "STATUS=waiting for network config at " + where)
        self.assertTrue(got[1].startswith("STATUS=waiting for network config at %s: 100: Key "
                                          "not found" % where), got)
        self.assertEqual(self.notified, [])

    def test_ready_on_a_path_socket(self):
        short = tempfile.mkdtemp(prefix="ftw-")  # sun_path is 108 bytes at most
        self.addCleanup(shutil.rmtree, short, True)
        return self._run_with_socket(os.path.join(short, "notify"))

    def test_ready_on_an_abstract_socket(self):
        return self._run_with_socket("@flannel-tw-test-%d-%d" % (os.getpid(), id(self)))

    @defer.inlineCallbacks
    def test_injected_notify_keeps_status_away_from_notify_socket(self):
        """A daemon given its own notify (tests, embedders) sends no STATUS= to the
        NOTIFY_SOCKET of the process; with the default notify both go there."""
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        short = tempfile.mkdtemp(prefix="ftw-")
        self.addCleanup(shutil.rmtree, short, True)
        address = os.path.join(short, "notify")
        sock = notify_socket(address)
        self.addCleanup(sock.close)
        self.patch(os, "environ", dict(os.environ, NOTIFY_SOCKET=address))
        d = self.run_daemon(self.make_daemon(server.endpoints))
        yield self.running(d)
        yield sleep(0.1)
        self.assertEqual((received(sock), self.notified), ([], ["READY=1"]))
        d2 = self.make_daemon(server.endpoints, subnet_file=self.subnet_file + "2",
                              notify=sd_notify)
        self.run_daemon(d2)
        yield self.running(d2)
        yield sleep(0.1)
        got = received(sock)
        self.assertEqual(got[-2:], ["STATUS=running: subnet %s via recording" % d2.lease.subnet,
                                    "READY=1"])

    def test_no_listener_is_not_fatal(self):
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": os.path.join(self.dir, "x")}))
        self.assertFalse(sd_notify("READY=1", {}))
