# -*- test-case-name: tests.test_keeper -*-
"""
The lease keeper: an explicit state machine that holds our lease.

States: HELD (a renewal timer runs, or none for a reservation) -> RENEWING ->
HELD ; RENEWING fails with a transport/etcd error -> RETRYING (backoff) -> RENEWING ;
our lease gone or held by another host -> REACQUIRING -> HELD ; stop() -> STOPPED.

- The renewal is scheduled from the TTL etcd returned (re-read on every renewal),
  on the injected clock: C{ttl - margin} (or C{ttl / 2} when the TTL is shorter than
  the margin), never from an absolute expiry compared with the local wall clock, so a
  skewed clock cannot make us lose the lease. The daemon gives the keeper a
  L{flannel_tw.monoclock.MonotonicClock}: a wall-clock step in either direction
  neither delays a renewal past the TTL nor brings it forward.
- Health: L{LeaseKeeper.renewal_late} is True once a renewal round (the first attempt
  to the next success) has lasted longer than C{grace} (300 s), or longer than half of
  the lease's remaining life when the round began, whichever is shorter; /healthz then
  fails although the lease may still be valid, so that an etcd answering errors is
  noticed while there is time to act (with the defaults: 5 minutes after the first
  failure, 55 minutes before the lease would expire).
- Reservations (no TTL) are never renewed and never given a TTL.
- Renewal is conditional on our own value: another host's lease is never overwritten.
- When the lease is deleted or expires, we re-acquire, preferring the same subnet
  (create-only). If another host now holds it, we get another subnet and the
  daemon is told through C{on_new_lease(new, old)}, loudly.
"""
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from flannel_tw.etcd.errors import KeyNotFound, TestFailed
from flannel_tw.events import REMOVED
from flannel_tw.subnet.backoff import make_backoff

HELD, RENEWING, RETRYING, REACQUIRING, STOPPED = (
    "held", "renewing", "retrying", "reacquiring", "stopped")


RENEWAL_GRACE = 300.0


def renewal_delay(ttl, margin):
    """Seconds until renewal for a lease etcd says lives C{ttl} more seconds; None = never."""
    if ttl is None:
        return None
    return ttl - margin if ttl > margin else ttl / 2.0


