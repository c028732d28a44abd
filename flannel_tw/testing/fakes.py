"""
Fakes that implement flannel-tw's own interfaces, for fast unit tests of logic and
timing. Each records its calls in ``events``; tests answer calls by firing the
Deferreds kept in ``pending``. Checked with verifyObject like the real classes.
"""
import threading

from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.interfaces import (
    IBackend, IHostGwKernel, INetlink, ISubnetManager, IVxlanKernel)
from flannel_tw.kernel.rtnetlink import RouteEntry
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.model.leasecheck import REASONS


@implementer(ISubnetManager)
class FakeSubnetManager:
    """Every call returns a new Deferred appended to ``pending`` as (name, args, d)."""

    prefix = DEFAULT_PREFIX

    def __init__(self):
        self.events = []
        self.pending = []
        self.reused_leases = {}

    def _call(self, name, *args):
        d = defer.Deferred()
        self.events.append((name,) + args)
        self.pending.append((name, args, d))
        return d

    def get_network_config(self):
        return self._call("get_network_config")

    def acquire_lease(self, config, attrs, previous_subnet=None, previous_ipv6_subnet=None):
        # the v6 argument is recorded only when given (IPv4-only calls look as before)
        v6 = () if previous_ipv6_subnet is None else (previous_ipv6_subnet,)
        return self._call("acquire_lease", config, attrs, previous_subnet, *v6)

    def renew_lease(self, lease):
        return self._call("renew_lease", lease)

    def list_leases(self):
        return self._call("list_leases")

    def watch_leases(self, wait_index):
        return self._call("watch_leases", wait_index)

    def get_lease(self, subnet, ipv6_subnet=None):
        return self._call("get_lease", subnet, *(() if ipv6_subnet is None else (ipv6_subnet,)))

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


@implementer(IVxlanKernel, IHostGwKernel)
class FakeKernel:
    """
    Records every call of the kernel methods the routed backends use; keeps routes in a
    dict. Batches (apply_*) record one "install"/"remove" per entry and their sizes in
    C{batches}; C{fail_for} fails only the entries of the given subnets.
    """

    def __init__(self):
        self.events = []
        self.fail = {}          # method name -> exception to raise
        self.fail_for = {}      # subnet -> exception for that entry's install only
        self.routes_now = {}    # subnet -> RouteEntry
        self.batches = []       # size of each apply_* call
        self.index6 = None      # the index6 of the last apply_vxlan_peers

    def _call(self, name, *args):
        self.events.append((name,) + args)
        if name in self.fail:
            raise self.fail[name]

    def ensure_vxlan(self, spec):
        self._call("ensure_vxlan", spec)
        if spec.local.version == 6:             # flannel-v6.<VNI>, made with spec.mac
            return 13, spec.mac, "created"
        return 12, "0a:0b:0c:0d:0e:0f", "created"

    def configure_vxlan(self, index, address):
        self._call("configure_vxlan", index, address)

    def _batch(self, changes, install, remove):
        self.batches.append(len(changes))
        out = []
        for have, target in changes:
            try:
                if have is not None:
                    self._call("remove", have)
                    remove(have)
                if target is not None:
                    self._call("install", target)
                    if target.subnet in self.fail_for:
                        raise self.fail_for[target.subnet]
                    install(target)
            except Exception as e:
                out.append(e)
            else:
                out.append(target)
        return out

    def apply_vxlan_peers(self, index, ext_index, changes, direct_routing=False, index6=None):
        self.index6 = index6
        return self._batch(changes, lambda p: None, lambda p: None)

    def apply_hostgw(self, oif, changes):
        def install(route):
            self.routes_now[route.subnet] = RouteEntry(route.subnet, route.gateway, oif)
        return self._batch(changes, install,
                           lambda route: self.routes_now.pop(route.subnet, None))

    def routes(self, network):
        return list(self.routes_now.values())

    def remove_stale(self, network, keep_subnets, vxlan_index, ext_index, keep_macs=()):
        self._call("remove_stale", network, sorted(keep_subnets), vxlan_index, ext_index,
                   sorted(keep_macs))
        return ["route 10.5.99.0/24 via None"]


@implementer(INetlink)
class FakeNetlink:
    """
    The udp backend's TUN configuration, recorded: C{calls} gets C{(ifname, address, mtu,
    route)}, C{gso_max_sizes} the C{gso_max_size} of each call, C{v6} its C{(address6,
    route6)}, C{threads} the thread each ran in; C{fail}, when set, is raised.
    """

    def __init__(self, fail=None):
        self.calls = []
        self.gso_max_sizes = []
        self.v6 = []
        self.threads = []
        self.fail = fail

    def configure_tun(self, ifname, address, mtu, route, gso_max_size=None, address6=None,
                      route6=None):
        self.threads.append(threading.current_thread())
        self.calls.append((ifname, address, mtu, route))
        self.gso_max_sizes.append(gso_max_size)
        self.v6.append((address6, route6))
        if self.fail:
            raise self.fail
