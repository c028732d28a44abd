# -*- test-case-name: tests.unit.test_rtnetlink, tests.unit.test_vxlan, tests.lab.test_vxlan -*-
"""
The rtnetlink codec (pure: no sockets, no reactor): route, neighbour and FDB requests
packed byte for byte as pyroute2 packs them (the tests compare), and the parsing of the
route and neighbour dumps the kernel answers with.

A request is C{(type, flags, payload)}: the payload is everything after the nlmsghdr,
which L{flannel_tw.kernel.nlsocket.Netlink} adds (with the sequence number) when it sends.

Routes are written with protocol "boot", as flanneld's netlink library does, into the
main table. Every request and parser takes IPv4 or IPv6 (issue 15): the family follows the
addresses given (a route's from its subnet, a neighbour's from its IP, an FDB entry's
remote from its dst).
"""
import errno
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Optional, Union

from pyroute2.netlink.exceptions import NetlinkError

RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTNH_F_ONLINK = 4
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)
"""Errnos of a delete whose entry is already gone."""

# rtnetlink, as in <linux/netlink.h> and <linux/rtnetlink.h>
NETLINK_ROUTE = 0
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR = 1, 2
RTN_UNICAST = 1
HDR = struct.Struct("=IHHII")           # nlmsghdr: len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, protocol,
                                        # scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")      # family, ifindex, state, flags, type
ERR = struct.Struct("=i")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")


@dataclass(frozen=True)
class RouteEntry:
    """A main-table route as listed: destination, gateway (or None), output device."""
    subnet: Union[IPv4Network, IPv6Network]
    gateway: Optional[Union[IPv4Address, IPv6Address]]
    oif: int


def _rta(kind, data):
    n = _RTA.size + len(data)
    return _RTA.pack(n, kind) + data + b"\0" * (-n % 4)


def _ip(ip):
    return ip if isinstance(ip, (IPv4Address, IPv6Address)) else ip_address(ip)


def _packed(ip):
    return _ip(ip).packed


def family_of(ip_or_net) -> int:
    """AF_INET or AF_INET6, from an address or a network (of either family)."""
    return socket.AF_INET6 if ip_or_net.version == 6 else socket.AF_INET


def _mac(mac):
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw):
    """Link-layer address bytes as lower-case text with colons."""
    return ":".join("%02x" % b for b in raw)


def netlink_error(code):
    return NetlinkError(code, os.strerror(code))


def messages(data):
    """
    The netlink messages of a received datagram, in order: C{(type, seq, start, end)},
    C{data[start:end]} being the body; a message with a bad length yields
    C{(None, None, 0, 0)} and ends the walk.
    """
    offset = 0
    size = len(data)
    while offset + HDR.size <= size:
        n, kind, _, seq, _ = HDR.unpack_from(data, offset)
        if n < HDR.size:
            yield None, None, 0, 0
            return
        yield kind, seq, offset + HDR.size, offset + n
        offset += (n + 3) & ~3


def error_code(data, start):
    """The errno of an NLMSG_ERROR whose body starts at C{start} (0: an ack)."""
    return -ERR.unpack_from(data, start)[0]


