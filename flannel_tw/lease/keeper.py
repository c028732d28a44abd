# -*- test-case-name: tests.unit.test_keeper -*-
"""
The lease keeper: an explicit state machine that holds our lease (L{TRANSITIONS}, run by
L{flannel_tw.lease.machine.Machine}).

States, one meaning each:
  HELD         the lease is ours; a renewal timer runs (none for a reservation)
  RENEWING     a renewal (compare-and-swap on our last write) is in flight
  RETRYING     a renewal failed (etcd error): waiting to try again (backoff)
  INSPECTING   our compare-and-swap failed: reading the key to see who wrote it
  DEFENDING    writing our lease back over a same-PublicIP writer (once)
  REACQUIRING  the lease is gone or another host's: acquiring one
  LOST         acquiring failed: waiting to try again (backoff)
  CONFLICT     another live holder has our PublicIP: standing down
  STOPPED      stopped
The lease counts as lost (L{LeaseKeeper.lease_lost}) in REACQUIRING, LOST and CONFLICT.

- The renewal is scheduled from the TTL etcd returned (re-read on every renewal),
  on the injected clock: C{ttl - margin} (or C{ttl / 2} when the TTL is shorter than
  the margin), never from an absolute expiry compared with the local wall clock, so a
  skewed clock cannot make us lose the lease. The daemon gives the keeper a
  L{flannel_tw.kernel.monoclock.MonotonicClock}: a wall-clock step in either direction
  neither delays a renewal past the TTL nor brings it forward.
- Health: L{LeaseKeeper.renewal_late} is True once a renewal round (the first attempt
  to the next success) has lasted longer than C{grace} (300 s), or longer than half of
  the lease's remaining life when the round began, whichever is shorter; /healthz then
  fails although the lease may still be valid, so that an etcd answering errors is
  noticed while there is time to act (with the defaults: 5 minutes after the first
  failure, 55 minutes before the lease would expire).
- Reservations (no TTL) are never renewed and never given a TTL.
- Two hosts must not share a PublicIP (and so one lease). Every write of ours is a
  compare-and-swap on the modifiedIndex of our previous write, so a write by anyone
  else to our key is seen: by the watcher (an event for our key with a newer index
  while no write of ours is in flight) or by a failed renewal (then the key is read).
  If that write carries another PublicIP, the subnet is another host's now: we take
  another one. If it carries our PublicIP, another live process claims our PublicIP.
  The holder that was there first writes the lease back once (DEFENDING, loudly);
  a keeper that reused an existing lease less than C{PROBATION} (30 s) ago, or that
  already wrote back once, stands down instead: CONFLICT, no more writes, the
  lease counts as lost (/healthz 503), a critical log naming both, until the lease is
  gone from etcd (then it is re-acquired). So a second host started with our PublicIP
  reuses the lease, sees the first host's write-back at once and stands down, and two
  long-running hosts write at most twice before one of them stands down. A key whose
  index is older than our last write (etcd restored from a backup) is taken back
  quietly with a compare-and-swap on that index.
- Renewal is conditional on our own value: another host's lease is never overwritten.
- When the lease is deleted or expires, we re-acquire, preferring the same subnet
  (create-only). If another host now holds it, we get another subnet and the
  daemon is told through C{on_new_lease(new, old)}, loudly.

(About 440 lines: most is this contract and the log texts; the table is in
L{flannel_tw.lease.keeper_table}, the engine in L{flannel_tw.lease.machine}.)
"""
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from flannel_tw.etcd.errors import KeyNotFound, TestFailed
from flannel_tw.model.events import REMOVED
from flannel_tw.model.backoff import make_backoff
from flannel_tw.lease.keeper_table import (  # noqa: F401 (the states are the keeper's API)
    CONFLICT, DEFENDING, HELD, INSPECTING, LOST, REACQUIRING, RENEWING, RETRYING, STATES,
    STOPPED, TRANSITIONS)
from flannel_tw.lease.machine import Machine, check_table
from flannel_tw.lease.status import KeeperStatus

