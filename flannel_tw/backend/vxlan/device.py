# -*- test-case-name: tests.unit.test_vxlan, tests.lab.test_vxlan, tests.unit.test_kernel_seam -*-
"""
The vxlan backend's kernel side (flannel-compat.md section 7): the device
C{flannel.<VNI>} (made or reused, its address), the value types of the device and of a
peer, and each peer's entries as a batch job for L{flannel_tw.kernel.batch.Kernel}:
neighbour, FDB, onlink route (flanneld v0.10's "L3" scheme), or with DirectRouting one
route via the peer's PublicIP.

Blocking, like the engine it extends: run it in a thread.
"""
import socket
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Optional, Tuple

from pyroute2.netlink.exceptions import NetlinkError
from zope.interface import implementer

from flannel_tw.interfaces import IVxlanKernel
from flannel_tw.kernel.batch import (
    Job, Kernel, KernelError, ignore_gone, pyroute_attr)
from flannel_tw.kernel.rtnetlink import fdb_request, neigh_request, route_request

VXLAN_DEFAULT_PORT = 8472       # the kernel's port when IFLA_VXLAN_PORT is not sent


@dataclass(frozen=True)
class VxlanSpec:
    """What C{flannel.<VNI>} must look like (flanneld's vxlanDeviceAttrs)."""
    vni: int
    link_index: int                 # the ext iface
    local: IPv4Address              # IfaceAddr
    port: int = 0                   # 0: the kernel's 8472
    gbp: bool = False

    @property
    def name(self) -> str:
        return "flannel.%d" % (self.vni,)


@dataclass(frozen=True)
class VxlanPeer:
    """A remote vxlan lease as kernel entries. C{direct} is decided when installed."""
    subnet: IPv4Network
    public_ip: IPv4Address
    mac: str                        # lower-case, colons
    direct: bool = field(default=False, compare=False)

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address

    def __str__(self):
        if self.direct:
            return "%s via %s (direct routing)" % (self.subnet, self.public_ip)
        return "%s via %s onlink, VtepMAC %s dst %s" % (self.subnet, self.gateway, self.mac,
                                                      self.public_ip)


def vxlan_incompatibility(link, spec: VxlanSpec) -> Optional[str]:
    """
    Why an existing link (a pyroute2 link message) cannot serve as C{spec}'s device, or
    None if it can (flanneld's vxlanLinksIncompat, plus learning: ours is always off).
    """
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind != "vxlan":
        return "link type %s, not vxlan" % (kind,)
    data = info.get_attr("IFLA_INFO_DATA")
    if data is None:
        return "no vxlan attributes"
    have = {
        "vni": pyroute_attr(data, "IFLA_VXLAN_ID"),
        "link": pyroute_attr(data, "IFLA_VXLAN_LINK", 0),
        "local": pyroute_attr(data, "IFLA_VXLAN_LOCAL"),
        "group": pyroute_attr(data, "IFLA_VXLAN_GROUP"),
        "l2miss": pyroute_attr(data, "IFLA_VXLAN_L2MISS", 0),
        "port": pyroute_attr(data, "IFLA_VXLAN_PORT", VXLAN_DEFAULT_PORT),
        "gbp": bool(data.get_attr("IFLA_VXLAN_GBP")),
        "learning": pyroute_attr(data, "IFLA_VXLAN_LEARNING", 0),
    }
    want = {
        "vni": spec.vni, "link": spec.link_index, "local": str(spec.local),
        "group": None, "l2miss": 0, "port": spec.port or VXLAN_DEFAULT_PORT,
        "gbp": spec.gbp, "learning": 0,
    }
    if have["group"] == "0.0.0.0":
        have["group"] = None
    diffs = ["%s %s (want %s)" % (k, have[k], want[k]) for k in want if have[k] != want[k]]
    return ", ".join(diffs) or None


def _peer_removes(index, ext_index, peer):
    if peer.direct:
        return [route_request("del", peer.subnet, peer.public_ip, ext_index)]
    return [neigh_request("del", index, peer.gateway, peer.mac),
            fdb_request("del", index, peer.mac, peer.public_ip),
            route_request("del", peer.subnet, peer.gateway, index)]


