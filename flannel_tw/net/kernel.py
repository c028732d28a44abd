# -*- test-case-name: tests.test_kernel_overlay -*-
"""
Kernel state for the vxlan and host-gw backends, through pyroute2 (flannel-compat.md
sections 7 and 8): the vxlan device, its address, per-peer neighbour / FDB / route
entries, host-gw routes, and the listings used to find entries left from an earlier run.

Every method blocks (netlink round trips): from the reactor thread run them with
C{twisted.internet.threads.deferToThread}. A L{Kernel} opens one netlink socket per call,
in the current network namespace, or in C{netns} when given (tests).

Routes are written with protocol "boot", as flanneld's netlink library does, into the
main table.
"""
import errno
import socket
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from typing import List, Optional, Tuple

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTNH_F_ONLINK = 4
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFF_UP = 1
VXLAN_DEFAULT_PORT = 8472       # the kernel's port when IFLA_VXLAN_PORT is not sent
_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)


class KernelError(Exception):
    """The kernel state cannot be made as asked; the message says what and where."""


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


@dataclass(frozen=True)
class HostGwRoute:
    """C{subnet via gateway dev <oif>}: one remote host-gw lease."""
    subnet: IPv4Network
    gateway: IPv4Address

    def __str__(self):
        return "%s via %s" % (self.subnet, self.gateway)


@dataclass(frozen=True)
class RouteEntry:
    """A main-table route as listed: destination, gateway (or None), output device."""
    subnet: IPv4Network
    gateway: Optional[IPv4Address]
    oif: int


def _ignore_gone(fn, *args, **kw):
    """Run a netlink delete; an entry that is already gone is not an error."""
    try:
        fn(*args, **kw)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


