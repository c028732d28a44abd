# -*- test-case-name: tests.test_hostgw -*-
"""
What the vxlan and host-gw backends share (flanneld's backend/route_network.go shape):
remote leases of our type become kernel entries, one peer per subnet.

- C{wanted}: subnet -> remote lease of our type, from lease events (pure bookkeeping on
  the reactor thread);
- C{installed}: subnet -> the entry the kernel has, as the subclass's C{_install} returned it;
- every kernel change runs in a thread (C{deferToThread}), one at a time, in order (a
  C{DeferredLock}), so a removal never overtakes the addition before it;
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

from flannel_tw.events import ADDED, REMOVED
from flannel_tw.net.kernel import Kernel


class PeerBackend:
    """
    Base of L{flannel_tw.backend.vxlan.VxlanBackend} and
    L{flannel_tw.backend.hostgw.HostGwBackend}. Subclasses set C{name} and define
    C{_peer(lease)} (pure: lease -> entry, may raise ValueError), C{_install(entry)} and
    C{_remove(entry)} (blocking, run in a thread) and C{_remove_stale(leases)} (blocking).

    @param kernel: a L{Kernel} (tests may pass one bound to a namespace, or a fake).
    @param to_thread: C{(f, *args) -> Deferred}, default C{deferToThread}.
    """

    name = None
    log = Logger()

    def __init__(self, reactor, ext_iface, kernel=None, to_thread=None):
        self._reactor = reactor
        self.ext_iface = ext_iface
        self.kernel = kernel if kernel is not None else Kernel()
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
        for event in events:
            try:
                self._event(event)
            except Exception:
                self.log.failure("{backend} backend: bad lease event {event!r}",
                                 backend=self.name, event=event)

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
        """Queue: make the kernel entry of C{subnet} match C{wanted}. Deferred, never fails."""
        d = self._serial(self._sync_now, subnet)
        d.addErrback(lambda f: self.log.failure("{backend} backend: updating {subnet} failed",
                                                f, backend=self.name, subnet=subnet))
        return d

    def _sync_now(self, subnet):
        lease = self.wanted.get(subnet)
        have = self.installed.get(subnet)
        target = None
        if lease is not None:
            try:
                target = self._peer(lease)
            except ValueError as e:
                self._failure(subnet, lease, str(e))
        if have is not None and have == target:
            return None
        if have is None and target is None:
            if lease is None:
                self.failed.pop(subnet, None)
            return None
        d = self._kernel(self._apply, have, target)

        def done(entry):
            if entry is None:
                self.installed.pop(subnet, None)
                self.log.info("{backend} backend: removed {subnet}", backend=self.name,
                              subnet=subnet)
                self.failed.pop(subnet, None)
            else:
                self.installed[subnet] = entry
                if self.failed.pop(subnet, None) is not None:
                    self.log.info("{backend} backend: {entry} installed after an earlier "
                                  "failure", backend=self.name, entry=entry)
                else:
                    self.log.info("{backend} backend: installed {entry}", backend=self.name,
                                  entry=entry)

        def failed(f):
            self.installed.pop(subnet, None)
            self._failure(subnet, lease, f.getErrorMessage())
        return d.addCallbacks(done, failed)

    def _apply(self, have, target):
        """In a thread: remove C{have}, install C{target}; returns what is installed."""
        if have is not None:
            self._remove(have)
        if target is None:
            return None
        return self._install(target)

    def _failure(self, subnet, lease, message):
        if self.failed.get(subnet) != message:
            self.log.error("{backend} backend: cannot add peer {subnet} (PublicIP {ip}): "
                           "{error}", backend=self.name, subnet=subnet,
                           ip=lease.attrs.public_ip if lease else None, error=message)
        self.failed[subnet] = message

    def resync(self):
        """Retry every wanted peer that is not installed. Deferred firing when done."""
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
                and l.attrs.backend_type == self.name]
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
