"""Tests for flannel_tw.etcd.client (StubTreq unit tests and real-etcd integration tests)

The integration tests (RealEtcdTests, PrivateEtcdTests, EtcdServerTests); the whole description is in tests/unit/test_etcd_client.py."""

import json
import socket

from twisted.internet import defer, reactor, task
from twisted.logger import capturedLogs
from twisted.trial import unittest

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.errors import EtcdUnavailable, EventIndexCleared, KeyNotFound, NodeExist
from flannel_tw.testing.etcd import (
    EtcdHTTPError, EtcdServer, shared_etcd, start_etcd_for_test, unique_prefix)
from flannel_tw.testing.netfaults import BlackHole
from flannel_tw.testing import skips


def closed_port():
    """A loopback port with nothing listening (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "http://127.0.0.1:%d" % port


class RealEtcdTests(unittest.TestCase):
    """Against a real etcd (shared by the tests, each under its own key prefix)."""

    timeout = 60

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.client = self.make_client(self.server.endpoints)

    def make_client(self, endpoints, **kw):
        kw.setdefault("request_timeout", 5)
        c = EtcdV2Client(reactor, endpoints, **kw)
        self.addCleanup(c.close)
        return c

    @defer.inlineCallbacks
    def test_set_get_create_delete_ttl(self):
        key = self.prefix + "/subnets/10.5.34.0-24"
        r = yield self.client.create(key, '{"PublicIP":"10.0.0.1"}', ttl=86400)
        self.assertEqual(r.action, "create")
        self.assertGreater(r.etcd_index, 0)
        self.assertEqual(r.node.modified_index, r.etcd_index)
        r = yield self.client.get(key, quorum=True)
        self.assertEqual(r.node.value, '{"PublicIP":"10.0.0.1"}')
        self.assertTrue(0 < r.node.ttl <= 86400)
        self.assertIsNotNone(r.node.expiration)
        yield self.assertFailure(self.client.create(key, "again"), NodeExist)
        r = yield self.client.set(key, "renewed")
        self.assertEqual(r.action, "set")
        self.assertIsNone(r.node.ttl)
        self.assertEqual(r.prev_node.value, '{"PublicIP":"10.0.0.1"}')
        r = yield self.client.get(self.prefix + "/subnets", recursive=True, quorum=True,
                                  sorted=False)
        self.assertEqual([n.key for n in r.node.nodes], [key])
        r = yield self.client.delete(key)
        self.assertEqual(r.action, "delete")
        err = yield self.assertFailure(self.client.get(key, quorum=True), KeyNotFound)
        self.assertGreater(err.index, 0)
        yield self.assertFailure(self.client.set(key, "x", prev_exist=True), KeyNotFound)

    @defer.inlineCallbacks
    def test_watch_receives_later_set(self):
        r = yield self.client.set(self.prefix + "/subnets/a", "1")
        w = self.client.watch(self.prefix + "/subnets", r.etcd_index + 1, recursive=True)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertNoResult(w)
        other = self.make_client(self.server.endpoints)
        yield other.set(self.prefix + "/subnets/b", "2", ttl=60)
        ev = yield w
        self.assertEqual((ev.action, ev.node.key, ev.node.value),
                         ("set", self.prefix + "/subnets/b", "2"))
        self.assertEqual(ev.node.ttl, 60)
        # expiry/delete events come through the same way
        w = self.client.watch(self.prefix + "/subnets/b", ev.node.modified_index + 1)
        yield other.delete(self.prefix + "/subnets/b")
        ev2 = yield w
        self.assertEqual(ev2.action, "delete")
        self.assertEqual(ev2.prev_node.value, "2")

    @defer.inlineCallbacks
    def test_watch_past_event_returns_at_once(self):
        r = yield self.client.set(self.prefix + "/k", "v")
        ev = yield self.client.watch(self.prefix + "/k", r.node.modified_index)
        self.assertEqual(ev.node.value, "v")

    @defer.inlineCallbacks
    def test_watch_cancel(self):
        w = self.client.watch(self.prefix + "/never", 10 ** 9 // 1000)
        yield task.deferLater(reactor, 0.2, lambda: None)
        w.cancel()
        yield self.assertFailure(w, defer.CancelledError)
        # The aborted connection goes away; the client still works afterwards.
        yield task.deferLater(reactor, 0.05, lambda: None)
        r = yield self.client.set(self.prefix + "/after", "ok")
        self.assertEqual(r.node.value, "ok")

    @defer.inlineCallbacks
    def test_fail_over_from_closed_port(self):
        dead = closed_port()
        c = self.make_client([dead, self.server.url])
        with capturedLogs() as events:
            r = yield c.set(self.prefix + "/fo", "x")
        self.assertEqual(r.node.value, "x")
        self.assertEqual(c.current_endpoint, self.server.url)
        self.assertTrue(any(e.get("endpoint") == dead for e in events))

    @defer.inlineCallbacks
    def test_watch_on_a_black_hole_moves_to_the_next_member(self):
        """A member that accepts and never answers (no reset: power loss, partition) is
        left after the watch timeout plus its failed /health check."""
        hole = BlackHole(self)
        c = self.make_client([hole.url, self.server.url], request_timeout=0.5,
                             watch_timeout=1.0)
        r = yield self.client.set(self.prefix + "/w/a", "1")
        start = reactor.seconds()
        w = c.watch(self.prefix + "/w", r.etcd_index + 1, recursive=True)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(hole.connections, 1)
        yield self.client.set(self.prefix + "/w/b", "2")
        w.addTimeout(10, reactor)
        ev = yield w
        self.assertEqual((ev.node.key, ev.node.value), (self.prefix + "/w/b", "2"))
        self.assertGreaterEqual(reactor.seconds() - start, 1.5)
        self.assertEqual(c.current_endpoint, self.server.url)
        self.assertEqual(hole.connections, 2)   # the watch, then the /health check

    @defer.inlineCallbacks
    def test_all_endpoints_dead(self):
        dead = [closed_port(), closed_port()]
        c = self.make_client(dead)
        err = yield self.assertFailure(c.get("/coreos.com/network/config", quorum=True),
                                       EtcdUnavailable)
        self.assertEqual(set(err.errors), set(dead))
        err = yield self.assertFailure(c.watch("/x", 1), EtcdUnavailable)

    def test_sync_helpers(self):
        key = self.prefix + "/sync"
        self.server.v2_put(key, "a", ttl=30)
        self.assertEqual(self.server.v2_get(key, quorum=True)["node"]["ttl"], 30)
        self.server.v2_delete(key)
        e = self.assertRaises(EtcdHTTPError, self.server.v2_get, key)
        self.assertEqual((e.status, e.body["errorCode"]), (404, 100))
        self.server.put_config({"Network": "10.5.0.0/16"}, prefix=self.prefix)
        self.assertEqual(json.loads(self.server.v2_get(self.prefix + "/config")["node"]["value"]),
                         {"Network": "10.5.0.0/16"})


class PrivateEtcdTests(unittest.TestCase):
    """Tests that need their own etcd (index history, restarts)."""

    timeout = 120

    def setUp(self):
        self.server = start_etcd_for_test(self)
        self.client = EtcdV2Client(reactor, self.server.endpoints, request_timeout=5)
        self.addCleanup(self.client.close)

    @defer.inlineCallbacks
    def test_event_index_cleared(self):
        r = yield self.client.set("/coreos.com/network/subnets/first", "x")
        start = r.etcd_index
        sem = defer.DeferredSemaphore(16)
        yield defer.gatherResults([
            sem.run(self.client.set, "/fill/k%d" % i, "v") for i in range(1010)
        ])
        err = yield self.assertFailure(
            self.client.watch("/coreos.com/network/subnets", start, recursive=True),
            EventIndexCleared)
        self.assertEqual(err.error_code, 401)
        self.assertGreaterEqual(err.index, start + 1010)

    @defer.inlineCallbacks
    def test_restart_keeps_data_and_wipe_clears_it(self):
        yield self.client.set("/keep", "1")
        self.server.restart()
        r = yield self.client.get("/keep")
        self.assertEqual(r.node.value, "1")
        self.server.wipe()
        yield self.assertFailure(self.client.get("/keep"), KeyNotFound)

    @defer.inlineCallbacks
    def test_watch_fails_when_etcd_goes_away(self):
        w = self.client.watch("/never", 1000)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.server.kill()
        err = yield self.assertFailure(w, EtcdUnavailable)
        self.assertEqual(list(err.errors), [self.server.url])
        self.server.start()  # same data dir and ports: the cluster is back
        r = yield self.client.set("/back", "1")
        self.assertEqual(r.node.value, "1")

    @defer.inlineCallbacks
    def test_unavailable_after_stop(self):
        url = self.server.url
        self.server.stop()
        self.server.stop()  # idempotent
        err = yield self.assertFailure(self.client.get("/k"), EtcdUnavailable)
        self.assertEqual(list(err.errors), [url])


class EtcdServerTests(unittest.TestCase):
    def test_start_failure_reports_log(self):
        skips.require_etcd()
        server = EtcdServer(extra_args=["--no-such-flag"])
        self.addCleanup(server.stop)
        e = self.assertRaises(RuntimeError, server.start, 10)
        self.assertIn("no-such-flag", str(e))
        self.assertFalse(server.running)

    def test_url_before_start(self):
        server = EtcdServer(client_port=4001)
        self.assertEqual(server.url, "http://127.0.0.1:4001")
        self.assertEqual(server.endpoints, ["http://127.0.0.1:4001"])
        server.stop()  # stopping a never-started server is fine
