"""
A recording backend with every optional part a backend may declare
(L{flannel_tw.interfaces}: reconcile, reconfigure, a route table, counters), and one
that has the methods without declaring them: the daemon must use only what is declared.
Checked with verifyObject in tests/unit/test_capabilities.py.
"""
from zope.interface import implementer

from flannel_tw.interfaces import (ICountingBackend, IReconcilingBackend,
                                   IReconfiguringBackend, IRoutesBackend)
from flannel_tw.testing.fakes import RecordingBackend


class _Parts(RecordingBackend):
    def __init__(self, public_ip, mtu=1500, prepare_error=None):
        RecordingBackend.__init__(self, public_ip, mtu=mtu, prepare_error=prepare_error)
        self.routes = {}
        self.counters = {"packets_out": 0}

    def reconcile(self, leases):
        self.events.append(("reconcile", list(leases)))

    def reconfigure(self, config, lease):
        self.events.append(("reconfigure", lease))


@implementer(IReconcilingBackend, IReconfiguringBackend, IRoutesBackend, ICountingBackend)
class CapableBackend(_Parts):
    """Records reconcile and reconfigure calls; C{routes} and C{counters} are plain dicts."""

    name = "capable"


class UndeclaredBackend(_Parts):
    """The same methods and attributes, declared as a plain IBackend only."""

    name = "undeclared"
