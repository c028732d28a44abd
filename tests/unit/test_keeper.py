"""The lease keeper: renewal timing, retries and re-acquisition on a task.Clock."""
from dataclasses import FrozenInstanceError
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import task
from twisted.trial import unittest

from flannel_tw.model.config import NetworkConfig
from flannel_tw.etcd.errors import EtcdError, EtcdUnavailable, KeyNotFound, TestFailed
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.kernel import monoclock
from flannel_tw.kernel.monoclock import MonotonicClock
from flannel_tw.lease import keeper
from flannel_tw.model.backoff import make_backoff
from flannel_tw.lease.status import KeeperStatus
from flannel_tw.testing.fakes import FakeSubnetManager

ATTRS = LeaseAttrs(IPv4Address("192.0.2.1"))
CONFIG = NetworkConfig(IPv4Network("10.5.0.0/16"), 24, IPv4Address("10.5.1.0"),
                       IPv4Address("10.5.255.0"), "udp")
NET = IPv4Network("10.5.7.0/24")


class RenewalDelayTests(unittest.TestCase):
    def test_ttl_minus_margin(self):
        self.assertEqual(keeper.renewal_delay(86400, 3600), 82800)

    def test_short_ttl_renews_at_half(self):
        self.assertEqual(keeper.renewal_delay(600, 3600), 300)

    def test_reservation_never(self):
        self.assertIsNone(keeper.renewal_delay(None, 3600))


class KeeperTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.changes = []
        self.keeper = keeper.LeaseKeeper(
            self.clock, self.manager, CONFIG, ATTRS, Lease(NET, ATTRS, ttl=86400), 3600,
            on_new_lease=lambda new, old: self.changes.append((new.subnet, old.subnet)),
            backoff=make_backoff(initial=1.0, maximum=60.0, jitter=lambda: 0.0))

    def test_renews_at_ttl_minus_margin_using_ttl_from_etcd(self):
        self.keeper.start()
        self.clock.advance(82799)
        self.assertEqual(self.manager.events, [])
        self.clock.advance(1)
        self.assertEqual(self.manager.events, [("renew_lease", Lease(NET, ATTRS, ttl=86400))])
        _, _, d = self.manager.next("renew_lease")
        d.callback(Lease(NET, ATTRS, ttl=86400))
        self.assertEqual(self.keeper.renewals, 1)
        self.assertEqual(self.keeper.next_renewal_in, 82800)

    def test_wall_clock_is_not_consulted(self):
        # The keeper only sees TTLs and the injected clock: a clock far in the future
        # when it starts changes nothing.
        self.clock.advance(10 ** 9)
        self.keeper.start()
        self.assertEqual(self.keeper.next_renewal_in, 82800)

    def test_reservation_is_never_renewed(self):
        k = keeper.LeaseKeeper(self.clock, self.manager, CONFIG, ATTRS,
                               Lease(NET, ATTRS, ttl=None), 3600)
        k.start()
        self.clock.advance(10 * 86400)
        self.assertEqual(self.manager.events, [])
        self.assertIsNone(k.next_renewal_in)

    def test_failed_renewal_retries_with_capped_backoff(self):
        self.keeper.start()
        self.clock.advance(82800)
        delays = []
        for _ in range(15):
            _, _, d = self.manager.next("renew_lease")
            d.errback(EtcdUnavailable({"http://127.0.0.1:1": "refused"}))
            self.assertEqual(self.keeper.state, keeper.RETRYING)
            delays.append(self.keeper.next_renewal_in)
            self.clock.advance(delays[-1])
        self.assertEqual(delays[:3], [1.0, 1.5, 2.25])
        self.assertEqual(max(delays), 60.0)
        self.assertEqual(self.keeper.renewal_failures, 15)

    def test_vanished_lease_is_reacquired_preferring_same_subnet(self):
        self.keeper.start()
        self.clock.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        d.errback(KeyNotFound(100, "Key not found", "/x", 5))
        self.assertEqual(self.keeper.state, keeper.REACQUIRING)
        name, args, d = self.manager.next("acquire_lease")
        self.assertEqual(args, (CONFIG, ATTRS, NET))
        d.callback(Lease(NET, ATTRS, ttl=86400))
        self.assertEqual(self.keeper.state, keeper.HELD)
        self.assertEqual(self.changes, [(NET, NET)])

    def test_taken_lease_is_not_overwritten_new_subnet_reported(self):
        self.keeper.start()
        self.clock.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        d.errback(TestFailed(101, "Compare failed", "", 5))
        # the keeper looks at who wrote the key: another host
        _, args, d = self.manager.next("get_lease")
        self.assertEqual(args, (NET,))
        d.callback(Lease(NET, LeaseAttrs(IPv4Address("192.0.2.99")), ttl=86400))
        _, args, d = self.manager.next("acquire_lease")
        self.assertIsNone(args[2])
        other = IPv4Network("10.5.9.0/24")
        d.callback(Lease(other, ATTRS, ttl=86400))
        self.assertEqual(self.changes, [(other, NET)])
        self.assertEqual(self.keeper.lease.subnet, other)

    def test_removed_event_reacquires_and_retries_on_failure(self):
        self.keeper.start()
        self.keeper.own_event(LeaseEvent(REMOVED, Lease(NET, None)))
        _, args, d = self.manager.next("acquire_lease")
        d.errback(EtcdUnavailable({}))
        self.assertEqual((self.keeper.state, self.keeper.lease_lost), (keeper.LOST, True))
        self.clock.advance(1.0)
        _, args, d = self.manager.next("acquire_lease")
        self.assertEqual(args[2], NET)
        d.callback(Lease(NET, ATTRS, ttl=86400))
        self.assertEqual(self.keeper.state, keeper.HELD)
        self.assertEqual(self.keeper.next_renewal_in, 82800)

    def test_added_event_with_other_public_ip_means_taken_over(self):
        self.keeper.start()
        intruder = Lease(NET, LeaseAttrs(IPv4Address("192.0.2.99")), ttl=86400)
        self.keeper.own_event(LeaseEvent(ADDED, intruder))
        _, args, _ = self.manager.next("acquire_lease")
        self.assertIsNone(args[2])

    def test_added_event_for_our_lease_resets_timer(self):
        self.keeper.start()
        self.clock.advance(1000)
        self.keeper.own_event(LeaseEvent(ADDED, Lease(NET, ATTRS, ttl=86400)))
        self.assertEqual(self.keeper.next_renewal_in, 82800)

    def test_stop_cancels_everything(self):
        self.keeper.start()
        self.keeper.stop()
        self.clock.advance(10 ** 6)
        self.assertEqual(self.manager.events, [])


class _World:
    """
    Real time, a wall clock (the reactor's task.Clock) that can step, and the keeper's
    monotonic clock (a MonotonicClock on real time, woken as a timerfd would be).
    """

    def __init__(self):
        self.real = 0.0
        self.wall = task.Clock()
        self.deadline = None
        self.mono = MonotonicClock(self.wall, monotonic=lambda: self.real, alarm=self)

    def set(self, deadline):
        self.deadline = deadline

    def clear(self):
        self.deadline = None

    def advance(self, seconds, step=10.0):
        end = self.real + seconds
        while self.real < end:
            dt = min(step, end - self.real)
            self.real += dt
            self.wall.advance(dt)
            if self.deadline is not None and self.deadline <= self.real:
                self.mono._fire()


