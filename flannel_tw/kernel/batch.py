# -*- test-case-name: tests.lab.test_vxlan, tests.unit.test_kernel_seam -*-
"""
The batch/undo engine the routed backends' kernel work goes through (flannel-compat.md
sections 7 and 8), on one long-lived L{Netlink} socket per L{Kernel}:

  - L{Kernel.run_jobs}: apply a batch of entries, L{WINDOW} at a time, each entry its own
    removals then steps; a failed step undoes that entry's earlier steps only;
  - raw dumps: main-table routes, permanent neighbours, FDB entries; a route lookup;
  - the removal of entries an earlier run left (L{Kernel.remove_stale}).

IPv4 and IPv6 alike (issue 15): a dump, lookup or clean-up takes the family of the
network or address it is given; FDB entries list remotes of either family.

What an entry is (a vxlan peer, a host-gw route) is the backends' business:
L{flannel_tw.backend.vxlan.device} and L{flannel_tw.backend.hostgw} build the requests.

Every method blocks (netlink round trips): from the reactor thread run them with
C{twisted.internet.threads.deferToThread}, one call at a time per L{Kernel}. Link work
through pyroute2 (L{Kernel.ipr}) opens a socket per call, in the current network
namespace, or in C{netns} when given (tests).
"""
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import List, Optional, Tuple, Union

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError
from zope.interface import implementer

from flannel_tw.interfaces import IKernel

from flannel_tw.kernel.nlsocket import WINDOW, Netlink
from flannel_tw.kernel.rtnetlink import (
    GONE, NDA_DST, NDA_LLADDR, NUD_PERMANENT, RTM_GETNEIGH, RTM_GETROUTE,
    RTM_NEWROUTE, RouteEntry, family_of, fdb_request, mac_text, neigh_dump_payload,
    neigh_request, netlink_error, parse_neigh, parse_route, route_dump_payload,
    route_get_payload, route_has_gateway, route_request)

IP = Union[IPv4Address, IPv6Address]
Network = Union[IPv4Network, IPv6Network]


class KernelError(Exception):
    """The kernel state cannot be made as asked; the message says what and where."""


@dataclass
class Job:
    """One entry's work in a batch: removals (gone is fine), then steps with their undo."""
    removes: list
    steps: list                     # [(request, None or () -> the request undoing it)]
    result: object
    error: Optional[Exception] = None
    done: int = 0                   # steps done


def pyroute_attr(msg, name, default=None):
    """An attribute of a pyroute2 message, C{default} when absent."""
    value = msg.get_attr(name)
    return default if value is None else value


def ignore_gone(fn, *args, **kw):
    """Run a pyroute2 delete; an entry that is already gone is not an error."""
    try:
        fn(*args, **kw)
    except NetlinkError as e:
        if e.code not in GONE:
            raise


