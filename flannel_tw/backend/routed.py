# -*- test-case-name: tests.unit.test_hostgw -*-
"""
What the vxlan and host-gw backends share (flanneld's backend/route_network.go shape):
remote leases of our type become kernel entries, one peer per subnet.

- C{wanted}: subnet -> remote lease of our type, from lease events (pure bookkeeping on
  the reactor thread);
- C{installed}: subnet -> the entry the kernel has, as C{_apply_batch} returned it;
- kernel changes are batched: lease events mark subnets dirty (in the order of their
  first pending event); one flush takes every dirty subnet, works out what to remove and
  install (reactor thread, no kernel reads) and applies the whole batch in ONE thread call
  (C{_apply_batch}, one netlink socket); flushes and other kernel work run one at a time,
  in order (a C{DeferredLock}), so a removal never overtakes the addition before it, and
  events arriving while a batch is in the kernel make up the next one;
- a batch applies each entry on its own: a failure undoes that entry's partial work only;
- logs: each change is logged for small batches; bigger ones (the first lease list with
  thousands of peers) get one summary line, and at most L{LOG_EACH} error lines;
- a changed lease (new PublicIP or VtepMAC) removes the old entry, then installs the new;
- a failed install is logged naming the peer (once per distinct error) and retried by
  L{PeerBackend.resync} (host-gw runs that every 10 s);
- L{PeerBackend.reconcile}, called by the daemon with the watcher's first lease list,
  removes entries an earlier run left for leases that no longer exist.
- Leases of another backend type are ignored with one log line per lease.
"""
from ipaddress import IPv4Network

from twisted.internet import defer, threads
from twisted.logger import Logger

from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.model.leasecheck import lease_problem

LOG_EACH = 10       # batches up to this size log every change; bigger ones a summary