class Kernel:
    """
    Blocking netlink helpers. C{netns}: the name of a network namespace to work in
    (None: the current one).
    """

    def __init__(self, netns: Optional[str] = None):
        self.netns = netns

    def _open(self):
        return NetNS(self.netns) if self.netns else IPRoute()

    # -- links ----------------------------------------------------------------

    def link_index(self, name: str) -> Optional[int]:
        with self._open() as ipr:
            found = ipr.link_lookup(ifname=name)
            return found[0] if found else None

    def link_mac(self, name: str) -> Optional[str]:
        with self._open() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            return _attr(ipr.get_links(found[0])[0], "IFLA_ADDRESS", "").lower()

    @staticmethod
    def vxlan_incompatibility(link, spec: VxlanSpec) -> Optional[str]:
        """
        Why an existing link cannot serve as C{spec}'s device, or None if it can
        (flanneld's vxlanLinksIncompat, plus learning: ours is always off).
        """
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "vxlan":
            return "link type %s, not vxlan" % (kind,)
        data = info.get_attr("IFLA_INFO_DATA")
        if data is None:
            return "no vxlan attributes"
        have = {
            "vni": _attr(data, "IFLA_VXLAN_ID"),
            "link": _attr(data, "IFLA_VXLAN_LINK", 0),
            "local": _attr(data, "IFLA_VXLAN_LOCAL"),
            "group": _attr(data, "IFLA_VXLAN_GROUP"),
            "l2miss": _attr(data, "IFLA_VXLAN_L2MISS", 0),
            "port": _attr(data, "IFLA_VXLAN_PORT", VXLAN_DEFAULT_PORT),
            "gbp": bool(data.get_attr("IFLA_VXLAN_GBP")),
            "learning": _attr(data, "IFLA_VXLAN_LEARNING", 0),
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

    def ensure_vxlan(self, spec: VxlanSpec) -> Tuple[int, str, str]:
        """
        Make C{flannel.<VNI>}: reuse a compatible device, else delete it and create one.

        @return: C{(index, mac, what)}, C{what} being "reused", "created" or
            "recreated (<reason>)".
        @raise KernelError: the kernel refused.
        """
        with self._open() as ipr:
            what = "created"
            found = ipr.link_lookup(ifname=spec.name)
            if found:
                link = ipr.get_links(found[0])[0]
                reason = self.vxlan_incompatibility(link, spec)
                if reason is None:
                    return found[0], _attr(link, "IFLA_ADDRESS", "").lower(), "reused"
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
            mac = _attr(ipr.get_links(index)[0], "IFLA_ADDRESS", "").lower()
            return index, mac, what

    def configure_vxlan(self, index: int, address: IPv4Address) -> None:
        """
        Give the device exactly C{address/32} (one other address is replaced, more than
        one is an error, as in flanneld) and bring it up.

        @raise KernelError: several other addresses, or the kernel refused.
        """
        with self._open() as ipr:
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
                _ignore_gone(ipr.addr, "del", index=index, address=ip, prefixlen=plen)
            if not have:
                ipr.addr("add", index=index, address=str(address), prefixlen=32)
            ipr.link("set", index=index, state="up")

    # -- routes ---------------------------------------------------------------

    def is_direct(self, ip: IPv4Address) -> bool:
        """flanneld's ip.DirectRouting: the route lookup to C{ip} has no gateway."""
        with self._open() as ipr:
            try:
                routes = ipr.route("get", dst=str(ip))
            except NetlinkError:
                return False
            routes = list(routes)
            return len(routes) == 1 and routes[0].get_attr("RTA_GATEWAY") is None

    @staticmethod
    def _route(ipr, command, subnet, gateway, oif, onlink=False):
        kw = dict(dst=str(subnet.network_address), dst_len=subnet.prefixlen,
                  gateway=str(gateway), oif=oif, table=RT_TABLE_MAIN)
        if command != "del":
            kw["proto"] = RTPROT_BOOT
        if onlink:
            kw["flags"] = RTNH_F_ONLINK
        ipr.route(command, **kw)

    def replace_route(self, subnet: IPv4Network, gateway: IPv4Address, oif: int,
                      onlink: bool = False) -> None:
        """C{ip route replace subnet via gateway dev <oif> [onlink]}. Raises NetlinkError."""
        with self._open() as ipr:
            self._route(ipr, "replace", subnet, gateway, oif, onlink)

    def delete_route(self, subnet: IPv4Network, gateway: IPv4Address, oif: int) -> None:
        """Delete that route; a missing one is not an error."""
        with self._open() as ipr:
            _ignore_gone(self._route, ipr, "del", subnet, gateway, oif)

    def routes(self, network: IPv4Network) -> List[RouteEntry]:
        """Main-table routes to subnets strictly inside C{network}."""
        out = []
        with self._open() as ipr:
            for r in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
                dst = r.get_attr("RTA_DST")
                if dst is None or _attr(r, "RTA_TABLE", r["table"]) != RT_TABLE_MAIN:
                    continue
                subnet = IPv4Network("%s/%d" % (dst, r["dst_len"]), strict=False)
                if subnet == network or not subnet.subnet_of(network):
                    continue
                gw = r.get_attr("RTA_GATEWAY")
                out.append(RouteEntry(subnet, IPv4Address(gw) if gw else None,
                                      _attr(r, "RTA_OIF", 0)))
        return out

    def has_route(self, subnet: IPv4Network, gateway: IPv4Address, oif: int) -> bool:
        return RouteEntry(subnet, gateway, oif) in self.routes(subnet.supernet())

    # -- host-gw ----------------------------------------------------------------

    def install_hostgw(self, route: HostGwRoute, oif: int) -> HostGwRoute:
        """C{route replace <subnet> via <PublicIP> dev <ext>}; raises NetlinkError."""
        self.replace_route(route.subnet, route.gateway, oif)
        return route

    def remove_hostgw(self, route: HostGwRoute, oif: int) -> None:
        self.delete_route(route.subnet, route.gateway, oif)

    # -- vxlan peers ------------------------------------------------------------

    def install_vxlan_peer(self, index: int, ext_index: int, peer: VxlanPeer,
                           direct_routing: bool = False) -> VxlanPeer:
        """
        flanneld v0.10's entries for one remote vxlan lease: neighbour, FDB, onlink route
        (the earlier ones undone when a later one fails); or with C{direct_routing} and a
        directly reachable peer, only C{subnet via PublicIP dev <ext>}.

        @return: the peer with C{direct} set as installed.
        @raise NetlinkError: the step that failed, after the undo.
        """
        if direct_routing and self.is_direct(peer.public_ip):
            self.replace_route(peer.subnet, peer.public_ip, ext_index)
            return replace(peer, direct=True)
        peer = replace(peer, direct=False)
        with self._open() as ipr:
            ipr.neigh("replace", ifindex=index, dst=str(peer.gateway), lladdr=peer.mac,
                      state=NUD_PERMANENT)
            try:
                ipr.neigh("replace", family=socket.AF_BRIDGE, ifindex=index,
                          lladdr=peer.mac, dst=str(peer.public_ip),
                          state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
                try:
                    self._route(ipr, "replace", peer.subnet, peer.gateway, index, onlink=True)
                except NetlinkError:
                    self._del_fdb(ipr, index, peer.mac, peer.public_ip)
                    raise
            except NetlinkError:
                _ignore_gone(ipr.neigh, "del", ifindex=index, dst=str(peer.gateway),
                             lladdr=peer.mac)
                raise
        return peer

    def remove_vxlan_peer(self, index: int, ext_index: int, peer: VxlanPeer) -> None:
        """Delete what L{install_vxlan_peer} made; missing entries are not errors."""
        if peer.direct:
            self.delete_route(peer.subnet, peer.public_ip, ext_index)
            return
        with self._open() as ipr:
            _ignore_gone(ipr.neigh, "del", ifindex=index, dst=str(peer.gateway),
                         lladdr=peer.mac)
            self._del_fdb(ipr, index, peer.mac, peer.public_ip)
            _ignore_gone(self._route, ipr, "del", peer.subnet, peer.gateway, index)

    @staticmethod
    def _del_fdb(ipr, index, mac, dst):
        _ignore_gone(ipr.neigh, "del", family=socket.AF_BRIDGE, ifindex=index, lladdr=mac,
                     dst=str(dst), state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)

    def neighbours(self, index: int) -> List[Tuple[IPv4Address, str]]:
        """Permanent IPv4 neighbours on the device: C{(ip, mac)}."""
        with self._open() as ipr:
            return [(IPv4Address(n.get_attr("NDA_DST")), (n.get_attr("NDA_LLADDR") or "").lower())
                    for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=index)
                    if n["state"] & NUD_PERMANENT and n.get_attr("NDA_DST")]

    def fdb(self, index: int) -> List[Tuple[str, IPv4Address]]:
        """Unicast FDB entries with a remote destination on the device: C{(mac, dst)}."""
        out = []
        with self._open() as ipr:
            for n in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=index):
                dst = n.get_attr("NDA_DST")
                if n["ifindex"] != index or not dst or ":" in dst:
                    continue
                out.append(((n.get_attr("NDA_LLADDR") or "").lower(), IPv4Address(dst)))
        return out

    def delete_neighbour(self, index: int, ip: IPv4Address, mac: str) -> None:
        with self._open() as ipr:
            _ignore_gone(ipr.neigh, "del", ifindex=index, dst=str(ip), lladdr=mac)

    def delete_fdb(self, index: int, mac: str, dst: IPv4Address) -> None:
        with self._open() as ipr:
            self._del_fdb(ipr, index, mac, dst)

    def delete_route_entry(self, entry: RouteEntry) -> None:
        with self._open() as ipr:
            kw = dict(dst=str(entry.subnet.network_address), dst_len=entry.subnet.prefixlen,
                      oif=entry.oif, table=RT_TABLE_MAIN)
            if entry.gateway is not None:
                kw["gateway"] = str(entry.gateway)
            _ignore_gone(ipr.route, "del", **kw)

    # -- leftovers --------------------------------------------------------------

    def remove_stale(self, network: IPv4Network, keep_subnets, vxlan_index: Optional[int],
                     ext_index: int, keep_macs=()) -> List[str]:
        """
        Remove entries an earlier run left for leases that no longer exist:

          - routes to subnets strictly inside C{network} that are not in C{keep_subnets}
            and go via the vxlan device (C{vxlan_index}) or via a gateway on the ext iface;
          - with a vxlan device, its permanent neighbours whose IP is not the .0 of a kept
            subnet, and its FDB entries whose MAC is not in C{keep_macs}.

        @return: a description of each entry removed.
        """
        keep_subnets = set(keep_subnets)
        keep_ips = {s.network_address for s in keep_subnets}
        keep_macs = {m.lower() for m in keep_macs}
        removed = []
        for r in self.routes(network):
            if r.subnet in keep_subnets:
                continue
            ours = ((vxlan_index is not None and r.oif == vxlan_index)
                    or (r.oif == ext_index and r.gateway is not None))
            if ours:
                self.delete_route_entry(r)
                removed.append("route %s via %s" % (r.subnet, r.gateway))
        if vxlan_index is not None:
            for ip, mac in self.neighbours(vxlan_index):
                if ip not in keep_ips:
                    self.delete_neighbour(vxlan_index, ip, mac)
                    removed.append("neighbour %s lladdr %s" % (ip, mac))
            for mac, dst in self.fdb(vxlan_index):
                if mac not in keep_macs:
                    self.delete_fdb(vxlan_index, mac, dst)
                    removed.append("fdb %s dst %s" % (mac, dst))
        return removed
