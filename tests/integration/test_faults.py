"""The daemon against a misbehaving real etcd (a private server per test): not up at
start, killed mid-run, wiped, our lease deleted or expired, our subnet taken while we
were away, the pool exhausted, a dead endpoint in the list; and lease renewal that
follows the TTL etcd returns. A recording backend stands in for the data plane, so
"no route removed" means "no REMOVED event reached the backend"."""

import os
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import defer, reactor
from twisted.logger import LogLevel
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from flannel_tw import daemon as daemon_mod
from flannel_tw.model.config import parse_config
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.lease import keeper as keeper_mod
from flannel_tw.model.backoff import make_backoff
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.host.subnetfile import parse_env
from flannel_tw.testing.etcd import start_etcd_for_test
from flannel_tw.testing.fault_scenarios import FaultScenarios
from flannel_tw.testing.netfaults import SilenceableProxy
from flannel_tw.testing.polling import wait_until
from flannel_tw.testing.harness import (
    CONFIG, CountingManager, DaemonHarness, PREFIX, exists, free_port, logged, sleep)
from flannel_tw.testing import skips
from flannel_tw.observe.status import health_body


class EtcdFaultTests(FaultScenarios, unittest.TestCase):
    """On etcd v2: the scenarios tests/integration/test_faults_v3.py runs too (in
    FaultScenarios), then those of v2 alone (a wipe, an expiry, the pool exhausted...)."""

    api = "v2"
    lease_value = '{"PublicIP":"192.0.2.%d"}'

    def put_config(self, server):
        server.put_config(CONFIG)

    def put_lease(self, server, key, value):
        return server.v2_put(key, value, ttl=600)

    def stored(self, server, key):
        return server.v2_get(key)["node"]["value"]

    @defer.inlineCallbacks
    def test_etcd_not_up_at_start_waits_with_backoff_then_runs(self):
        server, d, refused = yield self.daemon_before_etcd()
        self.assertIn(server.url, refused)
        self.assertEqual(len(logged(self.logs, "etcd endpoint", LogLevel.warn)), 1)

        server.start()
        yield wait_until(lambda: "100: Key not found" in (d._last_config_error or ""))
        server.put_config(CONFIG)
        yield self.running(d)
        self.assertTrue(os.path.exists(self.subnet_file))
        self.assertEqual(self.notified, ["READY=1"])
        self.assertEqual(self.exits, [])
        causes = logged(self.logs, "Couldn't fetch network config", LogLevel.error)
        self.assertEqual(len(causes), 2, causes)  # refused once, key not found once
        self.assertEqual(len(logged(self.logs, "answers again", LogLevel.info)), 1)

    def test_etcd_killed_mid_run_watch_resumes_no_route_removed_no_tight_loop(self):
        return self.etcd_killed_mid_run()

    @defer.inlineCallbacks
    def test_etcd_wiped_lease_recreated_with_same_subnet(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        for i in range(15):  # move the index well past where a fresh cluster starts
            server.v2_put("/filler/%d" % i, "x")
        server.v2_put(PREFIX + "/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.250"}', ttl=600)
        d = self.run_daemon(self.make_daemon(server.endpoints))
        yield self.running(d)
        subnet = d.lease.subnet
        backend = self.backends[0]
        cursor = d.watcher.cursor
        self.assertGreater(cursor, 15)

        server.wipe()
        # an operator restores the config; the index is still far below our cursor, where
        # an etcd v2 watch would wait silently for ever
        server.put_config(CONFIG)
        yield wait_until(lambda: exists(server, self.key(subnet)), timeout=30)
        node = server.v2_get(self.key(subnet))["node"]
        self.assertEqual(node["value"], '{"PublicIP":"192.0.2.1"}')
        self.assertGreater(node["ttl"], 86000)
        self.assertEqual(d.lease.subnet, subnet)
        went_back = logged(self.logs, "index went back", LogLevel.error)
        self.assertEqual(len(went_back), 1, went_back)
        self.assertEqual(len(logged(self.logs, "deleted or expired", LogLevel.warn)), 1)
        # the wiped peer keeps its route until its lease would have expired (tests/integration/test_wipe.py)
        # and stays routed, without a gap, when it re-registers
        self.assertEqual(list(d.watcher.retained), [IPv4Network("10.5.250.0/24")])
        server.v2_put(PREFIX + "/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.250"}', ttl=600)
        yield wait_until(lambda: not d.watcher.retained)
        self.assertEqual(self.removed_events(backend), [])
        self.assertEqual(self.added_subnets(backend).count("10.5.250.0/24"), 1)
        self.assertEqual(parse_env(open(self.subnet_file).read())["FLANNEL_SUBNET"],
                         "%s/24" % (subnet.network_address + 1))
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_lease_expired_is_reacquired_and_backend_keeps_running(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)

        class StuckRenewal(CountingManager):
            """etcd is slow to answer our renewal: the lease expires first."""

            def renew_lease(self, lease):
                self.calls["renew_lease"] += 1
                return defer.Deferred()

        d = self.run_daemon(self.make_daemon(server.endpoints, manager_class=StuckRenewal))
        yield self.running(d)
        subnet = d.lease.subnet
        # someone shortens our lease to 2 s (same value): the keeper follows etcd's TTL,
        # its renewal at 1 s hangs, and etcd expires the key.
        server.v2_put(self.key(subnet), '{"PublicIP":"192.0.2.1"}', ttl=2)
        yield wait_until(lambda: d.manager.calls["renew_lease"] == 1, timeout=5)
        yield wait_until(lambda: logged(self.logs, "deleted or expired"), timeout=15)
        yield wait_until(lambda: exists(server, self.key(subnet))
                         and server.v2_get(self.key(subnet))["node"].get("ttl", 0) > 86000,
                         timeout=15)
        # etcd holds the key before its answer reaches the keeper: wait for that answer
        yield wait_until(lambda: d.keeper.state == keeper_mod.HELD, timeout=5)
        self.assertEqual(d.lease.subnet, subnet)
        self.assertEqual(d.keeper.state, keeper_mod.HELD)
        self.assertNotIn(("stop",), self.backends[0].events)
        self.assertEqual(self.removed_events(self.backends[0]), [])
        self.assertEqual(d.phase, daemon_mod.RUNNING)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_short_ttl_from_etcd_is_renewed_on_time(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        d = self.run_daemon(self.make_daemon(server.endpoints))
        yield self.running(d)
        subnet = d.lease.subnet
        server.v2_put(self.key(subnet), '{"PublicIP":"192.0.2.1"}', ttl=3)
        yield wait_until(lambda: d.keeper.renewals == 1, timeout=5)
        node = server.v2_get(self.key(subnet))["node"]
        self.assertGreater(node["ttl"], 86000)
        self.assertEqual(logged(self.logs, "deleted or expired"), [])
        self.assertEqual(d.manager.calls["acquire_lease"], 1)

    def test_subnet_taken_while_away_is_never_overwritten(self):
        return self.subnet_taken_while_away()

    @defer.inlineCallbacks
    def test_pool_exhausted_is_reported_with_size_and_retried(self):
        server = start_etcd_for_test(self)
        server.put_config('{"Network": "10.5.0.0/24", "SubnetLen": 26}')  # .64 .128 .192
        for i, net in enumerate(("64", "128", "192")):
            server.v2_put(PREFIX + "/subnets/10.5.0.%s-26" % net,
                          '{"PublicIP":"192.0.2.%d"}' % (100 + i), ttl=600)
        d = self.run_daemon(self.make_daemon(
            server.endpoints, backoff=make_backoff(0.1, 0.4, jitter=lambda: 0.0)))
        yield wait_until(lambda: len(logged(self.logs, "out of subnets")) >= 3)
        message = logged(self.logs, "out of subnets", LogLevel.error)[0]
        self.assertIn("all 3 subnets of the pool are taken", message)
        self.assertEqual(d.phase, daemon_mod.ACQUIRING)
        self.assertFalse(os.path.exists(self.subnet_file))
        server.v2_delete(PREFIX + "/subnets/10.5.0.128-26")
        yield self.running(d)
        self.assertEqual(d.lease.subnet, IPv4Network("10.5.0.128/26"))

    @defer.inlineCallbacks
    def test_dead_endpoint_fails_over_and_is_logged_once(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        dead = "http://127.0.0.1:%d" % free_port()
        d = self.run_daemon(self.make_daemon([dead] + server.endpoints))
        yield self.running(d)
        backend = self.backends[0]
        server.v2_put(PREFIX + "/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.250"}', ttl=600)
        yield wait_until(lambda: "10.5.250.0/24" in self.added_subnets(backend))
        self.assertEqual(d.etcd_client.current_endpoint, server.url)
        warned = logged(self.logs, "etcd endpoint %s failed" % dead, LogLevel.warn)
        self.assertEqual(len(warned), 1, warned)
        self.assertIn("trying %s" % server.url, warned[0])


class Answering(Resource):
    """Answers every request with one fixed status and body (a member that cannot serve)."""

    isLeaf = True

    def __init__(self, status, body):
        Resource.__init__(self)
        self.status = status
        self.body = body
        self.requests = 0

    def render(self, request):
        self.requests += 1
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return self.body


def answering_server(testcase, status, body):
    """A twisted.web server on loopback answering C{status}/C{body}: (url, resource)."""
    resource = Answering(status, body)
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return "http://127.0.0.1:%d" % port.getHost().port, resource


NO_LEADER = b'{"errorCode":300,"message":"Raft Internal Error","cause":"etcdserver: no leader",' \
            b'"index":0}'


class MemberErrorTests(DaemonHarness, unittest.TestCase):
    """Members that answer but cannot serve (HTTP 5xx, etcd's 300 "no leader") are passed
    over like dead ones, and do not count as "etcd answers" for /healthz."""

    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        skips.require_etcd()

    @defer.inlineCallbacks
    def test_members_answering_503_or_no_leader_are_passed_over(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        down, down_res = answering_server(self, 503, b"service unavailable")
        leaderless, leaderless_res = answering_server(self, 500, NO_LEADER)
        d = self.run_daemon(self.make_daemon([down, leaderless] + server.endpoints))
        yield self.running(d)
        self.assertEqual(d.etcd_client.current_endpoint, server.url)
        self.assertEqual(server.v2_get(self.key(d.lease.subnet))["node"]["value"],
                         '{"PublicIP":"192.0.2.1"}')
        server.v2_put(PREFIX + "/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.250"}', ttl=600)
        yield wait_until(lambda: "10.5.250.0/24" in self.added_subnets(self.backends[0]))
        self.assertGreaterEqual(down_res.requests, 1)
        self.assertGreaterEqual(leaderless_res.requests, 1)
        for url, text in ((down, "HTTP 503"), (leaderless, "300: Raft Internal Error")):
            warned = logged(self.logs, "etcd endpoint %s failed" % url, LogLevel.warn)
            self.assertEqual(len(warned), 1, warned)
            self.assertIn(text, warned[0])
        self.assertTrue(health_body(d.status())["healthy"])

    @defer.inlineCallbacks
    def test_health_does_not_count_a_member_without_leader_as_etcd_answering(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        leaderless, _ = answering_server(self, 500, NO_LEADER)
        d = self.run_daemon(self.make_daemon([leaderless] + server.endpoints,
                                             etcd_probe_interval=0.3, etcd_stale_after=1.5))
        yield self.running(d)
        self.assertTrue(health_body(d.status())["etcd_ok"])
        server.kill()
        # the probe gets "no leader" from one member and nothing from the other
        yield wait_until(lambda: not health_body(d.status())["etcd_ok"], timeout=10)
        self.assertFalse(health_body(d.status())["healthy"])
        server.start()
        yield wait_until(lambda: health_body(d.status())["healthy"], timeout=15)


class SilentMemberTests(DaemonHarness, unittest.TestCase):
    """A member that goes silent without a reset (a partition, power loss) while our
    watch waits on it: the watch moves on, and /healthz says so while it is stuck."""

    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        skips.require_etcd()

    @defer.inlineCallbacks
    def test_watch_on_a_silenced_member_moves_on_and_healthz_reports_it_meanwhile(self):
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        proxy = SilenceableProxy(self, server.url)
        # an idle watch is checked every 4 s (inside the 4.5 s stale window); a silent
        # member's check takes 2 s more: the watch is silent for up to 6 s
        d = self.run_daemon(self.make_daemon(
            [proxy.url, server.url], client_kw=dict(request_timeout=2.0, watch_timeout=4.0),
            etcd_probe_interval=0.3, etcd_stale_after=4.5))
        yield self.running(d)
        backend = self.backends[0]
        self.assertEqual(d.etcd_client.current_endpoint, proxy.url)
        yield sleep(5.0)
        self.assertTrue(health_body(d.status())["healthy"], health_body(d.status()))   # idle, not stuck

        proxy.silence()
        server.v2_put(PREFIX + "/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.250"}', ttl=600)
        seen = []
        yield wait_until(lambda: seen.append(health_body(d.status())) or not seen[-1]["healthy"],
                         timeout=10)
        stuck = seen[-1]
        self.assertGreater(stuck["watch_silent_for"], 4.5)
        self.assertTrue(stuck["etcd_ok"], stuck)   # the probe already moved on: etcd answers
        self.assertNotIn("10.5.250.0/24", self.added_subnets(backend))

        yield wait_until(lambda: "10.5.250.0/24" in self.added_subnets(backend), timeout=10)
        self.assertEqual(d.etcd_client.current_endpoint, server.url)
        yield wait_until(lambda: health_body(d.status())["healthy"], timeout=5)
        warned = logged(self.logs, "etcd endpoint %s failed" % proxy.url, LogLevel.warn)
        self.assertTrue(any("no event for 4s" in w for w in warned), warned)
        self.assertEqual(self.removed_events(backend), [])


class SkewedClock:
    """The real reactor, but its seconds() reads hours ahead (a badly set local clock)."""

    def __init__(self, offset):
        self._offset = offset

    def seconds(self):
        return reactor.seconds() + self._offset

    def callLater(self, delay, f, *a, **kw):
        return reactor.callLater(delay, f, *a, **kw)


class SkewedClockTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_clock_hours_ahead_keeps_the_lease(self):
        """etcd's 'expiration' (absolute, etcd's clock) is never compared with ours."""
        server = start_etcd_for_test(self)
        server.put_config(CONFIG)
        client = EtcdV2Client(reactor, server.endpoints)
        self.addCleanup(client.close)
        manager = SubnetManager(EtcdV2Registry(client))
        config = parse_config(CONFIG)
        attrs = LeaseAttrs(IPv4Address("192.0.2.1"))
        lease = yield manager.acquire_lease(config, attrs)
        key = DaemonHarness.key(lease.subnet)
        server.v2_put(key, attrs.to_json(), ttl=3)
        lease = yield manager.get_lease(lease.subnet)
        self.assertLessEqual(lease.ttl, 3)
        k = keeper_mod.LeaseKeeper(SkewedClock(5 * 3600), manager, config, attrs, lease, 3600)
        self.addCleanup(k.stop)
        k.start()
        yield wait_until(lambda: k.renewals == 1, timeout=5)
        self.assertGreater(server.v2_get(key)["node"]["ttl"], 86000)
        self.assertEqual(k.state, keeper_mod.HELD)