def route_request(command, subnet, gateway, oif, onlink=False):
    """
    C{ip route replace|del <subnet> [via <gateway>] dev <oif> [onlink]} in the main table,
    protocol boot on replace: C{(type, flags, payload)} as pyroute2 packs it.
    """
    family = family_of(subnet)
    if command == "replace":
        kind, flags = RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
        head = RTMSG.pack(family, subnet.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT,
                          0, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
    elif command == "del":
        kind, flags = RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK
        head = RTMSG.pack(family, subnet.prefixlen, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0)
    else:
        raise ValueError(command)
    attrs = _rta(RTA_DST, subnet.network_address.packed)
    if gateway is not None:
        attrs += _rta(RTA_GATEWAY, _packed(gateway))
    attrs += _rta(RTA_OIF, _U32.pack(oif)) + _rta(RTA_TABLE, _U32.pack(RT_TABLE_MAIN))
    return kind, flags, head + attrs


def neigh_request(command, index, ip, mac):
    """C{ip neigh replace|del <ip> lladdr <mac> dev <index> [nud permanent]}."""
    kind, flags = _neigh_command(command)
    head = NDMSG.pack(family_of(_ip(ip)), index, NUD_PERMANENT, 0, 0)
    return kind, flags, head + _rta(NDA_DST, _packed(ip)) + _rta(NDA_LLADDR, _mac(mac))


def fdb_request(command, index, mac, dst):
    """C{bridge fdb replace|del <mac> dev <index> dst <dst> self permanent} (C{dst}: an
    IPv4 or IPv6 remote; the message is AF_BRIDGE either way)."""
    kind, flags = _neigh_command(command)
    head = NDMSG.pack(socket.AF_BRIDGE, index, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
    return kind, flags, head + _rta(NDA_LLADDR, _mac(mac)) + _rta(NDA_DST, _packed(dst))


def _neigh_command(command):
    if command == "replace":
        return RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
    if command == "del":
        return RTM_DELNEIGH, NLM_F_REQUEST | NLM_F_ACK
    raise ValueError(command)


def route_get_payload(ip):
    """The body of C{ip route get <ip>} (an RTM_GETROUTE without dump)."""
    ip = _ip(ip)
    return (RTMSG.pack(family_of(ip), ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
            + _rta(RTA_DST, ip.packed))


def route_dump_payload(family=socket.AF_INET):
    """The body of a route dump of one family."""
    return RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


ROUTE_DUMP = route_dump_payload(socket.AF_INET)


def neigh_dump_payload(family):
    return NDMSG.pack(family, 0, 0, 0, 0)


def attrs(data, offset):
    """rtattrs from C{offset} to the end of C{data}: {type: payload}."""
    out = {}
    end = len(data)
    while offset + 4 <= end:
        n, kind = _RTA.unpack_from(data, offset)
        if n < 4:
            break
        out[kind & 0x3fff] = data[offset + 4:offset + n]
        offset += (n + 3) & ~3
    return out


def route_has_gateway(body):
    """Whether an RTM_NEWROUTE body (the answer of a route get) names a gateway."""
    return RTA_GATEWAY in attrs(body, RTMSG.size)


def parse_route(kind, body, network):
    """
    One message of a route dump as a L{RouteEntry}, when it is a main-table route of
    C{network}'s family (IPv4 or IPv6) to a subnet strictly inside C{network}; else None.
    Routes the kernel made itself (protocol kernel) are never listed: an IPv6 address
    C{<v6 subnet addr>/128} on C{flannel-v6.<VNI>} brings one, and it is not a peer's.
    """
    if kind != RTM_NEWROUTE or len(body) < RTMSG.size:
        return None
    family, dst_len, _, _, table, protocol, _, _, _ = RTMSG.unpack_from(body)
    if (family != family_of(network) or dst_len <= network.prefixlen
            or protocol == RTPROT_KERNEL):
        return None
    a = attrs(body, RTMSG.size)
    if RTA_TABLE in a:
        table = _U32.unpack(a[RTA_TABLE][:4])[0]
    dst = a.get(RTA_DST)
    size = network.max_prefixlen // 8
    if table != RT_TABLE_MAIN or dst is None or len(dst) != size:
        return None
    if int.from_bytes(dst, "big") & int(network.netmask) != int(network.network_address):
        return None
    gw = a.get(RTA_GATEWAY)
    oif = a.get(RTA_OIF)
    address = IPv6Address if size == 16 else IPv4Address
    net = IPv6Network if size == 16 else IPv4Network
    return RouteEntry(net((address(dst), dst_len), strict=False),
                      address(gw) if gw and len(gw) == size else None,
                      _U32.unpack(oif[:4])[0] if oif else 0)


def parse_neigh(kind, body):
    """One message of a neighbour dump: C{(family, ifindex, state, attrs)}, or None."""
    if kind != RTM_NEWNEIGH or len(body) < NDMSG.size:
        return None
    fam, ifindex, state, _, _ = NDMSG.unpack_from(body)
    return fam, ifindex, state, attrs(body, NDMSG.size)