class WallClockStepTests(unittest.TestCase):
    """The wall clock steps by 2 h while the keeper waits to renew (TTL 86400, margin 3600)."""

    def setUp(self):
        self.world = _World()
        self.manager = FakeSubnetManager()
        self.keeper = keeper.LeaseKeeper(
            self.world.wall, self.manager, CONFIG, ATTRS, Lease(NET, ATTRS, ttl=86400), 3600,
            backoff=make_backoff(initial=1.0, maximum=60.0, jitter=lambda: 0.0),
            clock=self.world.mono)
        self.keeper.start()

    def renewals(self):
        return [e for e in self.manager.events if e[0] == "renew_lease"]

    def check_renews_on_time(self, step):
        self.world.advance(40000)
        self.world.wall.rightNow += step
        self.world.wall.advance(0)
        self.world.advance(82800 - 40000 - 10)
        self.assertEqual(self.renewals(), [])          # not early
        self.world.advance(10)
        self.assertEqual(len(self.renewals()), 1)      # at ttl - margin of real time
        _, _, d = self.manager.next("renew_lease")
        d.callback(Lease(NET, ATTRS, ttl=86400))
        self.world.advance(82800 - 10)
        self.assertEqual(len(self.renewals()), 1)      # no tight loop: next one a day later
        self.world.advance(10)
        self.assertEqual(len(self.renewals()), 2)

    def test_wall_clock_steps_back_two_hours(self):
        self.check_renews_on_time(-7200)

    def test_wall_clock_steps_forward_two_hours(self):
        self.check_renews_on_time(7200)

    def test_retry_backoff_is_on_the_monotonic_clock(self):
        self.world.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        d.errback(EtcdUnavailable({}))
        self.world.wall.rightNow -= 7200
        self.world.advance(1.0, step=0.5)
        self.assertEqual(len(self.renewals()), 2)


class DaemonWiringTests(unittest.TestCase):
    def test_build_daemon_gives_the_keeper_a_monotonic_clock(self):
        from twisted.internet import reactor
        from flannel_tw import wiring
        from flannel_tw.tap import Options
        options = Options(environ={})
        options.parseOptions(["--etcd-endpoints=http://127.0.0.1:9", "--iface=127.0.0.1",
                              "--iptables-forward-rules=false"])
        d = wiring.build_daemon(options, reactor)
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(d._keeper_clock.close)
        self.assertIsInstance(d._keeper_clock, MonotonicClock)
        self.assertIsInstance(d._keeper_clock._alarm, monoclock._TimerFdAlarm)

    def test_build_daemon_runs_the_lease_policy_on_the_etcd_v2_registry(self):
        from twisted.internet import reactor
        from zope.interface.verify import verifyObject
        from flannel_tw import wiring
        from flannel_tw.interfaces import ISubnetManager
        from flannel_tw.lease.manager import SubnetManager
        from flannel_tw.tap import Options
        options = Options(environ={})
        options.parseOptions(["--etcd-endpoints=http://127.0.0.1:9", "--iface=127.0.0.1",
                              "--iptables-forward-rules=false", "--etcd-prefix=/x/net/",
                              "--etcd-api=v2"])
        d = wiring.build_daemon(options, reactor)
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(d._keeper_clock.close)
        self.assertIs(type(d.manager), SubnetManager)
        verifyObject(ISubnetManager, d.manager)
        self.assertEqual(d.manager.prefix, "/x/net")


