# -*- test-case-name: tests.unit.test_vxlan, tests.lab.test_vxlan, tests.unit.test_kernel_seam -*-
"""
The vxlan backend's kernel side (flannel-compat.md section 7): the device
C{flannel.<VNI>} (made or reused, its address), the value types of the device and of a
peer, and each peer's entries as a batch job for L{flannel_tw.kernel.batch.Kernel}:
neighbour, FDB, onlink route (flanneld v0.10's "L3" scheme), or with DirectRouting one
route via the peer's PublicIP.

IPv6 (issue 15, flanneld v0.20's vxlan v6): a spec whose C{local} is an IPv6 address is
the device C{flannel-v6.<VNI>} (same VNI, port, GBP, learning off), made with a random
locally administered MAC and C{accept_ra} 0; its address is C{<v6 subnet addr>/128}
(every other non-link-local IPv6 address is removed); a peer with an IPv6 subnet gets
the same three entries in IPv6 (neighbour, FDB to its PublicIPv6, onlink route).

Blocking, like the engine it extends: run it in a thread.
"""
import secrets
import socket
import threading
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Optional, Tuple, Union

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netns import setns
from zope.interface import implementer

from flannel_tw.interfaces import IVxlanKernel
from flannel_tw.kernel.batch import (
    Job, Kernel, KernelError, ignore_gone, pyroute_attr)
from flannel_tw.kernel.rtnetlink import fdb_request, neigh_request, route_request

VXLAN_DEFAULT_PORT = 8472       # the kernel's port when IFLA_VXLAN_PORT is not sent


def random_mac(token_bytes=secrets.token_bytes) -> str:
    """A random unicast, locally administered MAC (flanneld's newHardwareAddr)."""
    raw = bytearray(token_bytes(6))
    raw[0] = (raw[0] & 0xfe) | 0x02
    return ":".join("%02x" % b for b in raw)


@dataclass(frozen=True)
class VxlanSpec:
    """
    What C{flannel.<VNI>} (C{local} IPv4) or C{flannel-v6.<VNI>} (C{local} IPv6) must look
    like (flanneld's vxlanDeviceAttrs). C{mac}: the address a new device gets (None: the
    kernel's random one); a reused device keeps its own.
    """
    vni: int
    link_index: int                 # the ext iface
    local: Union[IPv4Address, IPv6Address]  # IfaceAddr, or IfaceV6Addr for flannel-v6
    port: int = 0                   # 0: the kernel's 8472
    gbp: bool = False
    mac: Optional[str] = field(default=None, compare=False)

    @property
    def v6(self) -> bool:
        return self.local.version == 6

    @property
    def name(self) -> str:
        return ("flannel-v6.%d" if self.v6 else "flannel.%d") % (self.vni,)


