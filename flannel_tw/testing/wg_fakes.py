"""
Fakes for the wireguard backend's unit tests (tests/unit/test_wg_backend.py):

- L{FakeWireguardDevice}: an L{IWireguardDevice} (verifyObject-checked in the tests) that
  keeps its peers in a dict and records every call into C{events}; C{set_peers} can be
  held (to see events coalesce while a batch is in flight) or made to fail once;
- L{FakeDeviceOpener}: C{open_device(reactor, name, state_dir, **kw)} handing out fake
  devices and recording what was asked;
- L{RecordingLink}: the backend's C{configure_link(ifname, address, mtu, route)}.
"""
from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.interfaces import IWireguardDevice


@implementer(IWireguardDevice)
class FakeWireguardDevice:
    def __init__(self, name="flannel-wg", kind="userspace"):
        self.name = name
        self.kind = kind
        self.events = []            # ("configure", private, port) / ("set_peers", ups, rms) / ...
        self.device_peers = {}      # public key (raw) -> WgPeer
        self.private_key = None
        self.listen_port = None
        self.closed = False
        self.hold = False           # True: set_peers waits for release()
        self.fail_next = None       # an exception for the next set_peers
        self._held = []

    def configure(self, private_key, listen_port):
        self.private_key, self.listen_port = private_key, listen_port
        self.events.append(("configure", private_key, listen_port))
        return defer.succeed(None)

    def set_peers(self, upserts, removals):
        upserts, removals = list(upserts), list(removals)
        self.events.append(("set_peers", upserts, removals))
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            return defer.fail(e)
        if self.hold:
            d = defer.Deferred()
            self._held.append((d, upserts, removals))
            return d
        self._apply(upserts, removals)
        return defer.succeed(None)

    def release(self):
        """Apply and fire every held set_peers, in order."""
        held, self._held = self._held, []
        for d, upserts, removals in held:
            self._apply(upserts, removals)
            d.callback(None)

    def _apply(self, upserts, removals):
        for key in removals:
            self.device_peers.pop(key, None)
        for peer in upserts:
            self.device_peers[peer.public_key] = peer

    def peers(self):
        self.events.append(("peers",))
        return defer.succeed(dict(self.device_peers))

    def close(self):
        self.events.append(("close",))
        self.closed = True
        return defer.succeed(None)

    # for assertions

    def set_peer_calls(self):
        return [e[1:] for e in self.events if e[0] == "set_peers"]


class FakeDeviceOpener:
    """C{open_device}: hands out L{FakeWireguardDevice}s by name; C{error} fails the open."""

    def __init__(self, error=None):
        self.calls = []
        self.devices = {}
        self.error = error

    def __call__(self, reactor, name, state_dir, **kw):
        self.calls.append((name, state_dir, kw))
        if self.error is not None:
            return defer.fail(self.error)
        dev = self.devices[name] = FakeWireguardDevice(name)
        return defer.succeed(dev)


class RecordingLink:
    """C{configure_link(ifname, address, mtu, route)}: records, or raises C{error}."""

    def __init__(self, error=None):
        self.calls = []
        self.error = error

    def __call__(self, ifname, address, mtu, route):
        self.calls.append((ifname, address, mtu, route))
        if self.error is not None:
            raise self.error