@implementer(IVxlanKernel)
class VxlanKernel(Kernel):
    """The batch engine plus the vxlan device and peer entries."""

    def _peer_route(self, peer: VxlanPeer, index: int):
        """The onlink route request of a (not direct) peer."""
        return route_request("replace", peer.subnet, peer.gateway, index, onlink=True)

    def _peer_steps(self, index, peer):
        """Neighbour, FDB (each undone if a later step fails), onlink route."""
        return [(neigh_request("replace", index, peer.gateway, peer.mac),
                 partial(neigh_request, "del", index, peer.gateway, peer.mac)),
                (fdb_request("replace", index, peer.mac, peer.public_ip),
                 partial(fdb_request, "del", index, peer.mac, peer.public_ip)),
                (self._peer_route(peer, index), None)]

    def ensure_vxlan(self, spec: VxlanSpec) -> Tuple[int, str, str]:
        """
        Make C{flannel.<VNI>}: reuse a compatible device, else delete it and create one.

        @return: C{(index, mac, what)}, C{what} being "reused", "created" or
            "recreated (<reason>)".
        @raise KernelError: the kernel refused.
        """
        with self.ipr() as ipr:
            what = "created"
            found = ipr.link_lookup(ifname=spec.name)
            if found:
                link = ipr.get_links(found[0])[0]
                reason = vxlan_incompatibility(link, spec)
                if reason is None:
                    return found[0], pyroute_attr(link, "IFLA_ADDRESS", "").lower(), "reused"
                ipr.link("del", index=found[0])
                what = "recreated (existing device had %s)" % (reason,)
            kw = dict(ifname=spec.name, kind="vxlan", vxlan_id=spec.vni,
                      vxlan_link=spec.link_index, vxlan_local=str(spec.local),
                      vxlan_learning=0, vxlan_l2miss=0, vxlan_l3miss=0)
            if spec.port:
                kw["vxlan_port"] = spec.port
            if spec.gbp:
                kw["vxlan_gbp"] = True
            try:
                ipr.link("add", **kw)
            except NetlinkError as e:
                raise KernelError("cannot create vxlan device %s (VNI %d, dev index %d, "
                                  "local %s): %s" % (spec.name, spec.vni, spec.link_index,
                                                     spec.local, e))
            index = ipr.link_lookup(ifname=spec.name)[0]
            mac = pyroute_attr(ipr.get_links(index)[0], "IFLA_ADDRESS", "").lower()
            return index, mac, what

    def configure_vxlan(self, index: int, address: IPv4Address) -> None:
        """
        Give the device exactly C{address/32} (one other address is replaced, more than
        one is an error, as in flanneld) and bring it up.

        @raise KernelError: several other addresses, or the kernel refused.
        """
        with self.ipr() as ipr:
            others = []
            have = False
            for msg in ipr.get_addr(index=index, family=socket.AF_INET):
                ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if ip == str(address) and msg["prefixlen"] == 32:
                    have = True
                else:
                    others.append((ip, msg["prefixlen"]))
            if len(others) > 1 or (others and have):
                raise KernelError(
                    "link has incompatible addresses (%s). Remove additional addresses and "
                    "try again." % ", ".join("%s/%d" % o for o in others))
            for ip, plen in others:
                ignore_gone(ipr.addr, "del", index=index, address=ip, prefixlen=plen)
            if not have:
                ipr.addr("add", index=index, address=str(address), prefixlen=32)
            ipr.link("set", index=index, state="up")

    def apply_vxlan_peers(self, index: int, ext_index: int, changes,
                          direct_routing: bool = False) -> list:
        """
        C{changes}: C{(have, target)} pairs of L{VxlanPeer} or None. For each, in order:
        delete C{have}'s entries (missing ones are fine), then flanneld v0.10's entries for
        C{target}: neighbour, FDB, onlink route (the earlier ones undone when a later one
        fails); or with C{direct_routing} and a directly reachable peer, only
        C{subnet via PublicIP dev <ext>}.

        @return: per change, in order, the peer installed (C{direct} set as installed;
            None when only removing) or the exception that failed it.
        """
        jobs = []
        for have, target in changes:
            removes = [] if have is None else _peer_removes(index, ext_index, have)
            if target is None:
                jobs.append(Job(removes, [], None))
            elif direct_routing and self.is_direct(target.public_ip):
                target = replace(target, direct=True)
                jobs.append(Job(removes, [(route_request(
                    "replace", target.subnet, target.public_ip, ext_index), None)], target))
            else:
                target = replace(target, direct=False)
                jobs.append(Job(removes, self._peer_steps(index, target), target))
        return self.run_jobs(jobs)
