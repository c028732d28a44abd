"""The lease watcher state machine, on a task.Clock with a fake subnet manager."""
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.etcd.errors import EventIndexCleared, EtcdUnavailable
from flannel_tw.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.interfaces import ISubnetManager
from flannel_tw.lease import Lease, LeaseAttrs
from flannel_tw.subnet import watch
from flannel_tw.subnet.backoff import make_backoff
from flannel_tw.testing.fakes import FakeSubnetManager

OWN = IPv4Network("10.5.1.0/24")


def lease(net, ip, data=None, ttl=86400):
    return Lease(subnet=IPv4Network(net), attrs=LeaseAttrs(IPv4Address(ip), backend_data=data),
                 ttl=ttl)


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
