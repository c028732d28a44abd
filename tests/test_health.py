"""
/healthz and /readyz over real HTTP on loopback, driven by a real etcd that goes away
and comes back; systemd's READY=1 on a real AF_UNIX datagram socket, in-process and
from ``twistd -n flannel`` in a lab namespace, with a clean SIGTERM stop.
"""
import json
import os
import shutil
import tempfile
import signal
import socket
import sys
import time

import treq
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import server as web_server

from flannel_tw import daemon as daemon_mod
from flannel_tw.health import health_root
from flannel_tw.sdnotify import sd_notify, sd_status
from flannel_tw.testing.etcd import start_etcd_for_test

from tests.test_faults import CONFIG, DaemonHarness, sleep
from tests.test_subnet_manager import wait_until


def notify_socket(path_or_name):
    """A bound, non-blocking AF_UNIX datagram socket (a filesystem path or '@abstract')."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + path_or_name[1:] if path_or_name.startswith("@") else path_or_name)
    sock.setblocking(False)
    return sock


def received(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode("utf-8"))
        except BlockingIOError:
            return out


class HealthHTTPTests(DaemonHarness, unittest.TestCase):
    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        self.server = start_etcd_for_test(self)

    def listen(self, daemon):
        site = web_server.Site(health_root(daemon))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:%d" % port.getHost().port

    @defer.inlineCallbacks
    def get(self, path):
        """Deferred (status, body bytes) from a fresh connection."""
        resp = yield treq.get(self.base + path, persistent=False)
        body = yield resp.content()
        return resp.code, body

    @defer.inlineCallbacks
    def healthz(self):
        code, body = yield self.get("/healthz")
        return code, json.loads(body)

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
        yield wait_until(lambda: not d.health()["etcd_ok"], timeout=5)
        code, body = yield self.healthz()
        self.assertEqual(code, 503)
        self.assertFalse(body["etcd_ok"])
        self.assertGreater(body["etcd_answered_ago"], 1.0)
        self.assertEqual(body["lease"], str(d.lease.subnet))  # still ours, etcd is the issue
        # readiness is about start-up (subnet.env written), not etcd
        self.assertEqual((yield self.get("/readyz")), (200, b"flanneld is ready"))

        self.server.start()
        yield wait_until(lambda: d.health()["healthy"], timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)

    @defer.inlineCallbacks
    def test_lease_lost_is_unhealthy_until_reacquired(self):
        self.server.put_config(CONFIG)
        d = self.run_daemon(self.make_daemon(self.server.endpoints))
        self.listen(d)
        yield self.running(d)
        # hold re-acquisition (etcd refuses the create) so that the lost lease shows
        d.keeper._manager = _Refusing(d.keeper._manager)
        self.server.v2_delete(self.key(d.lease.subnet))
        yield wait_until(lambda: d.keeper.state in ("reacquiring", "retrying")
                         and d.keeper.state != "held", timeout=10)
        yield wait_until(lambda: d.keeper._manager.refused >= 1, timeout=10)
        code, body = yield self.healthz()
        self.assertEqual(code, 503, body)
        self.assertIn(body["keeper"], ("reacquiring", "retrying"))
        self.assertTrue(body["lease_lost"])
        d.keeper._manager.refusing = False
        yield wait_until(lambda: d.keeper.state == "held", timeout=20)
        code, body = yield self.healthz()
        self.assertEqual(code, 200, body)


class _Refusing:
    """Wraps a subnet manager; acquire_lease fails while C{refusing}."""

    def __init__(self, manager):
        self._manager = manager
        self.refusing = True
        self.refused = 0

    def acquire_lease(self, *a, **kw):
        if self.refusing:
            self.refused += 1
            return defer.fail(RuntimeError("test: etcd refuses the create"))
        return self._manager.acquire_lease(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._manager, name)


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


class TwistdNotifyTests(unittest.TestCase):
    """``twistd -n flannel`` as a process in a lab namespace: READY=1, then SIGTERM."""

    timeout = 90

    def test_ready_after_subnet_env_and_clean_sigterm(self):
        from tests.test_process import CONFIG as LAB_CONFIG, _require_lab
        from flannel_tw.lab import run as labrun
        from flannel_tw.lab.topology import Lab

        _require_lab()
        lab = Lab()
        self.addCleanup(lab.teardown)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(workdir, "h1"))
        lab.add_switch()
        lab.add_host(1)
        etcd_url = labrun.start_etcd(lab, workdir, LAB_CONFIG)
        short = tempfile.mkdtemp(prefix="ftw-")  # sun_path is 108 bytes at most
        self.addCleanup(shutil.rmtree, short, True)
        path = os.path.join(short, "notify")  # a path socket crosses network namespaces
        sock = notify_socket(path)
        self.addCleanup(sock.close)
        env = labrun._child_env()
        env["NOTIFY_SOCKET"] = path
        log = os.path.join(workdir, "h1.out")
        subnet_file = labrun.subnet_file(workdir, 1)
        proc = lab.spawn(lab.host_ns(1), labrun.daemon_argv(workdir, 1, etcd_url,
                                                            lab.host_ip(1)),
                         log, env=env, cwd=workdir)
        deadline = time.monotonic() + 40
        got = []
        while "READY=1" not in got:
            got.extend(received(sock))
            if "READY=1" in got:
                exists_at_ready = os.path.exists(subnet_file)
            self.assertIsNone(proc.poll(), "daemon exited:\n%s" % open(log).read())
            self.assertLess(time.monotonic(), deadline, "no READY=1:\n%s" % open(log).read())
            time.sleep(0.05)
        self.assertEqual(got[-1], "READY=1")
        self.assertEqual(got[0], "STATUS=waiting for network config at %s/coreos.com/network/"
                                 "config" % etcd_url)
        self.assertRegex(got[-2], r"^STATUS=running: subnet 10\.7\.\d+\.0/24 via alloc$")
        self.assertTrue(exists_at_ready)
        subnet = open(subnet_file).read().split("FLANNEL_SUBNET=")[1].split("\n")[0]
        key = "/coreos.com/network/subnets/%s.0-24" % subnet.rsplit(".", 1)[0]

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        self.assertIn(code, (0, -signal.SIGTERM))
        daemon_log = open(os.path.join(workdir, "h1.log")).read()
        self.assertIn("Exiting cleanly; the lease and the data plane stay in place", daemon_log)
        self.assertNotIn("Traceback", daemon_log)
        code = ("import json, sys, urllib.request as u; "
                "print(u.urlopen(sys.argv[1], timeout=5).read().decode())")
        out = lab.exec(lab.switch_ns, [sys.executable, "-c", code,
                                       etcd_url + "/v2/keys" + key]).stdout
        node = json.loads(out)["node"]
        self.assertEqual(node["value"], '{"PublicIP":"%s"}' % lab.host_ip(1))
        self.assertGreater(node["ttl"], 86000)
        self.assertTrue(os.path.exists(subnet_file))
