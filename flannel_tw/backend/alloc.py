# -*- test-case-name: tests.unit.test_capabilities -*-
"""The alloc backend: it only holds a lease; no data plane (flanneld's "alloc")."""
from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.interfaces import IBackend
from flannel_tw.model.lease import LeaseAttrs


@implementer(IBackend)
class AllocBackend:
    name = "alloc"

    def __init__(self, reactor, ext_iface):
        self._ext_iface = ext_iface
        self.mtu = ext_iface.mtu

    def prepare(self, config):
        return defer.succeed(LeaseAttrs(public_ip=self._ext_iface.public_ip))

    def start(self, config, lease):
        return defer.succeed(None)

    def handle_events(self, events):
        """No data plane: nothing to do with other hosts' leases."""

    def stop(self):
        return defer.succeed(None)