class PeerBackend:
    """
    Base of L{flannel_tw.backend.vxlan.backend.VxlanBackend} and
    L{flannel_tw.backend.hostgw.HostGwBackend}. Subclasses set C{name} and define
    C{_peer(lease)} (pure: lease -> entry, may raise ValueError),
    C{_apply_batch(changes)} (blocking, run in a thread: C{(have, target)} pairs -> per pair
    the entry installed, None, or the exception that failed it) and
    C{_remove_stale(leases)} (blocking).

    @param kernel: the subclass's L{flannel_tw.interfaces.IKernel}, by default a new
        C{kernel_class()} (tests may pass one bound to a namespace, or a fake).
    @param to_thread: C{(f, *args) -> Deferred}, default C{deferToThread}.
    """

    name = None
    kernel_class = None     # the subclass's kernel: a flannel_tw.kernel.batch.Kernel subclass
    log = Logger()

    def __init__(self, reactor, ext_iface, kernel=None, to_thread=None):
        self._reactor = reactor
        self.ext_iface = ext_iface
        self.kernel = kernel if kernel is not None else self.kernel_class()
        self._to_thread = to_thread or threads.deferToThread
        self._lock = defer.DeferredLock()
        self.mtu = None
        self.network = None
        self.own_subnet = None
        self.wanted = {}        # subnet -> Lease
        self.installed = {}     # subnet -> entry in the kernel
        self.failed = {}        # subnet -> last error logged
        self._ignored = set()   # subnets of other backend types, logged once
        self._busy = []         # Deferreds of kernel work in flight (for tests: settle())
        self._dirty = {}        # subnet -> None: waiting for the next flush, in order
        self._waiters = []      # Deferreds of _sync callers, fired after that flush
        self._flush_queued = False
        self._holding = False   # inside handle_events: flush once at the end
        self.batches = 0        # flushes that reached the kernel (tests, metrics)

    # -- running kernel work in order -------------------------------------------

    def _serial(self, f, *args):
        """Run C{f(*args)} (returning a Deferred or a value) after all earlier work."""
        d = self._lock.run(f, *args)
        self._busy.append(d)
        d.addBoth(self._done, d)
        return d

    def _done(self, result, d):
        self._busy.remove(d)
        return result

    def settle(self):
        """@return: Deferred firing when all kernel work queued so far is done."""
        return self._lock.run(lambda: None)

    def _kernel(self, f, *args):
        return self._to_thread(f, *args)

    # -- events -----------------------------------------------------------------

    def handle_events(self, events):
        """Apply a list of lease events: their kernel changes go in one batch."""
        self._holding = True
        try:
            for event in events:
                try:
                    self._event(event)
                except Exception:
                    self.log.failure("{backend} backend: bad lease event {event!r}",
                                     backend=self.name, event=event)
        finally:
            self._holding = False
        self._queue_flush()

    def _event(self, event):
        lease = event.lease
        subnet = lease.subnet
        if subnet == self.own_subnet:
            return
        if event.kind == ADDED:
            kind = lease.attrs.backend_type if lease.attrs is not None else ""
            if kind != self.name:
                if subnet not in self._ignored:
                    self._ignored.add(subnet)
                    self.log.info("Ignoring non-{backend} subnet {subnet} (PublicIP {ip}, "
                                  "type {kind!r})", backend=self.name, subnet=subnet,
                                  ip=lease.attrs.public_ip if lease.attrs else None,
                                  kind=kind or "udp")
                if self.wanted.pop(subnet, None) is not None:
                    self._sync(subnet)
                return
            self._ignored.discard(subnet)
            self.wanted[subnet] = lease
            self._sync(subnet)
        elif event.kind == REMOVED:
            self._ignored.discard(subnet)
            if self.wanted.pop(subnet, None) is not None:
                self._sync(subnet)

    def _sync(self, subnet):
        """
        Mark C{subnet} for the next flush (queued behind earlier kernel work).

        @return: Deferred firing with None once the flush that handles it is done; never
            fails (errors are logged).
        """
        if subnet not in self._dirty:
            self._dirty[subnet] = None
        d = defer.Deferred()
        self._waiters.append(d)
        if not self._holding:
            self._queue_flush()
        return d

    def _queue_flush(self):
        if self._waiters and not self._flush_queued:
            self._flush_queued = True
            self._serial(self._flush).addErrback(
                lambda f: self.log.failure("{backend} backend: batch failed", f,
                                           backend=self.name))

    def _flush(self):
        """Apply every dirty subnet in one thread call. Deferred firing when done."""
        self._flush_queued = False
        dirty, self._dirty = list(self._dirty), {}
        waiters, self._waiters = self._waiters, []
        plan = []
        for subnet in dirty:
            lease = self.wanted.get(subnet)
            have = self.installed.get(subnet)
            target = None
            if lease is not None:
                try:
                    target = self._peer(lease)
                except ValueError as e:
                    self._failure(subnet, lease, str(e))
            if have is not None and have == target:
                continue
            if have is None and target is None:
                if lease is None:
                    self.failed.pop(subnet, None)
                continue
            plan.append((subnet, lease, have, target))
        if not plan:
            d = defer.succeed(None)
        else:
            self.batches += 1
            started = self._reactor.seconds() if self._reactor is not None else None
            d = self._kernel(self._apply_batch, [(have, target) for _, _, have, target in plan])
            d.addCallbacks(self._applied, self._batch_failed, callbackArgs=(plan, started),
                           errbackArgs=(plan,))

        def wake(result):
            for w in waiters:
                w.callback(None)
            return result
        return d.addBoth(wake)

    def _applied(self, results, plan, started):
        installed, removed, errors = [], [], 0
        small = len(plan) <= LOG_EACH
        for (subnet, lease, have, target), result in zip(plan, results):
            if isinstance(result, Exception):
                self.installed.pop(subnet, None)
                errors += 1
                if small or errors <= LOG_EACH:
                    self._failure(subnet, lease, _message(result))
                else:
                    self.failed[subnet] = _message(result)
            elif result is None:
                self.installed.pop(subnet, None)
                self.failed.pop(subnet, None)
                removed.append(subnet)
                if small:
                    self.log.info("{backend} backend: removed {subnet}", backend=self.name,
                                  subnet=subnet)
            else:
                self.installed[subnet] = result
                installed.append(result)
                again = self.failed.pop(subnet, None) is not None
                if not small:
                    continue
                if again:
                    self.log.info("{backend} backend: {entry} installed after an earlier "
                                  "failure", backend=self.name, entry=result)
                else:
                    self.log.info("{backend} backend: installed {entry}", backend=self.name,
                                  entry=result)
        if not small:
            took = (self._reactor.seconds() - started) if started is not None else 0.0
            self.log.info("{backend} backend: batch of {n} changes in {took:.2f}s: "
                          "{installed} installed, {removed} removed, {errors} failed"
                          "{more}", backend=self.name, n=len(plan), took=took,
                          installed=len(installed), removed=len(removed), errors=errors,
                          more=(" (the first %d named above)" % LOG_EACH
                                if errors > LOG_EACH else ""))

    def _batch_failed(self, f, plan):
        """The thread call itself failed: no entry of the batch is known to be in place."""
        for subnet, lease, have, target in plan:
            self.installed.pop(subnet, None)
            self.failed[subnet] = f.getErrorMessage()
        self.log.error("{backend} backend: a batch of {n} changes failed: {error}",
                       backend=self.name, n=len(plan), error=f.getErrorMessage())

    def _failure(self, subnet, lease, message):
        if self.failed.get(subnet) != message:
            self.log.error("{backend} backend: cannot add peer {subnet} (PublicIP {ip}): "
                           "{error}", backend=self.name, subnet=subnet,
                           ip=lease.attrs.public_ip if lease else None, error=message)
        self.failed[subnet] = message

    def resync(self):
        """Retry every wanted peer that is not installed (one batch). Deferred firing when done."""
        ds = [self._sync(s) for s in sorted(self.wanted) if s not in self.installed]
        return defer.gatherResults(ds)

    # -- our own lease ----------------------------------------------------------

    def _own(self, config, lease):
        self.network = IPv4Network(config.network)
        self.own_subnet = lease.subnet
        if self.wanted.pop(lease.subnet, None) is not None:
            self._sync(lease.subnet)

    # -- leftovers from an earlier run -------------------------------------------

    def reconcile(self, leases):
        """
        The watcher's first full lease list (ours included): remove kernel entries left
        from an earlier run for leases that no longer exist. Queued before the events of
        that list are applied.

        @return: Deferred firing with the list of entries removed (errors are logged).
        """
        mine = [l for l in leases if l.subnet != self.own_subnet and l.attrs is not None
                and l.attrs.backend_type == self.name
                # a lease the watcher will not route keeps no stale entry alive
                and lease_problem(l, self.network, None, self.own_subnet) is None]
        d = self._serial(self._kernel, self._remove_stale, mine)

        def done(removed):
            for what in removed:
                self.log.info("{backend} backend: removed {what}, left from an earlier run "
                              "for a lease that no longer exists", backend=self.name, what=what)
            return removed

        def failed(f):
            self.log.error("{backend} backend: removing entries left from an earlier run "
                           "failed: {error}", backend=self.name, error=f.getErrorMessage())
            return []
        return d.addCallbacks(done, failed)


def _message(e):
    return str(e) or type(e).__name__