@implementer(IKernel)
class Kernel:
    """
    Blocking netlink work for the routed backends. C{netns}: the name of a network
    namespace to work in (None: the current one).
    """

    def __init__(self, netns: Optional[str] = None):
        self.netns = netns
        self.netlink = Netlink(netns)

    def close(self):
        """Close the long-lived netlink socket (it reopens when needed)."""
        self.netlink.close()

    def ipr(self):
        """A new pyroute2 socket in our namespace (a context manager)."""
        return NetNS(self.netns) if self.netns else IPRoute()

    # -- requests and routes ----------------------------------------------------

    def request(self, requests, gone_ok=False):
        """Send C{requests}; raise NetlinkError for the first that failed (with
        C{gone_ok}, a delete of an entry already gone is fine)."""
        for code in self.netlink.request(requests):
            if code and not (gone_ok and code in GONE):
                raise netlink_error(code)

    def is_direct(self, ip: IP) -> bool:
        """flanneld's ip.DirectRouting: the route lookup to C{ip} has no gateway."""
        try:
            answer = self.netlink.get(RTM_GETROUTE, route_get_payload(ip))
        except NetlinkError:
            return False
        return (len(answer) == 1 and answer[0][0] == RTM_NEWROUTE
                and not route_has_gateway(answer[0][1]))

    def routes(self, network: Network) -> List[RouteEntry]:
        """Main-table routes to subnets strictly inside C{network} (one dump of its family)."""
        out = []
        for kind, body in self.netlink.dump(RTM_GETROUTE, route_dump_payload(family_of(network))):
            entry = parse_route(kind, body, network)
            if entry is not None:
                out.append(entry)
        return out

    # -- batches ------------------------------------------------------------------

    def run_jobs(self, jobs: List[Job]) -> list:
        """
        Apply L{Job}s, L{WINDOW} at a time: per window, every removal, then step 1 of every
        entry, then step 2 of those whose step 1 worked, ...; then the undo of the steps
        done by entries that failed (errors of an undo are ignored; the entry's own error
        is kept). One entry's failure never touches another's entries.

        @return: per job, in order, its result or the exception that failed it.
        """
        for start in range(0, len(jobs), WINDOW):
            window = jobs[start:start + WINDOW]
            self._phase([(j, r) for j in window for r in j.removes], removing=True)
            depth = max(len(j.steps) for j in window)
            for k in range(depth):
                self._phase([(j, j.steps[k][0]) for j in window
                             if j.error is None and len(j.steps) > k])
            undo = [u() for j in window if j.error is not None
                    for _, u in reversed(j.steps[:j.done]) if u is not None]
            if undo:
                try:
                    self.netlink.request(undo)
                except OSError:
                    pass
        return [j.error if j.error is not None else j.result for j in jobs]

    def _phase(self, pairs, removing=False):
        if not pairs:
            return
        try:
            codes = self.netlink.request([r for _, r in pairs])
        except OSError as e:
            for j, _ in pairs:
                if j.error is None:
                    j.error = KernelError("netlink socket failed: %s" % (e,))
            return
        for (j, _), code in zip(pairs, codes):
            if code == 0 or (removing and code in GONE):
                if not removing:
                    j.done += 1
            elif j.error is None:
                j.error = netlink_error(code)

    # -- neighbours and FDB ---------------------------------------------------------

    def _neigh_dump(self, family):
        for kind, body in self.netlink.dump(RTM_GETNEIGH, neigh_dump_payload(family)):
            parsed = parse_neigh(kind, body)
            if parsed is not None:
                yield parsed

    def neighbours(self, index: int, family: int = socket.AF_INET) -> List[Tuple[IP, str]]:
        """Permanent neighbours of C{family} (AF_INET or AF_INET6) on the device:
        C{(ip, mac)}."""
        size = 16 if family == socket.AF_INET6 else 4
        return [(ip_address(a[NDA_DST]), mac_text(a.get(NDA_LLADDR, b"")))
                for fam, ifindex, state, a in self._neigh_dump(family)
                if fam == family and ifindex == index and state & NUD_PERMANENT
                and len(a.get(NDA_DST, b"")) == size]

    def fdb(self, index: int) -> List[Tuple[str, IP]]:
        """Unicast FDB entries with a remote IPv4 or IPv6 destination on the device:
        C{(mac, dst)}."""
        return [(mac_text(a.get(NDA_LLADDR, b"")), ip_address(a[NDA_DST]))
                for fam, ifindex, _, a in self._neigh_dump(socket.AF_BRIDGE)
                if fam == socket.AF_BRIDGE and ifindex == index
                and len(a.get(NDA_DST, b"")) in (4, 16)]

    # -- leftovers --------------------------------------------------------------

    def remove_stale(self, network: Network, keep_subnets, vxlan_index: Optional[int],
                     ext_index: int, keep_macs=()) -> List[str]:
        """
        Remove entries an earlier run left for leases that no longer exist, in the family
        of C{network} (once per family: the IPv6 call names the IPv6 network, subnets and
        device, C{flannel-v6.<VNI>}):

          - routes to subnets strictly inside C{network} that are not in C{keep_subnets}
            and go via the vxlan device (C{vxlan_index}) or via a gateway on the ext iface;
          - with a vxlan device, its permanent neighbours whose IP is not the .0 of a kept
            subnet, and its FDB entries whose MAC is not in C{keep_macs}.

        One dump per kind, the deletes in batches.

        @return: a description of each entry removed.
        @raise NetlinkError: a delete failed (other than for an entry already gone).
        """
        keep_subnets = set(keep_subnets)
        keep_ips = {s.network_address for s in keep_subnets}
        keep_macs = {m.lower() for m in keep_macs}
        removed, requests = [], []
        for r in self.routes(network):
            if r.subnet in keep_subnets:
                continue
            ours = ((vxlan_index is not None and r.oif == vxlan_index)
                    or (r.oif == ext_index and r.gateway is not None))
            if ours:
                requests.append(route_request("del", r.subnet, r.gateway, r.oif))
                removed.append("route %s via %s" % (r.subnet, r.gateway))
        if vxlan_index is not None:
            for ip, mac in self.neighbours(vxlan_index, family_of(network)):
                if ip not in keep_ips:
                    requests.append(neigh_request("del", vxlan_index, ip, mac))
                    removed.append("neighbour %s lladdr %s" % (ip, mac))
            for mac, dst in self.fdb(vxlan_index):
                if mac not in keep_macs:
                    requests.append(fdb_request("del", vxlan_index, mac, dst))
                    removed.append("fdb %s dst %s" % (mac, dst))
        self.request(requests, gone_ok=True)
        return removed
