"""Test helpers (formerly in tests/test_vxlan.py), shared by
tests/lab/test_vxlan.py, tests/unit/test_hostgw.py, tests/unit/test_iptables.py,
tests/unit/test_vxlan.py.
(No test module imports another: what several need lives here.)"""

from ipaddress import IPv4Address, IPv4Network

from twisted.internet import defer
from twisted.logger import Logger, formatEvent

from flannel_tw.model.config import parse_config
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.backend.hostgw import HostGwKernel
from flannel_tw.backend.vxlan.device import VxlanKernel
from flannel_tw.kernel.nlsocket import Netlink
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


class CountingNetlink(Netlink):
    """A L{Netlink} that counts the datagrams its windowed requests send (C{sends})."""

    def __init__(self, netns=None):
        Netlink.__init__(self, netns)
        self.sends = 0

    def _window(self, requests):
        if requests:
            self.sends += 1
        return Netlink._window(self, requests)


class LabKernel(VxlanKernel, HostGwKernel):
    """
    Both routed backends' kernel code on one engine, for the namespace tests, with their
    one-entry shorthands (the daemon only ever applies batches).
    """

    def __init__(self, netns=None):
        VxlanKernel.__init__(self, netns)
        self.netlink = CountingNetlink(netns)

    def link_index(self, name):
        with self.ipr() as ipr:
            found = ipr.link_lookup(ifname=name)
            return found[0] if found else None

    def has_route(self, subnet, gateway, oif):
        return RouteEntry(subnet, gateway, oif) in self.routes(subnet.supernet())

    def install_vxlan_peer(self, index, ext_index, peer, direct_routing=False):
        """One peer's entries on the device C{index} (flannel.N for an IPv4 peer,
        flannel-v6.N for an IPv6 one); the peer with C{direct} set, or the step's error."""
        return _one(self.apply_vxlan_peers(index, ext_index, [(None, peer)], direct_routing,
                                           index6=index))

    def remove_vxlan_peer(self, index, ext_index, peer):
        _one(self.apply_vxlan_peers(index, ext_index, [(peer, None)], index6=index))

    def install_hostgw(self, route, oif):
        return _one(self.apply_hostgw(oif, [(None, route)]))

    def remove_hostgw(self, route, oif):
        _one(self.apply_hostgw(oif, [(route, None)]))


def _one(results):
    if isinstance(results[0], Exception):
        raise results[0]
    return results[0]
