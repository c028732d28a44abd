# -*- test-case-name: tests.unit.test_watch, tests.unit.test_machine -*-
"""
The lease watcher: an explicit state machine that keeps a view of every lease in etcd
and reports changes of the other hosts' routable leases to a sink (the backend).

States (L{TRANSITIONS}, run by L{flannel_tw.lease.machine.Machine}): IDLE -> LISTING
-> WATCHING (loop) ; index cleared or went back -> LISTING ; any other error -> BACKOFF
-> (LISTING or WATCHING) ; stop() -> STOPPED from anywhere.

- LISTING: list the leases, diff against what we route (added for new or changed
  leases, changed BackendData included; removed for vanished ones), cursor = the
  index etcd returned.
- WATCHING: one long-poll at cursor+1; an event moves the cursor to its index. An
  event that cannot be parsed is stepped past (the manager logs it once).
- 401 EventIndexCleared: log and go to LISTING (re-list and diff).
- EtcdIndexWentBack (etcd wiped or restored: its index is below our cursor, and a v2
  watch there would wait silently until the index caught up): log and re-list, so that
  a missing own lease reaches the keeper and is re-created. Peers missing from that list
  keep their routes (see "wiped etcd" below).
- Other errors: BACKOFF with a capped, jittered delay, then retry from the same
  cursor (or LISTING if we never listed, or a re-list is due).

What is routed (L{flannel_tw.model.leasecheck}): only leases whose key is exactly flanneld's
form, inside C{network} with C{subnet_len}, not overlapping our own lease, with a usable
unicast PublicIP that is not ours. Anything else is skipped with one warning per lease
(C{skipped} counts them by reason, bounded) and, if it replaced a routed lease, that
route is removed; the rest of the cluster keeps working.

Dual-stack (C{ipv6_network} given: the config enables IPv6): a lease's v6 part is
checked too (L{flannel_tw.model.leasecheck.ipv6_part_problem}); a bad one is not routed
(one warning) and the lease reaches the sink as its v4 part alone (L{ipv4_part}), as
does every lease when the config is IPv4-only.

Our own subnet is never reported to the sink; its events (exact key only: an alias
such as C{x10.5.1.0-24} cannot fake them) go to C{own_sink} (the lease keeper), so
"our lease was deleted" triggers re-acquisition. The watcher keeps the latest value of
every exact key (C{leases}), ours included, so when our lease moves to another subnet
(L{own_subnet_changed}), whoever now holds the old subnet becomes a normal peer at once
rather than at its next renewal.

A wiped etcd: after EtcdIndexWentBack, a routed peer missing from the fresh list is
kept (C{retained}) until it is gone for good, which means: still absent from etcd when
its lease would have expired by the TTL we last saw for it (plus L{RETAIN_SLACK}); a
reservation (no TTL) or a lease we never saw a TTL for gets one full lease TTL
(L{RETAIN_NO_TTL}). A live flanneld peer renews (re-creating its key) before that
moment, a flannel-tw peer re-creates its key as soon as it notices the wipe, and a
peer that re-appears stays routed without a gap. When the earliest deadline comes the
watcher re-lists (interrupting an idle watch) and removes the peers still absent; a
removal or expiry event from etcd is believed at once.
"""
from dataclasses import replace

from twisted.internet import defer
from twisted.logger import Logger

from flannel_tw.etcd.errors import EtcdIndexWentBack, EventIndexCleared
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.model.lease import Lease, subnet_to_key
from flannel_tw.model.leasecheck import SkipMemory, ipv6_part_problem, lease_problem
from flannel_tw.model.backoff import make_backoff
from flannel_tw.lease.machine import Machine, check_table
from flannel_tw.lease.status import WatcherStatus

IDLE, LISTING, WATCHING, BACKOFF, STOPPED = "idle", "listing", "watching", "backoff", "stopped"
STATES = (IDLE, LISTING, WATCHING, BACKOFF, STOPPED)
_LIVE = (IDLE, LISTING, WATCHING, BACKOFF)

