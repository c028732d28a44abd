"""The lease watcher state machine, on a task.Clock with a fake subnet manager."""
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from twisted.logger import globalLogPublisher

from flannel_tw.etcd.errors import EtcdIndexWentBack, EventIndexCleared, EtcdUnavailable
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.interfaces import ISubnetManager
from flannel_tw.model.lease import Lease, LeaseAttrs, key_to_subnet
from flannel_tw.lease import watch
from flannel_tw.model.backoff import make_backoff
from flannel_tw.lease.status import WatcherStatus
from flannel_tw.testing.fakes import FakeSubnetManager

OWN = IPv4Network("10.5.1.0/24")


def lease(net, ip, data=None, ttl=86400):
    return Lease(subnet=IPv4Network(net), attrs=LeaseAttrs(IPv4Address(ip), backend_data=data),
                 ttl=ttl)


def klease(key, ip, ttl=86400):
    """A lease as the manager reads it from etcd: with the key as stored."""
    return Lease(subnet=key_to_subnet(key), attrs=LeaseAttrs(IPv4Address(ip)), ttl=ttl, key=key)


def removed(key):
    return Lease(subnet=key_to_subnet(key), attrs=None, key=key)


def routed(batches):
    return [(e.kind, str(e.lease.subnet), str(e.lease.attrs.public_ip))
            for b in batches for e in b]


class WatcherTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.batches = []
        self.own = []
        self.watcher = watch.LeaseWatcher(self.clock, self.manager, self.batches.append,
                                          own_subnet=lambda: OWN, own_sink=self.own.append,
                                          backoff=make_backoff(jitter=lambda: 0.0))

    def answer(self, name, result):
        n, args, d = self.manager.next(name)
        d.callback(result)
        return args

    def fail_call(self, name, exc):
        n, args, d = self.manager.next(name)
        d.errback(exc)
        return args

    def test_fake_provides_interface(self):
        verifyObject(ISubnetManager, self.manager)

    def test_list_then_watch_from_index_plus_one(self):
        self.watcher.start()
        self.assertEqual(self.watcher.state, watch.LISTING)
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2"),
                                      lease("10.5.1.0/24", "192.0.2.1")], 41))
        self.assertEqual(self.watcher.state, watch.WATCHING)
        self.assertEqual(self.manager.events[-1], ("watch_leases", 42))
        self.assertEqual([[(e.kind, str(e.lease.subnet)) for e in b] for b in self.batches],
                         [[(ADDED, "10.5.2.0/24")]])
        # our own lease went to own_sink, never to the backend
        self.assertEqual([(e.kind, e.lease.subnet) for e in self.own], [(ADDED, OWN)])

    def test_events_move_cursor_and_own_lease_is_not_reported(self):
        self.watcher.start()
        self.answer("list_leases", ([lease("10.5.1.0/24", "192.0.2.1")], 10))
        self.assertEqual([e.kind for e in self.own], [ADDED])
        del self.own[:]
        self.answer("watch_leases", (LeaseEvent(ADDED, lease("10.5.3.0/24", "192.0.2.3")), 15))
        self.assertEqual(self.manager.events[-1], ("watch_leases", 16))
        self.answer("watch_leases", (LeaseEvent(REMOVED, Lease(OWN, None)), 17))
        self.assertEqual(len(self.batches), 1)
        self.assertEqual([e.kind for e in self.own], [REMOVED])
        # removal of a known peer carries the attrs we stored
        self.answer("watch_leases", (LeaseEvent(REMOVED, Lease(IPv4Network("10.5.3.0/24"), None)),
                                     18))
        removed = self.batches[-1][0]
        self.assertEqual((removed.kind, removed.lease.attrs.public_ip),
                         (REMOVED, IPv4Address("192.0.2.3")))
        self.assertEqual(self.watcher.known, {})

    def test_unparseable_event_is_stepped_past(self):
        self.watcher.start()
        self.answer("list_leases", ([], 10))
        self.answer("watch_leases", (None, 11))
        self.assertEqual(self.manager.events[-1], ("watch_leases", 12))
        self.assertEqual(self.batches, [])

    def test_own_lease_missing_from_list_is_reported_removed(self):
        self.watcher.start()
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2")], 10))
        self.assertEqual([(e.kind, e.lease.subnet) for e in self.own], [(REMOVED, OWN)])

    def test_removal_of_unknown_lease_is_ignored(self):
        self.watcher.start()
        self.answer("list_leases", ([], 10))
        self.answer("watch_leases", (LeaseEvent(REMOVED, Lease(IPv4Network("10.5.9.0/24"), None)),
                                     11))
        self.assertEqual(self.batches, [])

    def test_same_attrs_again_is_not_re_emitted_but_changed_data_is(self):
        self.watcher.start()
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2", {"VtepMAC": "a"})], 5))
        self.answer("watch_leases", (LeaseEvent(ADDED, lease("10.5.2.0/24", "192.0.2.2",
                                                             {"VtepMAC": "a"}, ttl=80000)), 6))
        self.assertEqual(len(self.batches), 1)
        self.answer("watch_leases", (LeaseEvent(ADDED, lease("10.5.2.0/24", "192.0.2.2",
                                                             {"VtepMAC": "b"})), 7))
        self.assertEqual(len(self.batches), 2)
        self.assertEqual(self.batches[-1][0].lease.attrs.backend_data, {"VtepMAC": "b"})

    def test_index_cleared_relists_and_diffs(self):
        self.watcher.start()
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2"),
                                      lease("10.5.3.0/24", "192.0.2.3")], 5))
        self.fail_call("watch_leases", EventIndexCleared(401, "The event in requested index is "
                                                         "outdated and cleared", "", 3000))
        self.assertEqual(self.watcher.state, watch.LISTING)
        self.assertEqual(self.watcher.resyncs, 1)
        # 10.5.2.0 changed BackendData, 10.5.3.0 vanished, 10.5.4.0 appeared
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2", {"x": 1}),
                                      lease("10.5.4.0/24", "192.0.2.4")], 3000))
        kinds = sorted((e.kind, str(e.lease.subnet)) for e in self.batches[-1])
        self.assertEqual(kinds, [(ADDED, "10.5.2.0/24"), (ADDED, "10.5.4.0/24"),
                                 (REMOVED, "10.5.3.0/24")])
        self.assertEqual(self.manager.events[-1], ("watch_leases", 3001))

    def test_errors_back_off_capped_and_retry_same_cursor(self):
        self.watcher.start()
        self.answer("list_leases", ([], 100))
        delays = []
        for i in range(12):
            self.fail_call("watch_leases", EtcdUnavailable({"http://127.0.0.1:1": "refused"}))
            self.assertEqual(self.watcher.state, watch.BACKOFF)
            delay = self.watcher._delayed.getTime() - self.clock.seconds()
            delays.append(delay)
            self.clock.advance(delay)
            self.assertEqual(self.manager.events[-1], ("watch_leases", 101))
        self.assertEqual(delays[0], 1.0)
        self.assertEqual(delays[1], 1.5)
        self.assertEqual(max(delays), 30.0)
        self.assertEqual(delays, sorted(delays))
        # success resets the backoff
        self.answer("watch_leases", (None, 101))
        self.fail_call("watch_leases", EtcdUnavailable({}))
        self.assertEqual(self.watcher._delayed.getTime() - self.clock.seconds(), 1.0)

    def test_error_before_first_list_relists(self):
        self.watcher.start()
        self.fail_call("list_leases", EtcdUnavailable({}))
        self.clock.advance(1.0)
        self.assertEqual(self.manager.events[-1], ("list_leases",))

    def test_stop_cancels_pending_request_and_timer(self):
        self.watcher.start()
        self.answer("list_leases", ([], 1))
        _, _, d = self.manager.pending[-1]
        self.watcher.stop()
        self.assertEqual(self.watcher.state, watch.STOPPED)
        self.assertTrue(d.called, "the in-flight request was not cancelled")
        self.clock.advance(100)
        self.assertEqual(len(self.manager.events), 2)

    def test_backend_exception_does_not_stop_the_watch(self):
        def broken(events):
            raise RuntimeError("backend bug")
        self.watcher._sink = broken
        self.watcher.start()
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2")], 1))
        self.assertEqual(self.watcher.state, watch.WATCHING)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Harness(unittest.TestCase):
    own_subnet = OWN
    context = {}

    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.batches = []
        self.own = []
        self.own_now = [self.own_subnet]
        self.logs = []
        globalLogPublisher.addObserver(self.logs.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs.append)
        self.watcher = watch.LeaseWatcher(self.clock, self.manager, self.batches.append,
                                          own_subnet=lambda: self.own_now[0],
                                          own_sink=self.own.append,
                                          backoff=make_backoff(jitter=lambda: 0.0),
                                          **self.context)

    def answer(self, name, result):
        n, args, d = self.manager.next(name)
        d.callback(result)
        return args

    def warnings(self):
        from twisted.logger import LogLevel, formatEvent
        return [formatEvent(e) for e in self.logs if e.get("log_level") == LogLevel.warn
                and formatEvent(e).startswith("Ignoring lease")]


