# -*- test-case-name: tests.unit.test_kernel_seam, tests.lab.test_udp_backend -*-
"""
Kernel configuration for backends through pyroute2 (never by running ``ip``).

These calls block: from the reactor thread, run them with
C{twisted.internet.threads.deferToThread}.
"""
import errno
import socket
from ipaddress import IPv4Interface, IPv4Network, ip_address, ip_interface, ip_network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from zope.interface import moduleProvides

from flannel_tw.interfaces import INetlink

moduleProvides(INetlink)


class LinkNotFound(LookupError):
    """No network device has the given name."""


def _index(ipr, ifname):
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LinkNotFound("network device %r does not exist" % (ifname,))
    return found[0]


def configure_tun(ifname, address, mtu, route, gso_max_size=None, address6=None,
                  route6=None):
    """
    Configure the udp backend's TUN device as flanneld v0.11+ does:

      - delete every other IPv4 address on the device (e.g. v0.10's C{.0/<Network
        prefix>}), keeping C{address} if present;
      - add C{address} (EEXIST ignored);
      - set the MTU and bring the link up;
      - add the route C{route dev ifname}; if that destination is already routed via
        another device, replace it (EEXIST on the same device is ignored).

    @param ifname: the device, e.g. C{"flannel0"}.
    @param address: L{IPv4Interface}, normally C{<lease .0>/32}.
    @param mtu: int.
    @param route: L{IPv4Network}, the whole flannel Network.
    @param gso_max_size: when set, the device's largest GSO packet (the udp backend
        leaves the default: a lower value makes the kernel segment forwarded 64 KB
        packets in software).
    @param address6: L{IPv6Interface} C{<v6 subnet addr>/128} when the udp backend
        carries IPv6 (issue 15): IPv6 is enabled on the device, C{address6} becomes its
        only non-link-local IPv6 address and C{route6} (the IPv6Network) is routed to
        it. None: IPv6 is left alone.
    @raise LinkNotFound: no such device.
    @raise NetlinkError: the kernel refused a step.
    """
    address = IPv4Interface(address)
    route = IPv4Network(route)
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        _only_address(ipr, idx, address)
        if gso_max_size:
            ipr.link("set", index=idx, gso_max_size=int(gso_max_size))
        ipr.link("set", index=idx, mtu=int(mtu), state="up")
        # The ICMP net-unreachable replies we write into the tun have our own .0 as source:
        # without accept_local the kernel drops them as martians (source is a local address).
        with open("/proc/sys/net/ipv4/conf/%s/accept_local" % ifname, "w") as f:
            f.write("1")
        dst = str(route.network_address)
        try:
            ipr.route("add", dst=dst, dst_len=route.prefixlen, oif=idx)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            if not _route_via(ipr, dst, route.prefixlen, idx):
                ipr.route("replace", dst=dst, dst_len=route.prefixlen, oif=idx)
        if address6 is not None:
            _configure_tun6(ipr, ifname, idx, ip_interface(address6), ip_network(route6))


def _only_address(ipr, idx, address):
    """
    Make C{address} (an IPv4Interface or IPv6Interface) the only address of its family on
    the link C{idx}: others removed (IPv6 link-local ones stay), it added if missing.
    """
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    want = (str(address.ip), address.network.prefixlen)
    have = False
    for msg in ipr.get_addr(index=idx, family=family):
        ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if (ip, msg["prefixlen"]) == want:
            have = True
            continue
        if family == socket.AF_INET6 and ip_address(ip).is_link_local:
            continue
        try:
            ipr.addr("del", index=idx, address=ip, prefixlen=msg["prefixlen"])
        except NetlinkError as e:
            if e.code != errno.EADDRNOTAVAIL:
                raise
    if not have:
        try:
            ipr.addr("add", index=idx, address=want[0], prefixlen=want[1])
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise


def _configure_tun6(ipr, ifname, idx, address, route):
    """configure_tun's IPv6 part (the link is up already)."""
    path = "/proc/sys/net/ipv6/conf/%s/disable_ipv6" % ifname
    try:
        with open(path, "w") as f:
            f.write("0")
    except FileNotFoundError:
        pass            # no IPv6 conf for the device yet: IPv6 is on by default
    _only_address(ipr, idx, address)
    ipr.route("replace", family=socket.AF_INET6, dst=str(route.network_address),
              dst_len=route.prefixlen, oif=idx)


def configure_link(ifname, address, mtu, route):
    """
    Configure a point-to-point device the kernel encrypts or encapsulates on (the
    wireguard backend's C{flannel-wg} / C{flannel-wg-v6}), as flanneld does: C{address}
    as the only address of its family (IPv6 link-local ones stay), the MTU, up, and one
    C{route dev ifname scope link} for the whole flannel network (replacing a route to
    it via another device).

    @param address: L{IPv4Interface} C{<lease .0>/32} or L{IPv6Interface} C{/128}.
    @param route: the flannel network of the same family.
    @raise LinkNotFound: no such device.
    @raise NetlinkError: the kernel refused a step.
    """
    address = ip_interface(address)
    route = ip_network(route)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        _only_address(ipr, idx, address)
        ipr.link("set", index=idx, mtu=int(mtu), state="up")
        ipr.route("replace", family=family, dst=str(route.network_address),
                  dst_len=route.prefixlen, oif=idx, scope=253)    # RT_SCOPE_LINK


def _route_via(ipr, dst, dst_len, idx):
    """Whether the main table routes dst/dst_len via device idx."""
    for r in ipr.get_routes(family=socket.AF_INET, dst=dst, dst_len=dst_len, table=254):
        if r["dst_len"] == dst_len and r.get_attr("RTA_DST") == dst:
            if r.get_attr("RTA_OIF") == idx:
                return True
            for nh in r.get_attr("RTA_MULTIPATH") or ():
                if nh["oif"] == idx:
                    return True
    return False


def link_state(ifname):
    """
    What the kernel shows for C{ifname}: a dict with C{index}, C{mtu}, C{up} (bool),
    C{addresses} (list of IPv4Interface) and C{routes} (list of IPv4Network of main-table
    routes via the device). For tests and diagnostics.
    """
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        link = ipr.get_links(idx)[0]
        addrs = [
            IPv4Interface("%s/%d" % (m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"),
                                     m["prefixlen"]))
            for m in ipr.get_addr(index=idx, family=socket.AF_INET)
        ]
        routes = [
            IPv4Network("%s/%d" % (r.get_attr("RTA_DST") or "0.0.0.0", r["dst_len"]))
            for r in ipr.get_routes(family=socket.AF_INET, oif=idx, table=254)
        ]
        return {
            "index": idx,
            "mtu": link.get_attr("IFLA_MTU"),
            "up": bool(link["flags"] & 1),   # IFF_UP
            "addresses": addrs,
            "routes": routes,
        }