# Inputs: start, stop; the answers listed, watched, cleared (EventIndexCleared),
# went_back (EtcdIndexWentBack), error; the backoff timer: retry_list (no cursor, or a
# re-list is due) or retry_watch; retention_due (a wiped peer's deadline); own_moved
# (our lease moved to another subnet).
TRANSITIONS = {(state, "stop"): (STOPPED, "_halt") for state in STATES}
TRANSITIONS.update({(state, "start"): (state, None) for state in STATES})
TRANSITIONS.update({(state, "own_moved"): (state, "_own_moved") for state in _LIVE})
TRANSITIONS.update({
    (IDLE, "start"): (LISTING, "_send_list"),
    (STOPPED, "own_moved"): (STOPPED, None),
    (LISTING, "listed"): (WATCHING, "_on_listed"),
    (WATCHING, "watched"): (WATCHING, "_on_watched"),
    (BACKOFF, "retry_list"): (LISTING, "_send_list"),
    (BACKOFF, "retry_watch"): (WATCHING, "_send_watch"),
    (WATCHING, "retention_due"): (LISTING, "_interrupt_and_list"),
    (BACKOFF, "retention_due"): (BACKOFF, "_relist_next"),
    (LISTING, "retention_due"): (LISTING, None),  # the list in flight is judged on return
})
for _state in (LISTING, WATCHING):
    TRANSITIONS.update({
        (_state, "cleared"): (LISTING, "_resync"),
        (_state, "went_back"): (LISTING, "_wiped_resync"),
        (_state, "error"): (BACKOFF, "_back_off"),
    })

RETAIN_SLACK = 60.0       # seconds past a wiped peer's expiry (flanneld retries renewals each minute)
RETAIN_NO_TTL = 86400.0   # a wiped reservation (no TTL) is kept one lease TTL (subnetTTL)


def _memory_key(lease):
    return lease.key if lease.key is not None else lease.key_name


def ipv4_part(lease):
    """
    The lease as an IPv4-only host sees it: without its v6 part (C{ipv6_subnet},
    C{public_ipv6}, C{backend_v6_data}) and under its v4 key, so backends of an IPv4-only
    config never meet a v6 field (flanneld v0.20 crashes there).
    """
    if lease.ipv6_subnet is None and lease.attrs is not None and not lease.attrs.dual_stack:
        return lease
    attrs = lease.attrs
    if attrs is not None:
        attrs = replace(attrs, public_ipv6=None, backend_v6_data=None)
    return replace(lease, attrs=attrs, ipv6_subnet=None, key=subnet_to_key(lease.subnet))