class RenewalLateTests(unittest.TestCase):
    """When a failing renewal makes the keeper unhealthy (keeper.renewal_late)."""

    def make(self, ttl, margin=3600):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        k = keeper.LeaseKeeper(self.clock, self.manager, CONFIG, ATTRS,
                               Lease(NET, ATTRS, ttl=ttl), margin,
                               backoff=make_backoff(initial=1.0, maximum=60.0,
                                                    jitter=lambda: 0.0))
        k.start()
        return k

    def fail_renewals_for(self, k, seconds):
        """Fail every renewal attempt (etcd answers an error) for C{seconds}."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            for name, _, d in list(self.manager.pending):
                self.manager.next(name)
                d.errback(EtcdError(110, "The request requires user authentication"))
            self.clock.advance(min(1.0, end - self.clock.seconds()))

    def test_late_after_grace_then_healthy_on_success(self):
        k = self.make(86400)
        self.clock.advance(82800)
        self.assertFalse(k.renewal_late())
        self.assertEqual(k.lease_expires_in, 3600)
        self.fail_renewals_for(k, 299)
        self.assertEqual(k.state, keeper.RETRYING)
        self.assertFalse(k.renewal_late())
        self.assertEqual(k.renewal_failing_for, 299)
        self.fail_renewals_for(k, 2)
        self.assertTrue(k.renewal_late())
        self.clock.advance(60)
        _, _, d = self.manager.next("renew_lease")
        d.callback(Lease(NET, ATTRS, ttl=86400))
        self.assertFalse(k.renewal_late())
        self.assertIsNone(k.renewal_failing_for)
        self.assertEqual(k.lease_expires_in, 86400)

    def test_short_ttl_late_at_half_of_what_was_left(self):
        k = self.make(600)
        self.clock.advance(300)          # renewal at ttl/2; 300 s left
        self.fail_renewals_for(k, 149)
        self.assertFalse(k.renewal_late())
        self.fail_renewals_for(k, 2)
        self.assertTrue(k.renewal_late())

    def test_renewal_without_answer_is_late_too(self):
        k = self.make(86400)
        self.clock.advance(82800)
        self.assertEqual(k.state, keeper.RENEWING)
        self.clock.advance(301)           # the request neither answers nor fails
        self.assertTrue(k.renewal_late())

    def test_held_lease_is_never_late(self):
        k = self.make(86400)
        self.clock.advance(82799)
        self.assertFalse(k.renewal_late())
        self.assertIsNone(k.renewal_failing_for)

    def test_reservation_is_never_late(self):
        k = self.make(None)
        self.clock.advance(10 * 86400)
        self.assertFalse(k.renewal_late())
        self.assertIsNone(k.lease_expires_in)


class SamePublicIPTests(unittest.TestCase):
    """Another writer on our key: another host's value, or our PublicIP (a conflict)."""

    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.logs = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(self.logs.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs.append)

    def make(self, index=10, reused=False):
        if reused:
            self.manager.reused_leases = {NET: index}
        k = keeper.LeaseKeeper(self.clock, self.manager, CONFIG, ATTRS,
                               Lease(NET, ATTRS, ttl=86400, modified_index=index), 3600,
                               backoff=make_backoff(initial=1.0, maximum=60.0,
                                                    jitter=lambda: 0.0))
        k.start()
        return k

    def critical(self):
        from twisted.logger import LogLevel, formatEvent
        return [formatEvent(e) for e in self.logs if e.get("log_level") == LogLevel.critical]

    def written(self, index):
        return LeaseEvent(ADDED, Lease(NET, ATTRS, ttl=86400, modified_index=index))

    def test_first_holder_writes_back_once_then_stands_down(self):
        k = self.make(index=10)
        self.clock.advance(100)
        k.own_event(self.written(12))        # a newcomer with our PublicIP reused our lease
        name, args, d = self.manager.next("renew_lease")
        self.assertEqual(args[0].modified_index, 12)   # CAS over the newcomer's write
        self.assertIn("192.0.2.1", self.critical()[0])
        self.assertIn("writing our lease back once", self.critical()[0])
        d.callback(Lease(NET, ATTRS, ttl=86400, modified_index=13))
        self.assertEqual((k.state, k.lease.modified_index), (keeper.HELD, 13))
        k.own_event(self.written(13))        # our own write-back: nothing happens
        self.assertEqual(self.manager.pending, [])
        k.own_event(self.written(15))        # it writes again: no write war
        self.assertEqual((k.state, k.lease_lost), (keeper.CONFLICT, True))
        self.assertIn("again after we wrote it back once", self.critical()[-1])
        self.clock.advance(3 * 86400)
        self.assertEqual(self.manager.pending, [])
        k.own_event(LeaseEvent(REMOVED, Lease(NET, None)))   # gone: take it again
        _, args, _ = self.manager.next("acquire_lease")
        self.assertEqual(args[2], NET)

    def test_newcomer_that_reused_the_lease_stands_down(self):
        k = self.make(index=20, reused=True)
        self.clock.advance(1)
        k.own_event(self.written(21))        # the live holder wrote it back
        self.assertEqual((k.state, k.lease_lost, k.conflicts), (keeper.CONFLICT, True, 1))
        self.assertEqual(self.manager.pending, [])
        self.assertIn("right after we reused it", self.critical()[0])
        self.clock.advance(86400)
        self.assertEqual(self.manager.events, [])

    def test_after_probation_a_reused_lease_is_defended(self):
        k = self.make(index=20, reused=True)
        self.clock.advance(keeper.PROBATION + 1)
        k.own_event(self.written(21))
        _, args, _ = self.manager.next("renew_lease")
        self.assertEqual(args[0].modified_index, 21)
        self.assertEqual(k.state, keeper.DEFENDING)

    def test_failed_renewal_finds_our_ip_written_by_someone_else(self):
        k = self.make(index=10)
        self.clock.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        d.errback(TestFailed(101, "Compare failed", "[10 != 30]", 30))
        _, args, d = self.manager.next("get_lease")
        d.callback(Lease(NET, ATTRS, ttl=86000, modified_index=30))
        _, args, d = self.manager.next("renew_lease")
        self.assertEqual(args[0].modified_index, 30)
        self.assertEqual(len(self.critical()), 1)

    def test_restored_etcd_older_index_is_taken_back_quietly(self):
        k = self.make(index=50)
        self.clock.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        d.errback(TestFailed(101, "Compare failed", "[50 != 7]", 60))
        _, _, d = self.manager.next("get_lease")
        d.callback(Lease(NET, ATTRS, ttl=80000, modified_index=7))
        _, args, d = self.manager.next("renew_lease")
        self.assertEqual(args[0].modified_index, 7)
        d.callback(Lease(NET, ATTRS, ttl=86400, modified_index=61))
        self.assertEqual((k.state, k.conflicts, self.critical()), (keeper.HELD, 0, []))

    def test_stale_event_is_ignored(self):
        k = self.make(index=10)
        self.clock.advance(1000)
        k.own_event(LeaseEvent(ADDED, Lease(NET, ATTRS, ttl=5, modified_index=9)))
        self.assertEqual(k.next_renewal_in, 82800 - 1000)
        self.assertEqual(self.manager.pending, [])

    def test_event_while_our_write_is_in_flight_waits_for_its_answer(self):
        k = self.make(index=10)
        self.clock.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        k.own_event(self.written(11))        # our own renewal, seen before its answer
        self.assertEqual(self.manager.pending, [])
        d.callback(Lease(NET, ATTRS, ttl=86400, modified_index=11))
        k.own_event(self.written(11))
        self.assertEqual((k.state, k.conflicts), (keeper.HELD, 0))