class AliasKeyTests(_Harness):
    """A key flanneld's unanchored regex would read as another lease's never touches it."""

    def test_alias_cannot_replace_or_remove_a_peer(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2")], 10))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("x10.5.2.0-24", "192.0.2.66")),
                                     11))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.2.9-24", "192.0.2.67")),
                                     12))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("x10.5.2.0-24")), 13))
        self.assertEqual(routed(self.batches), [(ADDED, "10.5.2.0/24", "192.0.2.2")])
        self.assertEqual(str(self.watcher.known[IPv4Network("10.5.2.0/24")].attrs.public_ip),
                         "192.0.2.2")
        self.assertEqual(len(self.warnings()), 2, self.warnings())
        self.assertEqual(self.watcher.skipped.counts["bad-key"], 2)

    def test_alias_in_a_list_is_not_a_peer(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("x10.5.3.0-24", "192.0.2.3")], 10))
        self.assertEqual(self.batches, [])
        self.assertEqual(self.watcher.known, {})

    def test_alias_of_our_key_does_not_reach_the_keeper(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", "192.0.2.1")], 10))
        self.assertEqual([e.kind for e in self.own], [ADDED])
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("x10.5.1.0-24", "192.0.2.99")),
                                     11))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.1.0-24y")), 12))
        self.assertEqual([e.kind for e in self.own], [ADDED])
        # a list holding only an alias of our key: our lease is missing
        self.manager.next("watch_leases")[2].errback(EventIndexCleared(401, "", "", 20))
        self.answer("list_leases", ([klease("x10.5.1.0-24", "192.0.2.1")], 20))
        self.assertEqual([e.kind for e in self.own], [ADDED, REMOVED])


