"""
Fakes that implement flannel-tw's own interfaces, for fast unit tests of logic and
timing. Each records its calls in ``events``; tests answer calls by firing the
Deferreds kept in ``pending``. Checked with verifyObject like the real classes.
"""
from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.interfaces import IBackend, ISubnetManager
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.model.leasecheck import REASONS


@implementer(ISubnetManager)
class FakeSubnetManager:
    """Every call returns a new Deferred appended to ``pending`` as (name, args, d)."""

    prefix = "/coreos.com/network"

    def __init__(self):
        self.events = []
        self.pending = []

    def _call(self, name, *args):
        d = defer.Deferred()
        self.events.append((name,) + args)
        self.pending.append((name, args, d))
        return d

    def get_network_config(self):
        return self._call("get_network_config")

    def acquire_lease(self, config, attrs, previous_subnet=None):
        return self._call("acquire_lease", config, attrs, previous_subnet)

    def renew_lease(self, lease):
        return self._call("renew_lease", lease)

    def list_leases(self):
        return self._call("list_leases")

    def watch_leases(self, wait_index):
        return self._call("watch_leases", wait_index)

    def get_lease(self, subnet):
        return self._call("get_lease", subnet)

    def skipped_counts(self):
        return dict.fromkeys(REASONS, 0)

    def next(self, name=None):
        """Pop the oldest pending call (of C{name}, if given)."""
        for i, (n, args, d) in enumerate(self.pending):
            if name is None or n == name:
                del self.pending[i]
                return n, args, d
        raise AssertionError("no pending call %r; events: %r" % (name, self.events))


@implementer(IBackend)
class RecordingBackend:
    """A backend without a data plane that records what the daemon asks of it."""

    name = "recording"

    def __init__(self, public_ip, mtu=1500, prepare_error=None):
        self.public_ip = public_ip
        self.mtu = mtu
        self.events = []
        self._prepare_error = prepare_error

    def prepare(self, config):
        self.events.append(("prepare", config))
        if self._prepare_error is not None:
            return defer.fail(self._prepare_error)
        return defer.succeed(LeaseAttrs(public_ip=self.public_ip))

    def start(self, config, lease):
        self.events.append(("start", lease))
        return defer.succeed(None)

    def handle_events(self, events):
        self.events.append(("events", list(events)))

    def stop(self):
        self.events.append(("stop",))
        return defer.succeed(None)