class KeeperStatusTests(unittest.TestCase):
    """keeper.status(): one frozen snapshot; lease_ok is what /healthz judges."""

    def make(self, ttl=86400):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        k = keeper.LeaseKeeper(self.clock, self.manager, CONFIG, ATTRS,
                               Lease(NET, ATTRS, ttl=ttl), 3600,
                               backoff=make_backoff(initial=1.0, maximum=60.0,
                                                    jitter=lambda: 0.0))
        k.start()
        return k

    def test_held(self):
        k = self.make()
        self.clock.advance(100)
        self.assertEqual(k.status(), KeeperStatus(
            state="held", lease_ok=True, renewals=0, renewal_failures=0, last_renewal_at=None,
            renewal_failing_for=None, lease_expires_in=86300))

    def test_status_is_frozen(self):
        with self.assertRaises(FrozenInstanceError):
            self.make().status().state = "stopped"

    def test_retrying_is_ok_until_late(self):
        k = self.make()
        self.clock.advance(82800)
        for _ in range(3):
            _, _, d = self.manager.next("renew_lease")
            d.errback(EtcdUnavailable({"http://127.0.0.1:1": "refused"}))
            self.clock.advance(k.next_renewal_in)
        s = k.status()
        self.assertEqual((s.state, s.lease_ok, s.renewal_failures), ("renewing", True, 3))
        self.assertEqual(s.renewal_failing_for, 1.0 + 1.5 + 2.25)
        self.clock.advance(301)
        self.assertEqual((k.status().state, k.status().lease_ok), ("renewing", False))

    def test_renewed(self):
        k = self.make()
        self.clock.advance(82800)
        _, _, d = self.manager.next("renew_lease")
        d.callback(Lease(NET, ATTRS, ttl=86400))
        s = k.status()
        self.assertEqual((s.state, s.lease_ok, s.renewals, s.last_renewal_at),
                         ("held", True, 1, 82800))

    def test_gone_lease_is_not_ok_until_reacquired(self):
        k = self.make()
        k.own_event(LeaseEvent(REMOVED, Lease(NET, None)))
        self.assertEqual((k.status().state, k.status().lease_ok), ("reacquiring", False))
        _, _, d = self.manager.next("acquire_lease")
        d.callback(Lease(NET, ATTRS, ttl=86400))
        self.assertEqual((k.status().state, k.status().lease_ok), ("held", True))

    def test_stopped_is_not_ok(self):
        k = self.make()
        k.stop()
        self.assertEqual((k.status().state, k.status().lease_ok), ("stopped", False))