@dataclass(frozen=True)
class VxlanPeer:
    """
    A remote vxlan lease, one family of it, as kernel entries: C{subnet}, C{public_ip}
    and C{mac} are the lease's IPv4 subnet, PublicIP and VtepMAC, or its IPv6 subnet,
    PublicIPv6 and BackendV6Data VtepMAC. C{direct} is decided when installed.
    """
    subnet: Union[IPv4Network, IPv6Network]
    public_ip: Union[IPv4Address, IPv6Address]
    mac: str                        # lower-case, colons
    direct: bool = field(default=False, compare=False)

    @property
    def gateway(self) -> Union[IPv4Address, IPv6Address]:
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
    v6 = spec.v6
    local = pyroute_attr(data, "IFLA_VXLAN_LOCAL6" if v6 else "IFLA_VXLAN_LOCAL")
    group = pyroute_attr(data, "IFLA_VXLAN_GROUP6" if v6 else "IFLA_VXLAN_GROUP")
    have = {
        "vni": pyroute_attr(data, "IFLA_VXLAN_ID"),
        "link": pyroute_attr(data, "IFLA_VXLAN_LINK", 0),
        "local": str(ip_address(local)) if local else local,
        "group": group,
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
    if have["group"] in ("0.0.0.0", "::"):
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
        Make C{spec.name} (C{flannel.<VNI>} or C{flannel-v6.<VNI>}): reuse a compatible
        device, else delete it and create one (with C{spec.mac}, if set). An IPv6 device
        gets C{accept_ra} 0, reused or made.

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
                      vxlan_link=spec.link_index, vxlan_learning=0, vxlan_l2miss=0,
                      vxlan_l3miss=0)
            kw["vxlan_local6" if spec.v6 else "vxlan_local"] = str(spec.local)
            if spec.mac:
                kw["address"] = spec.mac
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
        if spec.v6:
            self.no_accept_ra(spec.name)
        return index, mac, what

    def no_accept_ra(self, name: str) -> None:
        """
        C{net.ipv6.conf.<name>.accept_ra = 0} (flanneld's v6 device). There is no netlink
        call for it: the sysctl file, read in our network namespace (with C{netns}, from
        a short-lived thread that enters it, so the caller's thread never moves).

        @raise KernelError: the file cannot be written.
        """
        path = "/proc/sys/net/ipv6/conf/%s/accept_ra" % (name,)
        error = []

        def write():
            try:
                if self.netns:
                    setns(self.netns, flags=0)
                with open(path, "w") as f:
                    f.write("0\n")
            except OSError as e:
                error.append(e)
        if self.netns:
            t = threading.Thread(target=write, name="accept_ra")
            t.start()
            t.join()
        else:
            write()
        if error:
            raise KernelError("cannot set accept_ra 0 on %s: %s" % (name, error[0]))

    def configure_vxlan(self, index: int, address) -> None:
        """
        Give the device exactly C{address/32} (one other address is replaced, more than
        one is an error, as in flanneld) and bring it up. An IPv6 C{address} (the
        C{flannel-v6} device): C{address/128}, every other non-link-local IPv6 address
        removed (flanneld's v6 rule), and up.

        @raise KernelError: several other addresses, or the kernel refused.
        """
        if address.version == 6:
            return self._configure_v6(index, address)
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

    def _configure_v6(self, index, address):
        with self.ipr() as ipr:
            have = False
            for msg in ipr.get_addr(index=index, family=socket.AF_INET6):
                ip = ip_address(msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL"))
                if ip == address and msg["prefixlen"] == 128:
                    have = True
                elif not ip.is_link_local:
                    ignore_gone(ipr.addr, "del", index=index, address=str(ip),
                                prefixlen=msg["prefixlen"])
            if not have:
                try:
                    ipr.addr("add", index=index, address=str(address), prefixlen=128)
                except NetlinkError as e:
                    raise KernelError("cannot add %s/128 to link %d: %s" % (address, index, e))
            ipr.link("set", index=index, state="up")

    def apply_vxlan_peers(self, index: int, ext_index: int, changes,
                          direct_routing: bool = False, index6: Optional[int] = None) -> list:
        """
        C{changes}: C{(have, target)} pairs of L{VxlanPeer} or None. For each, in order:
        delete C{have}'s entries (missing ones are fine), then flanneld v0.10's entries for
        C{target}: neighbour, FDB, onlink route (the earlier ones undone when a later one
        fails); or with C{direct_routing} and a directly reachable peer, only
        C{subnet via PublicIP dev <ext>}. A peer with an IPv6 subnet goes on C{index6}
        (the C{flannel-v6} device), the others on C{index}: one batch for both families.

        @return: per change, in order, the peer installed (C{direct} set as installed;
            None when only removing) or the exception that failed it (a KernelError for
            an IPv6 peer without an C{index6}).
        """
        jobs = []
        for have, target in changes:
            peer = target if target is not None else have
            dev = index6 if peer.subnet.version == 6 else index
            if dev is None:
                job = Job([], [], None)
                job.error = KernelError("no flannel-v6 device for the IPv6 peer %s" % (peer,))
                jobs.append(job)
                continue
            removes = [] if have is None else _peer_removes(dev, ext_index, have)
            if target is None:
                jobs.append(Job(removes, [], None))
            elif direct_routing and self.is_direct(target.public_ip):
                target = replace(target, direct=True)
                jobs.append(Job(removes, [(route_request(
                    "replace", target.subnet, target.public_ip, ext_index), None)], target))
            else:
                target = replace(target, direct=False)
                jobs.append(Job(removes, self._peer_steps(dev, target), target))
        return self.run_jobs(jobs)
