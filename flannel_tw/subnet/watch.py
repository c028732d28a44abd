# -*- test-case-name: tests.test_watch -*-
"""
The lease watcher: an explicit state machine that keeps a view of every other
host's lease and reports changes to a sink (the backend).

States: IDLE -> LISTING -> WATCHING (loop) ; any error -> BACKOFF -> (LISTING or
WATCHING) ; stop() -> STOPPED from anywhere.

- LISTING: list the leases, diff against what we know (added for new or changed
  leases, changed BackendData included; removed for vanished ones), cursor = the
  index etcd returned.
- WATCHING: one long-poll at cursor+1; an event moves the cursor to its index. An
  event that cannot be parsed is stepped past (the manager logs it once).
- 401 EventIndexCleared: log and go to LISTING (re-list and diff).
- EtcdIndexWentBack (etcd wiped or restored: its index is below our cursor, and a v2
  watch there would wait silently until the index caught up): log and re-list, so that
  a missing own lease reaches the keeper and is re-created.
- Other errors: BACKOFF with a capped, jittered delay, then retry from the same
  cursor (or LISTING if we never listed).

Our own subnet is never reported to the sink; its events go to C{own_sink}
(the lease keeper), so "our lease was deleted" triggers re-acquisition.
"""
from twisted.internet import defer
from twisted.logger import Logger

from flannel_tw.etcd.errors import EtcdIndexWentBack, EventIndexCleared
from flannel_tw.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.lease import Lease
from flannel_tw.subnet.backoff import make_backoff

IDLE, LISTING, WATCHING, BACKOFF, STOPPED = "idle", "listing", "watching", "backoff", "stopped"


class LeaseWatcher:
    """
    @param reactor: an C{IReactorTime}.
    @param manager: an L{ISubnetManager}.
    @param sink: called with a list of L{LeaseEvent} about other hosts.
    @param own_subnet: a callable returning our current subnet (or None).
    @param own_sink: called with each L{LeaseEvent} about our own subnet.
    """

    log = Logger()

    def __init__(self, reactor, manager, sink, own_subnet=lambda: None, own_sink=None,
                 backoff=None):
        self._reactor = reactor
        self._manager = manager
        self._sink = sink
        self._own_subnet = own_subnet
        self._own_sink = own_sink
        self._backoff = backoff or make_backoff()
        self.state = IDLE
        self.known = {}           # subnet -> Lease (other hosts only)
        self.cursor = None
        self.failures = 0
        self.resyncs = 0
        self.last_event_at = None
        self.last_success_at = None
        self._pending = None      # the Deferred of the request in flight
        self._delayed = None      # the IDelayedCall of a BACKOFF

    # -- public ---------------------------------------------------------------

    def start(self):
        if self.state == IDLE:
            self._list()

    def stop(self):
        self.state = STOPPED
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    # -- states ---------------------------------------------------------------

    def _request(self, d, on_result):
        self._pending = d
        d.addCallbacks(self._ok, self._failed, callbackArgs=(d, on_result), errbackArgs=(d,))
        d.addErrback(lambda f: self.log.failure("Lease watcher bug", f))

    def _list(self):
        self.state = LISTING
        self._request(defer.maybeDeferred(self._manager.list_leases), self._listed)

    def _watch(self):
        self.state = WATCHING
        self._request(defer.maybeDeferred(self._manager.watch_leases, self.cursor + 1),
                      self._watched)

    def _ok(self, result, d, on_result):
        if self.state == STOPPED or d is not self._pending:
            return
        self._pending = None
        self.failures = 0
        self.last_success_at = self._reactor.seconds()
        on_result(result)
        if self.state != STOPPED:
            self._watch()

    def _failed(self, failure, d):
        if self.state == STOPPED or d is not self._pending:
            return None
        self._pending = None
        if failure.check(defer.CancelledError):
            return None
        if failure.check(EventIndexCleared):
            self.log.warn("Watch of subnet leases failed because etcd index outside history "
                          "window; re-listing ({error})", error=failure.value)
            self.resyncs += 1
            self._list()
            return None
        if failure.check(EtcdIndexWentBack):
            self.log.error("etcd's index went back from {cursor} to {index}: the etcd cluster "
                           "was wiped or restored from a backup; re-listing the leases",
                           cursor=self.cursor, index=failure.value.etcd_index)
            self.resyncs += 1
            self.cursor = None
            self._list()
            return None
        delay = self._backoff(self.failures)
        self.failures += 1
        self.log.warn("Watch subnets: {error}; retrying in {delay:.1f}s (failure {n})",
                      error=failure.getErrorMessage() or failure.type.__name__, delay=delay,
                      n=self.failures)
        self.state = BACKOFF
        self._delayed = self._reactor.callLater(delay, self._retry)
        return None

    def _retry(self):
        self._delayed = None
        if self.state != BACKOFF:
            return
        if self.cursor is None:
            self._list()
        else:
            self._watch()

    # -- results --------------------------------------------------------------

    def _listed(self, result):
        leases, index = result
        own = self._own_subnet()
        fresh = {}
        events = []
        for lease in leases:
            if lease.subnet == own:
                if self._own_sink is not None:
                    self._own_sink(LeaseEvent(ADDED, lease))
                continue
            fresh[lease.subnet] = lease
            old = self.known.get(lease.subnet)
            if old is None or old.attrs != lease.attrs:
                events.append(LeaseEvent(ADDED, lease))
        for subnet, old in self.known.items():
            if subnet not in fresh:
                events.append(LeaseEvent(REMOVED, old))
        if own is not None and self._own_sink is not None and all(l.subnet != own for l in leases):
            self._own_sink(LeaseEvent(REMOVED, Lease(subnet=own, attrs=None)))
        self.known = fresh
        self.cursor = index
        if events:
            self._emit(events)

    def _watched(self, result):
        event, index = result
        self.cursor = index
        if event is None:
            return
        self.last_event_at = self._reactor.seconds()
        subnet = event.lease.subnet
        if subnet == self._own_subnet():
            if self._own_sink is not None:
                self._own_sink(event)
            return
        if event.kind == REMOVED:
            old = self.known.pop(subnet, None)
            if old is None:
                return  # never known to us: nothing to undo
            self._emit([LeaseEvent(REMOVED, old)])
        else:
            old = self.known.get(subnet)
            self.known[subnet] = event.lease
            if old is None or old.attrs != event.lease.attrs:
                self._emit([event])

    def _emit(self, events):
        try:
            self._sink(events)
        except Exception:
            self.log.failure("Backend failed to handle {n} lease events", n=len(events))