class LeaseKeeper:
    """
    @param reactor: C{IReactorTime}, for wall-clock timestamps (C{last_renewal_at}).
    @param clock: C{IReactorTime} for every timer and duration (default: C{reactor});
        a monotonic one in the daemon.
    @param margin: renewal margin in seconds (flanneld's --subnet-lease-renew-margin * 60).
    @param on_new_lease: called as C{on_new_lease(new_lease, old_lease)} when the subnet changes.
    @param grace: seconds a renewal may keep failing before L{renewal_late} (at most).
    """

    log = Logger()

    def __init__(self, reactor, manager, config, attrs, lease, margin, on_new_lease=None,
                 backoff=None, clock=None, grace=RENEWAL_GRACE):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._manager = manager
        self._config = config
        self._attrs = attrs
        self.lease = lease
        self._margin = margin
        self._on_new_lease = on_new_lease
        self._backoff = backoff or make_backoff(initial=1.0, maximum=60.0)
        self.state = HELD
        self.lease_lost = False   # True from "gone or not ours" until re-acquired
        self.failures = 0
        self.renewals = 0
        self.renewal_failures = 0
        self.last_renewal_at = None
        self._timer = None
        self._pending = None
        self._grace = grace
        self._round_started = None   # clock time of the first attempt of a renewal round
        self._round_limit = None     # the round is late after this clock time
        self._valid_until = None     # clock time by which the lease expires at the latest

    def start(self):
        self._set_valid(self.lease, self._clock.seconds())
        self._schedule(renewal_delay(self.lease.ttl, self._margin))

    def _set_valid(self, lease, sent_at):
        self._valid_until = None if lease.ttl is None else sent_at + lease.ttl

    @property
    def renewal_failing_for(self):
        """Seconds since the current renewal round began (None when none runs)."""
        if self._round_started is None:
            return None
        return self._clock.seconds() - self._round_started

    @property
    def lease_expires_in(self):
        """Seconds the lease has left at most, by etcd's TTL (None: reservation or unknown)."""
        if self._valid_until is None:
            return None
        return self._valid_until - self._clock.seconds()

    def renewal_late(self):
        """True when the renewal round has failed for too long (see the module docstring)."""
        return self._round_limit is not None and self._clock.seconds() > self._round_limit

    def stop(self):
        self.state = STOPPED
        self._cancel_timer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    @property
    def next_renewal_in(self):
        """Seconds to the scheduled renewal or retry, None when nothing is scheduled."""
        if self._timer is None or not self._timer.active():
            return None
        return self._timer.getTime() - self._clock.seconds()

    def own_event(self, event):
        """A watcher event about our own subnet."""
        if self.state in (STOPPED, REACQUIRING):
            return
        if event.kind == REMOVED:
            self.log.warn("Our lease {subnet} was deleted or expired in etcd; re-acquiring",
                          subnet=self.lease.subnet)
            self._reacquire(prefer=self.lease.subnet)
        elif event.lease.attrs is not None and event.lease.attrs.public_ip != self._attrs.public_ip:
            self.log.critical(
                "Our subnet {subnet} is now held by another host ({other}); acquiring another "
                "subnet", subnet=self.lease.subnet, other=event.lease.attrs.public_ip)
            self._reacquire(prefer=None)
        elif self.state == HELD and event.lease.ttl is not None and not self.lease.is_reservation:
            # flanneld: an added event for our own key resets the expiration and the timer.
            self.lease = replace(self.lease, ttl=event.lease.ttl,
                                 modified_index=event.lease.modified_index)
            self._set_valid(self.lease, self._clock.seconds())
            self._schedule(renewal_delay(event.lease.ttl, self._margin))

    # -- machinery ------------------------------------------------------------

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay, action=None):
        self._cancel_timer()
        if delay is None:
            return
        self._timer = self._clock.callLater(max(0.0, delay), action or self._renew)

    def _track(self, d, ok, fail):
        self._pending = d

        def _ok(result):
            if d is self._pending:
                self._pending = None
                ok(result)

        def _fail(f):
            if d is self._pending and not f.check(defer.CancelledError):
                self._pending = None
                fail(f)

        d.addCallbacks(_ok, _fail)
        d.addErrback(lambda f: self.log.failure("Lease keeper bug", f))

    def _end_round(self):
        self._round_started = self._round_limit = None

    def _renew(self):
        self._timer = None
        self.state = RENEWING
        now = self._clock.seconds()
        if self._round_started is None:
            self._round_started = now
            left = None if self._valid_until is None else self._valid_until - now
            self._round_limit = now + (self._grace if left is None
                                       else max(0.0, min(self._grace, left / 2.0)))
        self._sent_at = now
        self._track(defer.maybeDeferred(self._manager.renew_lease, self.lease),
                    self._renewed, self._renew_failed)

    def _renewed(self, lease):
        self.state = HELD
        self.failures = 0
        self._end_round()
        self._set_valid(lease, self._sent_at)
        self.renewals += 1
        self.last_renewal_at = self._reactor.seconds()
        self.lease = lease
        self.log.info("Lease {subnet} renewed, ttl {ttl}", subnet=lease.subnet, ttl=lease.ttl)
        self._schedule(renewal_delay(lease.ttl, self._margin))

    def _renew_failed(self, failure):
        self.renewal_failures += 1
        if failure.check(KeyNotFound, TestFailed):
            self.log.warn("Lease {subnet} is gone or no longer ours ({error}); re-acquiring",
                          subnet=self.lease.subnet, error=failure.value)
            self._reacquire(prefer=self.lease.subnet)
            return
        delay = self._backoff(self.failures)
        self.failures += 1
        self.state = RETRYING
        self.log.error("Error renewing lease (trying again in {delay:.0f}s): {error}",
                       delay=delay, error=failure.getErrorMessage())
        self._schedule(delay, self._renew)

    def _reacquire(self, prefer):
        self._cancel_timer()
        self._end_round()
        self._sent_at = self._clock.seconds()
        self.state = REACQUIRING
        self.lease_lost = True
        self._track(defer.maybeDeferred(self._manager.acquire_lease, self._config, self._attrs,
                                        prefer),
                    self._reacquired, lambda f: self._reacquire_failed(f, prefer))

    def _reacquired(self, lease):
        old, self.lease = self.lease, lease
        self._set_valid(lease, self._sent_at)
        self.state = HELD
        self.lease_lost = False
        self.failures = 0
        if lease.subnet != old.subnet:
            self.log.critical("Lease changed from {old} to {new}: subnet.env is rewritten; "
                              "containers on the old subnet must be restarted",
                              old=old.subnet, new=lease.subnet)
        else:
            self.log.info("Lease {subnet} re-acquired", subnet=lease.subnet)
        if self._on_new_lease is not None:
            try:
                self._on_new_lease(lease, old)
            except Exception:
                self.log.failure("Handling the new lease {subnet} failed", subnet=lease.subnet)
        self._schedule(renewal_delay(lease.ttl, self._margin))

    def _reacquire_failed(self, failure, prefer):
        delay = self._backoff(self.failures)
        self.failures += 1
        self.state = RETRYING
        self.log.error("Error re-acquiring a lease (trying again in {delay:.0f}s): {error}",
                       delay=delay, error=failure.getErrorMessage())
        self._schedule(delay, lambda: self._reacquire(prefer))