class ValidationTests(_Harness):
    """With the config's context: only leases that may be routed reach the sink."""

    context = dict(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                   own_public_ip=IPv4Address("192.0.2.1"))

    HOSTILE = [klease("0.0.0.0-1", "192.0.2.10"), klease("128.0.0.0-1", "192.0.2.11"),
               klease("10.6.7.0-24", "192.0.2.12"), klease("10.5.8.0-25", "192.0.2.13"),
               klease("10.5.0.0-16", "192.0.2.14"), klease("10.5.4.0-24", "127.0.0.1"),
               klease("10.5.5.0-24", "224.0.0.1"), klease("10.5.6.0-24", "0.0.0.0"),
               klease("10.5.7.0-24", "255.255.255.255"), klease("10.5.9.0-24", "10.5.3.3"),
               klease("10.5.10.0-24", "169.254.169.254")]

    def test_only_the_good_peer_is_routed_each_bad_lease_warned_once(self):
        self.watcher.start()
        good = klease("10.5.2.0-24", "192.0.2.2")
        self.answer("list_leases", ([good] + self.HOSTILE, 10))
        self.assertEqual(routed(self.batches), [(ADDED, "10.5.2.0/24", "192.0.2.2")])
        self.assertEqual(len(self.warnings()), len(self.HOSTILE), self.warnings())
        # the log rate limit (flannel_tw.observe.logs) keys on format and "error": each lease's
        # warning must differ there, or all but the first would be held back
        errors = {(e["log_format"], e.get("error")) for e in self.logs
                  if e.get("log_format", "").startswith("Ignoring lease")}
        self.assertEqual(len(errors), len(self.HOSTILE))
        counts = dict(self.watcher.skipped.counts)
        self.assertEqual((counts["outside-network"], counts["subnet-length"],
                          counts["public-ip"]), (3, 2, 6))
        # listed again and renewed through the watch: no new warning, nothing counted twice
        self.manager.next("watch_leases")[2].errback(EventIndexCleared(401, "", "", 20))
        self.answer("list_leases", ([good] + self.HOSTILE, 20))
        for i, bad in enumerate(self.HOSTILE):
            self.answer("watch_leases", (LeaseEvent(ADDED, bad), 21 + i))
        self.assertEqual(len(self.warnings()), len(self.HOSTILE))
        self.assertEqual(dict(self.watcher.skipped.counts), counts)
        self.assertEqual(list(self.watcher.known), [IPv4Network("10.5.2.0/24")])

    def test_peer_rewritten_with_a_bad_value_loses_its_route_then_gets_it_back(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2")], 10))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.2.0-24", "127.0.0.1")), 11))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.2.0-24", "192.0.2.2")), 12))
        self.assertEqual(routed(self.batches), [(ADDED, "10.5.2.0/24", "192.0.2.2"),
                                                (REMOVED, "10.5.2.0/24", "192.0.2.2"),
                                                (ADDED, "10.5.2.0/24", "192.0.2.2")])
        # the same fault again later is news again (the key had a good value meanwhile)
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.2.0-24", "127.0.0.1")), 13))
        self.assertEqual(len(self.warnings()), 2)

    def test_our_subnet_with_another_public_ip_goes_to_the_keeper_only(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", "192.0.2.99")], 10))
        self.assertEqual(self.batches, [])
        self.assertEqual([(e.kind, str(e.lease.attrs.public_ip)) for e in self.own],
                         [(ADDED, "192.0.2.99")])


class MovedSubnetTests(_Harness):
    """Our subnet taken by another host: once we move, its holder is a normal peer."""

    context = dict(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                   own_public_ip=IPv4Address("192.0.2.1"))

    def test_old_subnet_holder_becomes_a_peer_when_we_move(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", "192.0.2.1"),
                                     klease("10.5.2.0-24", "192.0.2.2")], 10))
        # another host takes our subnet: the keeper hears of it, the sink does not
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.1.0-24", "192.0.2.77")),
                                     11))
        self.assertEqual(routed(self.batches), [(ADDED, "10.5.2.0/24", "192.0.2.2")])
        # our new lease is created; its event may arrive before the keeper has the lease
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.9.0-24", "192.0.2.1")), 12))
        self.assertEqual(len(self.batches), 1)
        self.own_now[0] = IPv4Network("10.5.9.0/24")
        self.watcher.own_subnet_changed(OWN)
        self.assertEqual(routed(self.batches)[1:], [(ADDED, "10.5.1.0/24", "192.0.2.77")])
        self.assertEqual(sorted(str(s) for s in self.watcher.known),
                         ["10.5.1.0/24", "10.5.2.0/24"])
        self.assertEqual(self.warnings(), [])
        # from now on 10.5.1.0/24 is an ordinary peer, 10.5.9.0/24 ours
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.1.0-24")), 13))
        self.assertEqual(routed(self.batches)[-1], (REMOVED, "10.5.1.0/24", "192.0.2.77"))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.9.0-24", "192.0.2.1")), 14))
        self.assertEqual(self.own[-1].lease.subnet, IPv4Network("10.5.9.0/24"))

    def test_events_while_reacquiring_are_kept(self):
        """The new holder's event arrives while the keeper re-acquires (and ignores it)."""
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", "192.0.2.1")], 10))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.1.0-24")), 11))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.1.0-24", "192.0.2.78")),
                                     12))
        self.own_now[0] = IPv4Network("10.5.9.0/24")
        self.watcher.own_subnet_changed(OWN)
        self.assertEqual(routed(self.batches), [(ADDED, "10.5.1.0/24", "192.0.2.78")])

    def test_a_keeper_that_moves_us_at_once_during_a_list(self):
        """own_sink may move our lease before the list is diffed: the diff uses the new
        subnet (ours now, never a peer)."""
        new = IPv4Network("10.5.9.0/24")

        def keeper(event):
            self.own.append(event)
            if event.kind == REMOVED and self.own_now[0] == OWN:
                self.own_now[0] = new
                self.watcher.own_subnet_changed(OWN)
        self.watcher._own_sink = keeper
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.9.0-24", "192.0.2.5")], 10))
        self.assertEqual(self.batches, [])
        self.assertEqual(self.watcher.known, {})

    def test_old_subnet_free_or_bad_is_not_routed(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", "192.0.2.1")], 10))
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.1.0-24", "127.0.0.1")), 11))
        self.own_now[0] = IPv4Network("10.5.9.0/24")
        self.watcher.own_subnet_changed(OWN)
        self.assertEqual(self.batches, [])
        self.assertEqual(len(self.warnings()), 1)


class WipedEtcdTests(_Harness):
    """After etcd's index goes back (wiped or restored), peers missing from the fresh list
    keep their routes until their leases would have expired by the last TTL we saw."""

    def wipe(self, leases_after, index=3):
        self.manager.next("watch_leases")[2].errback(EtcdIndexWentBack(51, index))
        self.assertEqual(self.watcher.state, watch.LISTING)
        self.answer("list_leases", (leases_after, index))

    def test_wiped_peers_kept_until_their_leases_would_expire(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", "192.0.2.1"),
                                     klease("10.5.2.0-24", "192.0.2.2", ttl=1000),
                                     klease("10.5.3.0-24", "192.0.2.3", ttl=5000),
                                     klease("10.5.4.0-24", "192.0.2.4", ttl=None)], 50))
        self.clock.advance(100)
        self.wipe([klease("10.5.3.0-24", "192.0.2.3")])   # 10.5.3.0 re-registered at once
        self.assertEqual(len(self.batches), 1, "a route was removed or re-added")
        self.assertEqual(sorted(str(s) for s in self.watcher.retained),
                         ["10.5.2.0/24", "10.5.4.0/24"])
        self.assertEqual(len(self.watcher.known), 3)
        # 10.5.2.0's lease would have expired at t=1000; one slack minute later we look
        self.clock.advance(1000 + watch.RETAIN_SLACK - 100 - 1)
        self.assertEqual(self.manager.pending[-1][0], "watch_leases")
        self.clock.advance(1)
        self.assertEqual(self.manager.pending[-1][0], "list_leases")
        self.answer("list_leases", ([klease("10.5.3.0-24", "192.0.2.3")], 9))
        self.assertEqual(routed(self.batches[1:]), [(REMOVED, "10.5.2.0/24", "192.0.2.2")])
        # the reservation (no TTL) is kept one full lease TTL after the wipe
        self.assertEqual(list(self.watcher.retained), [IPv4Network("10.5.4.0/24")])
        self.clock.advance(100 + watch.RETAIN_NO_TTL - self.clock.seconds() - 1)
        self.assertEqual(self.manager.pending[-1][0], "watch_leases")
        self.clock.advance(1)
        self.answer("list_leases", ([klease("10.5.3.0-24", "192.0.2.3")], 12))
        self.assertEqual(routed(self.batches[2:]), [(REMOVED, "10.5.4.0/24", "192.0.2.4")])
        self.assertEqual(self.watcher.retained, {})
        self.assertEqual(self.watcher.state, watch.WATCHING)

    def test_peer_that_re_registers_keeps_its_route_without_a_gap(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2", ttl=1000)], 50))
        self.wipe([])
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.2.0-24", "192.0.2.2")), 4))
        self.assertEqual(self.watcher.retained, {})
        self.clock.advance(5000)
        self.assertEqual(len(self.batches), 1)
        self.assertEqual(self.manager.pending[-1], ("watch_leases", (5,),
                                                    self.manager.pending[-1][2]))

    def test_another_host_in_a_wiped_peers_subnet_replaces_it(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2", ttl=1000)], 50))
        self.wipe([])
        self.answer("watch_leases", (LeaseEvent(ADDED, klease("10.5.2.0-24", "192.0.2.9")), 4))
        self.assertEqual(routed(self.batches)[1:], [(ADDED, "10.5.2.0/24", "192.0.2.9")])
        self.assertEqual(self.watcher.retained, {})

    def test_deadline_during_backoff_relists_on_retry(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2", ttl=10)], 50))
        self.wipe([])
        self.manager.next("watch_leases")[2].errback(EtcdUnavailable({}))
        self.assertEqual(self.watcher.state, watch.BACKOFF)
        self.clock.pump([1.0] * 100)   # the watch keeps failing past the deadline
        for _ in range(5):
            if self.watcher.state == watch.LISTING:
                break
            self.manager.next("watch_leases")[2].errback(EtcdUnavailable({}))
            self.clock.advance(30)
        self.answer("list_leases", ([], 9))
        self.assertEqual(routed(self.batches)[1:], [(REMOVED, "10.5.2.0/24", "192.0.2.2")])

    def test_index_cleared_is_not_a_wipe(self):
        """A 401 re-list means events were missed, not that etcd forgot: absent is gone."""
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2")], 50))
        self.manager.next("watch_leases")[2].errback(EventIndexCleared(401, "", "", 3000))
        self.answer("list_leases", ([], 3000))
        self.assertEqual(routed(self.batches)[1:], [(REMOVED, "10.5.2.0/24", "192.0.2.2")])

    def test_stop_cancels_the_retention_timer(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", "192.0.2.2", ttl=10)], 50))
        self.wipe([])
        self.watcher.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


from hypothesis import given, settings, strategies as st  # noqa: E402

KEYS = ["10.5.1.0-24", "10.5.2.0-24", "x10.5.2.0-24", "10.5.2.7-24", "10.5.3.0-24",
        "0.0.0.0-1", "10.5.0.0-16", "10.6.2.0-24", "10.5.2.0-25"]
IPS = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "127.0.0.1", "0.0.0.0", "224.0.0.1",
       "10.5.9.9"]
steps = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from(IPS)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("relist"), st.none(), st.none()),
    st.tuples(st.just("move"), st.sampled_from(["10.5.1.0/24", "10.5.3.0/24"]), st.none())),
    max_size=40)


