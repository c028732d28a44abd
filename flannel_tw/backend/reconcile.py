# -*- test-case-name: tests.unit.test_hostgw -*-
"""
A backend that declares L{flannel_tw.interfaces.IReconcilingBackend} removes what it
installed for leases gone while the daemon was down: L{FirstList} hands it the lease
watcher's first complete list.
"""
from twisted.internet import defer
from twisted.logger import Logger


class FirstList:
    """
    The subnet manager as the lease watcher sees it (the two calls it makes:
    C{list_leases} and C{watch_leases}): the leases of the first successful list also
    go to C{on_first} (a backend's C{reconcile}), before the watcher turns them into
    events.
    """

    log = Logger()

    def __init__(self, manager, on_first):
        self._manager = manager
        self._on_first = on_first

    def watch_leases(self, wait_index):
        return self._manager.watch_leases(wait_index)

    def list_leases(self):
        d = defer.maybeDeferred(self._manager.list_leases)
        return d.addCallback(self._listed)

    def _listed(self, result):
        on_first, self._on_first = self._on_first, None
        if on_first is not None:
            try:
                on_first(result[0])
            except Exception:
                self.log.failure("Reconciling the data plane with the lease list failed")
        return result
