# -*- test-case-name: tests.unit.test_hostgw, tests.unit.test_routed_dualstack, tests.lab.test_dualstack_routed -*-
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

IPv4 and IPv6 (issue 15): with a config that enables IPv6, a dual-stack lease is two
entries, each keyed by its own subnet (the IPv4 one and C{lease.ipv6_subnet}), installed,
failed and retried on its own. Mixed stacks never crash (flanneld v0.20 dereferences nil
there):
  - without EnableIPv6 the IPv6 part of C{&} leases is ignored: their IPv4 part is routed;
  - an IPv4-only lease seen by a dual-stack host: its IPv4 part only;
  - a lease whose IPv6 part is unusable (missing or bad BackendV6Data, no PublicIPv6, a
    subnet outside IPv6Network): flanneld's vxlan skips the WHOLE event, IPv4 included; we
    route the IPv4 part and skip the IPv6 part with one warning.
"""
from ipaddress import IPv4Network, IPv6Network

from twisted.internet import defer, threads
from twisted.logger import Logger

from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.model.leasecheck import lease_problem

LOG_EACH = 10       # batches up to this size log every change; bigger ones a summary


class PeerBackend:
    """
    Base of L{flannel_tw.backend.vxlan.backend.VxlanBackend} and
    L{flannel_tw.backend.hostgw.HostGwBackend}. Subclasses set C{name} and define
    C{_peer(lease)} (pure: lease -> its IPv4 entry, may raise ValueError),
    C{_peer6(lease)} (pure: lease -> its IPv6 entry, may raise ValueError),
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
        self.network6 = None    # IPv6Network when the config enables IPv6, else None
        self.own_subnet6 = None
        self.wanted = {}        # subnet (IPv4 or IPv6) -> Lease
        self.installed = {}     # subnet -> entry in the kernel
        self.failed = {}        # subnet -> last error logged
        self._ignored = set()   # subnets of other backend types, logged once
        self._v6_of = {}        # IPv4 subnet -> the IPv6 subnet wanted for that lease
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
                self._unwant(subnet)
                return
            self._ignored.discard(subnet)
            self.wanted[subnet] = lease
            self._sync(subnet)
            self._want6(subnet, lease)
        elif event.kind == REMOVED:
            self._ignored.discard(subnet)
            self._unwant(subnet)

    def _want6(self, subnet, lease):
        """The IPv6 part of an added lease, when the config enables IPv6 (else ignored)."""
        v6 = getattr(lease, "ipv6_subnet", None) if self.network6 is not None else None
        if v6 is not None and v6 == self.own_subnet6:
            v6 = None               # a hostile lease naming our own IPv6 subnet
        old = self._v6_of.pop(subnet, None)
        if old is not None and old != v6 and self.wanted.pop(old, None) is not None:
            self._sync(old)
        if v6 is not None:
            self._v6_of[subnet] = v6
            self.wanted[v6] = lease
            self._sync(v6)

    def _unwant(self, subnet):
        """Forget the lease of IPv4 subnet C{subnet}: both its entries go."""
        for key in (subnet, self._v6_of.pop(subnet, None)):
            if key is not None and self.wanted.pop(key, None) is not None:
                self._sync(key)

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
                    target = self._peer6(lease) if subnet.version == 6 else self._peer(lease)
                except ValueError as e:
                    if subnet.version == 6:
                        self._skip6(subnet, lease, str(e))
                    else:
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
            ip = None
            if lease is not None and lease.attrs is not None:
                ip = lease.attrs.public_ipv6 if subnet.version == 6 else lease.attrs.public_ip
            self.log.error("{backend} backend: cannot add peer {subnet} ({which} {ip}): "
                           "{error}", backend=self.name, subnet=subnet, ip=ip, error=message,
                           which="PublicIPv6" if subnet.version == 6 else "PublicIP")
        self.failed[subnet] = message

    def _skip6(self, subnet, lease, message):
        """
        The IPv6 part of a lease cannot be routed: one warning (per distinct reason); the
        lease's IPv4 part is routed on its own. flanneld's vxlan skips the whole event
        there, IPv4 included (a lease with a missing or bad BackendV6Data); we do not.
        """
        if self.failed.get(subnet) != message:
            self.log.warn("{backend} backend: skipping the IPv6 part {subnet} of the lease "
                          "{subnet4} (PublicIPv6 {ip6}): {error}; its IPv4 part is routed",
                          backend=self.name, subnet=subnet, subnet4=lease.subnet,
                          ip6=lease.attrs.public_ipv6, error=message)
        self.failed[subnet] = message

    def resync(self):
        """Retry every wanted peer that is not installed (one batch). Deferred firing when done."""
        ds = [self._sync(s) for s in sorted(self.wanted, key=_order) if s not in self.installed]
        return defer.gatherResults(ds)

    # -- our own lease ----------------------------------------------------------

    def _own(self, config, lease):
        self.network = IPv4Network(config.network)
        self.own_subnet = lease.subnet
        if self.wanted.pop(lease.subnet, None) is not None:
            self._sync(lease.subnet)
        if getattr(config, "enable_ipv6", False) and config.ipv6_network is not None:
            self.network6 = IPv6Network(config.ipv6_network)
            self.own_subnet6 = getattr(lease, "ipv6_subnet", None)
            if self.own_subnet6 is None:
                self.log.warn("{backend} backend: EnableIPv6 is set but our lease {subnet} "
                              "has no IPv6 subnet: no IPv6 address for this host",
                              backend=self.name, subnet=lease.subnet)
            elif self.wanted.pop(self.own_subnet6, None) is not None:
                self._sync(self.own_subnet6)
        else:
            self.network6 = self.own_subnet6 = None

    def v6_problem(self, lease):
        """
        Why the IPv6 part of C{lease} cannot be routed (the common checks: the subnet
        inside IPv6Network, not overlapping ours), or None.
        """
        v6 = lease.ipv6_subnet
        if v6 is None:
            return "the lease has no IPv6 subnet"
        if self.network6 is None:
            return "IPv6 is not enabled in the network config"
        if not v6.subnet_of(self.network6):
            return "%s is not inside the IPv6Network %s" % (v6, self.network6)
        if self.own_subnet6 is not None and v6.overlaps(self.own_subnet6):
            return "%s overlaps our own IPv6 subnet %s" % (v6, self.own_subnet6)
        return None

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


def _order(subnet):
    """Sort key of a wanted subnet: the IPv4 ones, then the IPv6 ones."""
    return subnet.version, subnet