class WatcherPropertyTests(unittest.TestCase):
    """Whatever etcd holds and however it changes: the sink's view is exactly the
    routable leases of etcd's exact keys, never our own, never an alias."""

    @settings(max_examples=300, deadline=None)
    @given(steps)
    def test_sink_holds_exactly_the_routable_leases(self, script):
        from flannel_tw.model.leasecheck import lease_problem
        clock = task.Clock()
        manager = FakeSubnetManager()
        table = {}

        def sink(events):
            for e in events:
                if e.kind == ADDED:
                    table[e.lease.subnet] = e.lease.attrs
                else:
                    self.assertIn(e.lease.subnet, table)
                    del table[e.lease.subnet]
        own = [OWN]
        context = dict(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                       own_public_ip=IPv4Address("192.0.2.1"))
        w = watch.LeaseWatcher(clock, manager, sink, own_subnet=lambda: own[0],
                               own_sink=lambda e: None, **context)
        etcd = {}      # key -> Lease: what etcd holds
        index = [1]

        def answer(name, result):
            manager.next(name)[2].callback(result)

        w.start()
        answer("list_leases", ([], 1))
        for op, key, ip in script:
            index[0] += 1
            if op == "put":
                etcd[key] = klease(key, ip)
                answer("watch_leases", (LeaseEvent(ADDED, etcd[key]), index[0]))
            elif op == "delete":
                if key in etcd:
                    del etcd[key]
                    answer("watch_leases", (LeaseEvent(REMOVED, removed(key)), index[0]))
            elif op == "relist":
                manager.next("watch_leases")[2].errback(
                    EventIndexCleared(401, "", "", index[0]))
                answer("list_leases", (list(etcd.values()), index[0]))
            else:
                old, own[0] = own[0], IPv4Network(key)
                if old != own[0]:
                    w.own_subnet_changed(old)
            expected = {}
            for l in etcd.values():
                if l.subnet != own[0] and lease_problem(l, own_subnet=own[0],
                                                        **context) is None:
                    expected[l.subnet] = l.attrs
            self.assertEqual(table, expected)
            self.assertEqual({s: l.attrs for s, l in w.known.items()}, expected)
        self.assertLessEqual(len(w.skipped), len(KEYS))