class LeaseWatcher:
    """
    @param reactor: an C{IReactorTime}.
    @param manager: an L{ISubnetManager}.
    @param sink: called with a list of L{LeaseEvent} about other hosts.
    @param own_subnet: a callable returning our current subnet (or None).
    @param own_sink: called with each L{LeaseEvent} about our own subnet.
    @param network: the config's Network (None: not checked).
    @param subnet_len: the config's SubnetLen (None: not checked).
    @param own_public_ip: our PublicIP; a lease with it is not routed (None: not checked).
    @param ipv6_network: the config's IPv6Network when IPv6 is on: the v6 parts of the
        leases are checked (L{lease_problem}) and handed to the sink. None (IPv4 only):
        the sink gets the v4 part of every lease alone (no C{ipv6_subnet}, no
        C{public_ipv6}, no C{backend_v6_data}), so a dual-stack lease is an IPv4 peer.
    @param ipv6_subnet_len: the config's IPv6SubnetLen.
    @param own_ipv6_subnet: a callable returning our current v6 subnet (or None).
    @param own_public_ipv6: our PublicIPv6 (None: not checked).
    """

    log = Logger()

    def __init__(self, reactor, manager, sink, own_subnet=lambda: None, own_sink=None,
                 backoff=None, network=None, subnet_len=None, own_public_ip=None,
                 ipv6_network=None, ipv6_subnet_len=None, own_ipv6_subnet=lambda: None,
                 own_public_ipv6=None):
        self._reactor = reactor
        self._manager = manager
        self._sink = sink
        self._own_subnet = own_subnet
        self._own_sink = own_sink
        self._backoff = backoff or make_backoff()
        self._network = network
        self._subnet_len = subnet_len
        self._own_public_ip = own_public_ip
        self._ipv6_network = ipv6_network
        self._ipv6_subnet_len = ipv6_subnet_len
        self._own_ipv6_subnet = own_ipv6_subnet
        self._own_public_ipv6 = own_public_ipv6
        self._machine = Machine(self, TRANSITIONS, IDLE)
        self.leases = {}          # subnet -> latest Lease under an exact key (ours included)
        self.known = {}           # subnet -> Lease routed by the sink (other hosts only)
        self.retained = {}        # subnet -> reactor time: a wiped peer's route kept until then
        self.skipped = SkipMemory()
        self.cursor = None
        self.failures = 0
        self.resyncs = 0
        self.last_event_at = None
        self.last_success_at = None
        self._expires = {}        # subnet -> reactor time its lease expires (None: no TTL)
        self._wiped = False       # etcd's index went back: the next list retains peers
        self._relist_due = False  # a retained peer's deadline passed: list next
        self._pending = None      # the Deferred of the request in flight
        self._delayed = None      # the IDelayedCall of a BACKOFF
        self._retain_timer = None

    # -- public ---------------------------------------------------------------

    @property
    def state(self):
        return self._machine.state

    def start(self):
        self._machine.fire("start")

    def status(self):
        """A L{WatcherStatus} snapshot."""
        return WatcherStatus(state=self.state, failures=self.failures, resyncs=self.resyncs,
                             last_event_at=self.last_event_at, peers=len(self.known),
                             retained=len(self.retained))

    def skipped_counts(self):
        """Leases seen and not routed, by reason (L{flannel_tw.model.leasecheck.REASONS})."""
        return dict(self.skipped.counts)

    def stop(self):
        self._machine.fire("stop")

    def own_subnet_changed(self, old):
        """
        Our lease moved from C{old} to C{own_subnet()}: the latest lease stored for
        C{old} (another host took it) becomes a peer route now, if it may be routed;
        the new subnet stops being a peer.
        """
        self._machine.fire("own_moved", old)

    # -- inputs ---------------------------------------------------------------

    def _request(self, d, answered):
        self._pending = d

        def ok(result):
            if d is self._pending:
                self._pending = None
                self.failures = 0
                self.last_success_at = self._reactor.seconds()
                self._machine.fire(answered, result)

        def failed(failure):
            if d is self._pending and not failure.check(defer.CancelledError):
                self._pending = None
                self._machine.fire("cleared" if failure.check(EventIndexCleared) else
                                   "went_back" if failure.check(EtcdIndexWentBack) else
                                   "error", failure)

        d.addCallbacks(ok, failed)
        d.addErrback(lambda f: self.log.failure("Lease watcher bug", f))

    def _retry(self):
        self._delayed = None
        self._machine.fire("retry_list" if self.cursor is None or self._relist_due
                           else "retry_watch")

    def _retention_due(self):
        """A retained peer's time is up: re-list (now if idle in a watch) to see if it is
        back; the list removes the ones still absent."""
        self._retain_timer = None
        self._machine.fire("retention_due")

    # -- outputs --------------------------------------------------------------

    def _halt(self):
        for timer in (self._delayed, self._retain_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._delayed = self._retain_timer = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()

    def _own_moved(self, old):
        own = self._own_subnet()
        events = self._diff([s for s in (old, own) if s is not None], own)
        if events:
            self._emit(events)

    def _send_list(self):
        self._relist_due = False
        self._request(defer.maybeDeferred(self._manager.list_leases), "listed")

    def _send_watch(self):
        self._request(defer.maybeDeferred(self._manager.watch_leases, self.cursor + 1),
                      "watched")

    def _on_listed(self, result):
        self._listed(result)
        self._send_watch()

    def _on_watched(self, result):
        self._watched(result)
        self._send_watch()

    def _resync(self, failure):
        self.log.warn("Watch of subnet leases failed because etcd index outside history "
                      "window; re-listing ({error})", error=failure.value)
        self.resyncs += 1
        self._send_list()

    def _wiped_resync(self, failure):
        self.log.error("etcd's index went back from {cursor} to {index}: the etcd cluster "
                       "was wiped or restored from a backup; re-listing the leases (peers "
                       "missing from etcd keep their routes until their leases would "
                       "have expired)",
                       cursor=self.cursor, index=failure.value.etcd_index)
        self.resyncs += 1
        self.cursor = None
        self._wiped = True
        self._send_list()

    def _back_off(self, failure):
        delay = self._backoff(self.failures)
        self.failures += 1
        self.log.warn("Watch subnets: {error}; retrying in {delay:.1f}s (failure {n})",
                      error=failure.getErrorMessage() or failure.type.__name__, delay=delay,
                      n=self.failures)
        self._delayed = self._reactor.callLater(delay, self._retry)

    def _interrupt_and_list(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        self._send_list()

    def _relist_next(self):
        self._relist_due = True

    # -- results --------------------------------------------------------------

    def _exact(self, lease):
        """True when the lease's key is exactly flanneld's form; else warn once."""
        if lease.is_canonical:
            return True
        if self.skipped.note(_memory_key(lease), "bad-key"):
            # the text goes in "error": the log rate limit tells distinct faults apart by it
            self.log.warn("Ignoring lease {key} from etcd: {error}; not routed", key=lease.key,
                          subnet=lease.subnet, reason="bad-key",
                          error="the key %r is not in flanneld's exact form A.B.C.D-N (it "
                                "would alias %s)" % (lease.key, lease.subnet))
        return False

    def _other_key_of_ours(self, lease, own):
        """
        True for a lease on our v4 subnet under another key than ours (another v6 part,
        or the other key form): another host that took our subnet at the same time under
        a different key (it gives way: L{flannel_tw.lease.manager}), or our own old key;
        warned about once, never routed, never handed to the keeper as ours.
        """
        if own is None or lease.subnet != own:
            return False
        ours = subnet_to_key(own, self._own_ipv6_subnet())
        if lease.key_name == ours:
            return False
        if lease.attrs is not None and self.skipped.note(_memory_key(lease), "overlaps-own"):
            self.log.warn("Ignoring lease {key} from etcd: it is on our subnet under "
                          "another key than ours ({ours}); not routed", key=lease.key_name,
                          ours=ours, reason="overlaps-own")
        return True

    def _expiry(self, lease, now):
        return None if lease.ttl is None else now + lease.ttl

    def _listed(self, result):
        leases, index = result
        now = self._reactor.seconds()
        own = self._own_subnet()
        fresh = {}
        for lease in leases:
            if self._exact(lease) and not self._other_key_of_ours(lease, own):
                fresh[lease.subnet] = lease
        self.skipped.retain([_memory_key(l) for l in leases])
        if self._wiped:
            self._wiped = False
            for subnet in self.known:
                if subnet not in fresh:
                    self.retained[subnet] = self._retain_until(subnet, now)
        for subnet, until in list(self.retained.items()):
            if subnet in fresh or until <= now:
                del self.retained[subnet]
        self._expires = {s: self._expiry(l, now) for s, l in fresh.items()}
        self._expires.update({s: until for s, until in self.retained.items()})
        self.leases = fresh
        if own is not None and self._own_sink is not None:
            mine = fresh.get(own)
            self._own_sink(LeaseEvent(ADDED, mine) if mine is not None
                           else LeaseEvent(REMOVED, Lease(subnet=own, attrs=None)))
            own = self._own_subnet()   # a keeper answering at once may have moved us
        events = self._diff(list(fresh) + list(self.known), own)
        self.cursor = index
        self._schedule_retention()
        if events:
            self._emit(events)

    def _watched(self, result):
        event, index = result
        self.cursor = index
        if event is None:
            return
        self.last_event_at = self._reactor.seconds()
        lease = event.lease
        if event.kind == REMOVED:
            self.skipped.forget(_memory_key(lease))
        if not lease.is_canonical:
            if event.kind != REMOVED:
                self._exact(lease)
            return  # an alias never touches the lease it names
        if self._other_key_of_ours(lease, self._own_subnet()):
            return  # neither ours nor a peer: it never reaches the keeper
        subnet = lease.subnet
        stored = self.leases.get(subnet)
        if (event.kind == REMOVED and stored is not None
                and stored.key_name != lease.key_name):
            # another key of the same v4 subnet went (e.g. a host's IPv4-only key replaced
            # by its dual-stack one): what we hold for the subnet is unchanged
            return
        if event.kind == REMOVED:
            self.leases.pop(subnet, None)
            self._expires.pop(subnet, None)
        else:
            self.leases[subnet] = lease
            self._expires[subnet] = self._expiry(lease, self._reactor.seconds())
        if self.retained.pop(subnet, None) is not None:
            self._schedule_retention()
        own = self._own_subnet()
        if subnet == own:
            if self._own_sink is not None:
                self._own_sink(event)
            return
        events = self._diff([subnet], own)
        if events:
            self._emit(events)

    def _wanted(self, subnet, own):
        """The lease the sink should route for C{subnet}, or None."""
        if subnet == own:
            return None
        lease = self.leases.get(subnet)
        if lease is None:
            return self.known.get(subnet) if subnet in self.retained else None
        problem = lease_problem(lease, self._network, self._subnet_len, own,
                                self._own_public_ip)
        if problem is None and self._ipv6_network is None:
            self.skipped.forget(_memory_key(lease))
            return ipv4_part(lease)
        if problem is None:
            problem6 = ipv6_part_problem(lease, self._ipv6_network, self._ipv6_subnet_len, own,
                                         self._own_ipv6_subnet(), self._own_public_ipv6)
            if problem6 is None:
                self.skipped.forget(_memory_key(lease))
                return lease
            # each side routing what it can: the v4 part is routed, the v6 part is not
            reason, message = problem6
            if self.skipped.note(_memory_key(lease), reason):
                self.log.warn("Not routing the IPv6 part of lease {subnet} from etcd: {error}; "
                              "its IPv4 part is routed", subnet=lease.key_name, error=message,
                              reason=reason)
            return ipv4_part(lease)
        reason, message = problem
        if self.skipped.note(_memory_key(lease), reason):
            if reason == "own-public-ip":   # our own new lease, seen before the keeper has it
                self.log.info("Not routing {subnet}: {error}", subnet=subnet, error=message)
            else:
                self.log.warn("Ignoring lease {subnet} from etcd: {error}; not routed",
                              subnet=subnet, error=message, reason=reason)
        return None

    def _diff(self, subnets, own):
        """Bring C{known} in line with C{_wanted} for C{subnets}: the events for the sink."""
        events = []
        for subnet in dict.fromkeys(subnets):
            want = self._wanted(subnet, own)
            have = self.known.get(subnet)
            if want is None:
                if have is not None:
                    # (also when it is our subnet now: backends skip that event, having
                    # dropped the entry when they took the subnet; the sink stays in step)
                    del self.known[subnet]
                    events.append(LeaseEvent(REMOVED, have))
            elif (have is None or have.attrs != want.attrs
                  or have.ipv6_subnet != want.ipv6_subnet):
                self.known[subnet] = want
                events.append(LeaseEvent(ADDED, want))
            else:
                self.known[subnet] = want
        return events

    # -- a wiped etcd ------------------------------------------------------------

    def _retain_until(self, subnet, now):
        expires = self._expires.get(subnet)
        if expires is None:
            return now + RETAIN_NO_TTL
        return max(now, expires + RETAIN_SLACK)

    def _schedule_retention(self):
        if self._retain_timer is not None and self._retain_timer.active():
            self._retain_timer.cancel()
        self._retain_timer = None
        if not self.retained or self.state == STOPPED:
            return
        due = min(self.retained.values())
        self._retain_timer = self._reactor.callLater(max(0.0, due - self._reactor.seconds()),
                                                     self._retention_due)

    def _emit(self, events):
        try:
            self._sink(events)
        except Exception:
            self.log.failure("Backend failed to handle {n} lease events", n=len(events))


check_table(TRANSITIONS, STATES, IDLE, LeaseWatcher)