PROBATION = 30.0        # seconds after reusing a lease in which we yield to its live holder
RENEWAL_GRACE = 300.0   # seconds a renewal may fail before /healthz fails (at most)


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
    @param probation: seconds after reusing an existing lease (the manager's
        C{reused_leases}) in which a same-PublicIP writer makes us stand down.
    """

    log = Logger()

    def __init__(self, reactor, manager, config, attrs, lease, margin, on_new_lease=None,
                 backoff=None, clock=None, grace=RENEWAL_GRACE, probation=PROBATION):
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._manager = manager
        self._config = config
        self._attrs = attrs
        self.lease = lease
        self._margin = margin
        self._on_new_lease = on_new_lease
        self._backoff = backoff or make_backoff(initial=1.0, maximum=60.0)
        self._machine = Machine(self, TRANSITIONS, HELD)
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
        self._sent_at = None
        self._prefer = None          # the subnet a re-acquisition asks for first
        self._prefer_v6 = None       # and the v6 part it asks for (dual-stack)
        self._probation = probation
        self._probation_until = None  # a reused lease: stand down to a live holder until then
        self._defended = False        # wrote our lease back over a same-PublicIP writer
        self.conflicts = 0

    # -- public ---------------------------------------------------------------

    @property
    def state(self):
        return self._machine.state

    @property
    def lease_lost(self):
        """True from "gone or not ours" until re-acquired."""
        return self.state in (REACQUIRING, LOST, CONFLICT)

    def start(self):
        self._machine.fire("start")

    def stop(self):
        self._machine.fire("stop")

    def own_event(self, event):
        """A watcher event about our own subnet."""
        self._machine.fire(self._classify(event), event.lease)

    def status(self):
        """A L{KeeperStatus} snapshot; C{lease_ok} is what /healthz judges."""
        return KeeperStatus(
            state=self.state,
            lease_ok=(self.state in (HELD, RENEWING, RETRYING, INSPECTING, DEFENDING)
                      and not self.renewal_late()),
            renewals=self.renewals, renewal_failures=self.renewal_failures,
            last_renewal_at=self.last_renewal_at, renewal_failing_for=self.renewal_failing_for,
            lease_expires_in=self.lease_expires_in)

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

    @property
    def next_renewal_in(self):
        """Seconds to the scheduled renewal or retry, None when nothing is scheduled."""
        if self._timer is None or not self._timer.active():
            return None
        return self._timer.getTime() - self._clock.seconds()

    # -- inputs -----------------------------------------------------------------

    def _classify(self, event):
        if event.kind == REMOVED:
            return "ev_removed"
        lease = event.lease
        if lease.attrs is not None and lease.attrs.public_ip != self._attrs.public_ip:
            return "ev_taken"
        if self._newer_than_ours(lease):
            return "ev_stand_down" if self._must_stand_down() else "ev_defend"
        if (not self._older_than_ours(lease) and lease.ttl is not None
                and not self.lease.is_reservation):
            return "ev_refresh"
        return "ev_other"

    def _classify_read(self, lease):
        if lease.attrs is None or lease.attrs.public_ip != self._attrs.public_ip:
            return "read_taken"
        if self._older_than_ours(lease):
            return "read_restored"
        return "read_stand_down" if self._must_stand_down() else "read_defend"

    def _track(self, d, on_result, on_failure):
        """Fire C{on_result(result)} or C{on_failure(failure)}'s input for the request C{d}."""
        self._pending = d

        def ok(result):
            if d is self._pending:
                self._pending = None
                self._machine.fire(*on_result(result))

        def fail(f):
            if d is self._pending and not f.check(defer.CancelledError):
                self._pending = None
                self._machine.fire(*on_failure(f))

        d.addCallbacks(ok, fail)
        d.addErrback(lambda f: self.log.failure("Lease keeper bug", f))

    def _timer_due(self):
        self._timer = None
        self._machine.fire("due")

    # -- outputs: renewal ---------------------------------------------------------

    def _begin(self):
        self._set_valid(self.lease, self._clock.seconds())
        self._start_probation(self.lease)
        self._schedule(renewal_delay(self.lease.ttl, self._margin))

    def _send_renewal(self):
        self._cancel_timer()
        now = self._clock.seconds()
        if self._round_started is None:
            self._round_started = now
            left = None if self._valid_until is None else self._valid_until - now
            self._round_limit = now + (self._grace if left is None
                                       else max(0.0, min(self._grace, left / 2.0)))
        self._sent_at = now
        self._track(defer.maybeDeferred(self._manager.renew_lease, self.lease),
                    lambda lease: ("renewed", lease), _renewal_failure)

    def _renewed(self, lease):
        self._defended = False
        self._wrote_back(lease)

    def _wrote_back(self, lease):
        self.failures = 0
        self._end_round()
        self._set_valid(lease, self._sent_at)
        self.renewals += 1
        self.last_renewal_at = self._reactor.seconds()
        self.lease = lease
        self.log.info("Lease {subnet} renewed, ttl {ttl}", subnet=lease.subnet, ttl=lease.ttl)
        self._schedule(renewal_delay(lease.ttl, self._margin))

    def _retry_renewal(self, failure):
        self.renewal_failures += 1
        delay = self._backoff(self.failures)
        self.failures += 1
        self.log.error("Error renewing lease (trying again in {delay:.0f}s): {error}",
                       delay=delay, error=failure.getErrorMessage())
        self._schedule(delay)

    def _refresh(self, lease):
        # flanneld: an added event for our own key resets the expiration and the timer.
        self.lease = replace(self.lease, ttl=lease.ttl, modified_index=lease.modified_index)
        self._set_valid(self.lease, self._clock.seconds())
        self._schedule(renewal_delay(lease.ttl, self._margin))

    # -- outputs: who wrote our key ------------------------------------------------

    def _inspect(self, failure):
        """Our compare-and-swap failed: read the key and see who wrote it."""
        self.renewal_failures += 1
        self._track(defer.maybeDeferred(self._manager.get_lease, self.lease.subnet,
                                        self.lease.ipv6_subnet),
                    lambda lease: (self._classify_read(lease), lease),
                    lambda f: ("read_gone" if f.check(KeyNotFound) else "read_error", f))

    def _take_back(self, lease):
        self.log.warn("etcd's copy of our lease {subnet} (index {index}) is older than our "
                      "last write ({ours}): etcd was restored? Writing it again",
                      subnet=lease.subnet, index=lease.modified_index,
                      ours=self.lease.modified_index)
        self.lease = replace(self.lease, modified_index=lease.modified_index)
        self._send_renewal()

    def _in_probation(self):
        return self._probation_until is not None and self._clock.seconds() < self._probation_until

    def _must_stand_down(self):
        return self._in_probation() or self._defended

    def _foreign_write(self, lease):
        self.conflicts += 1
        if lease.ttl is not None:
            self._set_valid(lease, self._clock.seconds())  # it lives by that writer's TTL

    def _stand_down(self, lease):
        """Someone else wrote our key with our PublicIP: stand down (module docstring)."""
        in_probation = self._in_probation()
        self._foreign_write(lease)
        self._cancel_timer()
        self._end_round()
        self.log.critical(
            "Another live host or process with our PublicIP {public_ip} holds our lease "
            "{subnet}: it wrote the lease (etcd index {index}) after our write (index "
            "{ours}){why}. Two hosts must not share a PublicIP: standing down (no more "
            "writes from us, /healthz fails) until the lease is gone from etcd. Fix the "
            "duplicate PublicIP (--public-ip, --iface)", public_ip=self._attrs.public_ip,
            subnet=self.lease.subnet, index=lease.modified_index,
            ours=self.lease.modified_index,
            why=(" right after we reused it" if in_probation
                 else " again after we wrote it back once"))

    def _write_back(self, lease):
        """Someone else wrote our key with our PublicIP: write it back once."""
        self._foreign_write(lease)
        self.log.critical(
            "Another host or process with our PublicIP {public_ip} wrote our lease {subnet} "
            "(etcd index {index}, our last write {ours}). Two hosts must not share a PublicIP: "
            "writing our lease back once; the newcomer stands down",
            public_ip=self._attrs.public_ip, subnet=self.lease.subnet,
            index=lease.modified_index, ours=self.lease.modified_index)
        self._defended = True
        self.lease = replace(self.lease, modified_index=lease.modified_index)
        self._send_renewal()

    # -- outputs: re-acquisition -----------------------------------------------------

    def _lease_gone(self, failure):
        self.renewal_failures += 1
        self.log.warn("Lease {subnet} is gone or no longer ours ({error}); re-acquiring",
                      subnet=self.lease.subnet, error=failure.value)
        self._reacquire(self.lease.subnet)

    def _lease_gone_on_read(self, failure):
        self.log.warn("Lease {subnet} is gone ({error}); re-acquiring",
                      subnet=self.lease.subnet, error=failure.value)
        self._reacquire(self.lease.subnet)

    def _event_removed(self, lease):
        self.log.warn("Our lease {subnet} was deleted or expired in etcd; re-acquiring",
                      subnet=self.lease.subnet)
        self._reacquire(self.lease.subnet)

    def _taken(self, lease):
        """Another host's PublicIP is on our key (seen in an event or a read)."""
        self.log.critical(
            "Our subnet {subnet} is now held by another host ({other}); acquiring another "
            "subnet", subnet=self.lease.subnet,
            other=lease.attrs.public_ip if lease.attrs is not None else None)
        self._reacquire(None)

    def _reacquire(self, prefer):
        self._prefer = prefer
        # our v6 part goes with our v4 subnet (None when starting afresh)
        self._prefer_v6 = self.lease.ipv6_subnet if prefer is not None else None
        self._end_round()
        self._send_acquisition()

    def _send_acquisition(self):
        self._cancel_timer()
        self._sent_at = self._clock.seconds()
        self._track(defer.maybeDeferred(self._manager.acquire_lease, self._config, self._attrs,
                                        self._prefer, previous_ipv6_subnet=self._prefer_v6),
                    lambda lease: ("acquired", lease), lambda f: ("acquire_error", f))

    def _acquired(self, lease):
        old, self.lease = self.lease, lease
        self._set_valid(lease, self._sent_at)
        self._start_probation(lease)
        self._defended = False
        self.failures = 0
        if lease.subnet == old.subnet and lease.ipv6_subnet != old.ipv6_subnet:
            self.log.critical("Lease {subnet}: its IPv6 part changed from {old} to {new}: "
                              "subnet.env is rewritten; containers on the old IPv6 subnet "
                              "must be restarted", subnet=lease.subnet, old=old.ipv6_subnet,
                              new=lease.ipv6_subnet)
        elif lease.subnet != old.subnet:
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

    def _retry_acquisition(self, failure):
        delay = self._backoff(self.failures)
        self.failures += 1
        self.log.error("Error re-acquiring a lease (trying again in {delay:.0f}s): {error}",
                       delay=delay, error=failure.getErrorMessage())
        self._schedule(delay)

    def _halt(self):
        self._cancel_timer()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    # -- helpers -----------------------------------------------------------------

    def _set_valid(self, lease, sent_at):
        self._valid_until = None if lease.ttl is None else sent_at + lease.ttl

    def _end_round(self):
        self._round_started = self._round_limit = None

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay):
        self._cancel_timer()
        if delay is not None:
            self._timer = self._clock.callLater(max(0.0, delay), self._timer_due)

    def _start_probation(self, lease):
        reused = self._manager.reused_leases  # ISubnetManager: the last reuse
        if lease.modified_index is not None and reused.get(lease.subnet) == lease.modified_index:
            self._probation_until = self._clock.seconds() + self._probation
        else:
            self._probation_until = None

    def _newer_than_ours(self, lease):
        return (lease.modified_index is not None and self.lease.modified_index is not None
                and lease.modified_index > self.lease.modified_index)

    def _older_than_ours(self, lease):
        return (lease.modified_index is not None and self.lease.modified_index is not None
                and lease.modified_index < self.lease.modified_index)


def _renewal_failure(failure):
    if failure.check(TestFailed):
        return "renew_cas", failure
    if failure.check(KeyNotFound):
        return "renew_gone", failure
    return "renew_error", failure


check_table(TRANSITIONS, STATES, HELD, LeaseKeeper)
