"""Test helpers (formerly in tests/test_vxlan.py), shared by
tests/lab/test_vxlan.py, tests/unit/test_hostgw.py, tests/unit/test_iptables.py,
tests/unit/test_vxlan.py.

The vxlan backend: options and lease attrs (pure), the backend's event logic against a
recording fake kernel, and the netlink helpers of flannel_tw.kernel.rtnetlink on a real kernel
inside a private network namespace (root only)."""

from ipaddress import IPv4Address, IPv4Network

from twisted.internet import defer
from twisted.logger import Logger, formatEvent

from flannel_tw.model.config import parse_config
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.kernel.rtnetlink import RouteEntry


IFACE = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                 public_ip=IPv4Address("192.168.250.11"), mtu=1500)
MAC1 = "82:4b:b6:2f:54:4e"
MAC2 = "82:4b:b6:2f:54:4f"


def config(backend='{"Type":"vxlan"}'):
    return parse_config('{"Network":"10.5.0.0/16","Backend":%s}' % backend)


def lease(subnet, ip, kind="vxlan", data=None):
    if kind == "vxlan" and data is None:
        data = {"VtepMAC": MAC1}
    return Lease(subnet=IPv4Network(subnet),
                 attrs=LeaseAttrs(public_ip=IPv4Address(ip), backend_type=kind,
                                  backend_data=data), ttl=86400)


def sync(f, *args):
    return defer.maybeDeferred(f, *args)


def logged(obj):
    """Replace obj.log with a Logger collecting formatted messages into the returned list."""
    events = []
    obj.log = Logger(observer=lambda e: events.append((e["log_level"].name, formatEvent(e))))
    return events


class FakeKernel:
    """
    Records every call of the Kernel methods the backends use; keeps routes in a dict.
    Batches (apply_*) record one "install"/"remove" per entry and their sizes in
    C{batches}; C{fail_for} fails only the entries of the given subnets.
    """

    def __init__(self):
        self.events = []
        self.fail = {}          # method name -> exception to raise
        self.fail_for = {}      # subnet -> exception for that entry's install only
        self.routes_now = {}    # subnet -> RouteEntry
        self.batches = []       # size of each apply_* call

    def _call(self, name, *args):
        self.events.append((name,) + args)
        if name in self.fail:
            raise self.fail[name]

    def ensure_vxlan(self, spec):
        self._call("ensure_vxlan", spec)
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

    def apply_vxlan_peers(self, index, ext_index, changes, direct_routing=False):
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