class WatcherStatusTests(_Harness):
    """watcher.status() and watcher.skipped_counts(): snapshots for the daemon's status."""

    context = dict(network=IPv4Network("10.5.0.0/16"), subnet_len=24)

    def fail_call(self, name, exc):
        self.manager.next(name)[2].errback(exc)

    def test_status_follows_the_watch(self):
        self.assertEqual(self.watcher.status(), WatcherStatus(
            state="idle", failures=0, resyncs=0, last_event_at=None, peers=0, retained=0))
        self.watcher.start()
        self.answer("list_leases", ([lease("10.5.2.0/24", "192.0.2.2"),
                                     lease("10.5.3.0/24", "192.0.2.3")], 10))
        self.clock.advance(5)
        self.answer("watch_leases", (LeaseEvent(ADDED, lease("10.5.4.0/24", "192.0.2.4")), 11))
        self.fail_call("watch_leases", EventIndexCleared(401, "", "", 20))
        self.assertEqual(self.watcher.status(), WatcherStatus(
            state="listing", failures=0, resyncs=1, last_event_at=5, peers=3, retained=0))
        self.answer("list_leases", ([], 20))
        self.fail_call("watch_leases", EtcdUnavailable({"http://127.0.0.1:1": "refused"}))
        s = self.watcher.status()
        self.assertEqual((s.state, s.failures, s.peers), ("backoff", 1, 0))

    def test_skipped_counts_by_reason(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("x10.5.2.0-24", "192.0.2.2"),
                                     lease("10.6.0.0/24", "192.0.2.9")], 10))
        counts = self.watcher.skipped_counts()
        self.assertEqual((counts["bad-key"], counts["outside-network"]), (1, 1))
        self.assertEqual(sum(counts.values()), 2)
        counts["bad-key"] = 99   # a copy: the watcher's memory is not changed through it
        self.assertEqual(self.watcher.skipped_counts()["bad-key"], 1)