class LostStateTests(unittest.TestCase):
    """LOST (re-acquiring failed, waiting) is its own state: the lease counts as lost
    exactly while the state says so, never by a flag left behind."""

    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.keeper = keeper.LeaseKeeper(
            self.clock, self.manager, CONFIG, ATTRS,
            Lease(NET, ATTRS, ttl=86400, modified_index=10), 3600,
            backoff=make_backoff(initial=1.0, maximum=60.0, jitter=lambda: 0.0))
        self.keeper.start()

    def test_written_back_from_lost_is_held_and_healthy(self):
        k = self.keeper
        k.own_event(LeaseEvent(REMOVED, Lease(NET, None)))
        self.manager.next("acquire_lease")[2].errback(EtcdUnavailable({}))
        self.assertEqual((k.state, k.lease_lost, k.status().lease_ok), (keeper.LOST, True, False))
        # our key re-appears, written by another process with our PublicIP: written back
        k.own_event(LeaseEvent(ADDED, Lease(NET, ATTRS, ttl=86400, modified_index=12)))
        self.assertEqual(k.state, keeper.DEFENDING)
        _, args, d = self.manager.next("renew_lease")
        self.assertEqual(args[0].modified_index, 12)
        d.callback(Lease(NET, ATTRS, ttl=86400, modified_index=13))
        self.assertEqual((k.state, k.lease_lost, k.status().lease_ok), (keeper.HELD, False, True))
        self.assertEqual(k.next_renewal_in, 82800)

    def test_stop_from_lost_cancels_the_retry(self):
        k = self.keeper
        k.own_event(LeaseEvent(REMOVED, Lease(NET, None)))
        self.manager.next("acquire_lease")[2].errback(EtcdUnavailable({}))
        k.stop()
        self.clock.advance(3600)
        self.assertEqual((k.state, self.manager.pending), (keeper.STOPPED, []))

    def test_unknown_input_is_a_bug_not_ignored(self):
        from flannel_tw.lease.machine import UnexpectedInput
        self.assertRaises(UnexpectedInput, self.keeper._machine.fire, "acquired", None)
        self.assertEqual(self.keeper.state, keeper.HELD)
