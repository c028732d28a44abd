# -*- test-case-name: tests.unit.test_iface, tests.lab.test_iface -*-
"""
Choosing the external interface and public IP as flanneld does (flannel-compat.md
section 10), with pyroute2.

flanneld v0.10 (``main.go`` ``LookupExtIface`` and ``pkg/ip/iface.go``):

- no ``--iface`` and no ``--iface-regex``: the interface of the first IPv4 route
  in the main table whose destination is nil or 0/0;
- each ``--iface`` in order: an IP address selects the interface holding exactly
  that IPv4 address (and that address is used), anything else is a name;
- then each ``--iface-regex``: an unanchored match against each interface's
  first usable IPv4 address (interfaces in index order), then against names;
- the address is the first global-unicast IPv4 address, else a link-local one;
- an MTU of 0 is an error;
- the public IP is ``--public-ip`` if given, else the interface address.
"""
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import List, Optional, Sequence, Tuple


FAILED = ("Failed to find interface to use that matches the interfaces "
          "and/or regexes provided")

RT_TABLE_MAIN = 254
_BROADCAST = IPv4Address("255.255.255.255")
_LINK_LOCAL = IPv4Network("169.254.0.0/16")


class IfaceError(Exception):
    """No interface matches; the message lists the candidates seen."""


@dataclass(frozen=True)
class ExtIface:
    name: str
    index: int
    addr: IPv4Address        # the interface address (IfaceAddr)
    public_ip: IPv4Address   # --public-ip or addr
    mtu: int
    # IPv6 (issue 15): set only when the network config enables IPv6.
    addr6: Optional[IPv6Address] = None        # the interface's v6 address (IfaceV6Addr)
    public_ipv6: Optional[IPv6Address] = None  # --public-ipv6 or addr6


@dataclass(frozen=True)
class _Link:
    index: int
    name: str
    mtu: int
    addrs: Tuple[IPv4Address, ...]   # every IPv4 address, kernel order


def is_global_unicast(a: IPv4Address) -> bool:
    """Go's ``net.IP.IsGlobalUnicast`` for IPv4 (private ranges count)."""
    return not (a.is_loopback or a.is_multicast or a.is_unspecified
                or a == _BROADCAST or a in _LINK_LOCAL)


def is_link_local_unicast(a: IPv4Address) -> bool:
    return a in _LINK_LOCAL


def usable_ip4(addrs: Sequence[IPv4Address]) -> Optional[IPv4Address]:
    """flanneld's GetIfaceIP4Addr: the first global-unicast, else a link-local address."""
    for a in addrs:
        if is_global_unicast(a):
            return a
    for a in addrs:
        if is_link_local_unicast(a):
            return a
    return None


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def _read_links(ipr) -> List[_Link]:
    by_index = {}
    for a in ipr.get_addr(family=socket.AF_INET):
        text = _attr(a, "IFA_LOCAL") or _attr(a, "IFA_ADDRESS")
        if text is None:
            continue
        by_index.setdefault(a["index"], []).append(IPv4Address(text))
    links = []
    for msg in ipr.get_links():
        links.append(_Link(index=msg["index"],
                           name=_attr(msg, "IFLA_IFNAME", ""),
                           mtu=_attr(msg, "IFLA_MTU", 0) or 0,
                           addrs=tuple(by_index.get(msg["index"], ()))))
    links.sort(key=lambda l: l.index)
    return links


def _default_route_index(ipr) -> int:
    """flanneld's GetDefaultGatewayIface: first IPv4 main-table route to nil or 0/0."""
    for r in ipr.get_routes(family=socket.AF_INET):
        table = _attr(r, "RTA_TABLE", r["table"])
        if table != RT_TABLE_MAIN:
            continue
        if r["dst_len"] != 0:
            continue
        oif = _attr(r, "RTA_OIF", 0) or 0
        if oif <= 0:
            raise LookupError("Found default route but could not determine interface")
        return oif
    raise LookupError("Unable to find default route")


def _describe(links: Sequence[_Link]) -> str:
    parts = []
    for l in links:
        addrs = ",".join(str(a) for a in l.addrs) or "no IPv4"
        parts.append("%s (%s)" % (l.name, addrs))
    return ", ".join(parts) or "none"


def _finish(link: _Link, addr: Optional[IPv4Address],
            public: Optional[IPv4Address]) -> ExtIface:
    if addr is None:
        addr = usable_ip4(link.addrs)
        if addr is None:
            raise LookupError("failed to find IPv4 address for interface %s" % link.name)
    if link.mtu == 0:
        raise LookupError("failed to determine MTU for %s interface" % addr)
    return ExtIface(name=link.name, index=link.index, addr=addr,
                    public_ip=public if public is not None else addr, mtu=link.mtu)


def _by_iface(links: Sequence[_Link], spec: str, public) -> ExtIface:
    try:
        wanted = ip_address(spec)
    except ValueError:
        wanted = None
    if wanted is not None:
        if wanted.version == 4:
            for l in links:
                if wanted in l.addrs:
                    return _finish(l, wanted, public)
        raise LookupError("error looking up interface %s: No interface with given IP found" % spec)
    for l in links:
        if l.name == spec:
            return _finish(l, None, public)
    raise LookupError("error looking up interface %s: no such network interface" % spec)


def _by_regex(links: Sequence[_Link], pattern: str, public) -> ExtIface:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise LookupError("bad --iface-regex %r: %s" % (pattern, e))
    for l in links:
        a = usable_ip4(l.addrs)
        if a is not None and rx.search(str(a)):
            return _finish(l, a, public)
    for l in links:
        if rx.search(l.name):
            return _finish(l, None, public)
    raise LookupError("Could not match pattern %s to any of the available network "
                      "interfaces (%s)" % (pattern, ", ".join(l.name for l in links)))


def parse_public_ip(public_ip: Optional[str]) -> Optional[IPv4Address]:
    """Parse ``--public-ip``; ``None``/``""`` mean unset. Raises ValueError naming the flag."""
    if not public_ip:
        return None
    try:
        return IPv4Address(public_ip)
    except ValueError:
        raise ValueError("invalid --public-ip address: %r (must be an IPv4 address)"
                         % (public_ip,))


def lookup_ext_iface(ifaces: Sequence[str] = (), regexes: Sequence[str] = (),
                     public_ip: Optional[str] = None, *, ipr=None) -> ExtIface:
    """
    Choose the external interface as flanneld v0.10 does.

    ``ipr`` is an object with pyroute2 IPRoute's API (``get_links``, ``get_addr``,
    ``get_routes``), e.g. a ``pyroute2.NetNS``; when None a ``pyroute2.IPRoute()``
    is opened and closed.

    Raises IfaceError with the candidates listed, or ValueError for a bad --public-ip.
    """
    if isinstance(ifaces, str):
        ifaces = [ifaces]
    if isinstance(regexes, str):
        regexes = [regexes]
    public = parse_public_ip(public_ip)
    own = ipr is None
    if own:
        from pyroute2 import IPRoute
        ipr = IPRoute()
    try:
        links = _read_links(ipr)
        errors = []
        if not ifaces and not regexes:
            try:
                index = _default_route_index(ipr)
                for l in links:
                    if l.index == index:
                        return _finish(l, None, public)
                raise LookupError("default route interface index %d not found" % index)
            except LookupError as e:
                raise IfaceError("failed to get default interface: %s; interfaces: %s"
                                 % (e, _describe(links)))
        for spec in ifaces:
            try:
                return _by_iface(links, spec, public)
            except LookupError as e:
                errors.append(str(e))
        for pattern in regexes:
            try:
                return _by_regex(links, pattern, public)
            except LookupError as e:
                errors.append(str(e))
        asked = []
        if ifaces:
            asked.append("--iface=%s" % ",".join(ifaces))
        if regexes:
            asked.append("--iface-regex=%s" % ",".join(regexes))
        raise IfaceError("%s (%s); %s; interfaces: %s"
                         % (FAILED, " ".join(asked), "; ".join(errors), _describe(links)))
    finally:
        if own:
            ipr.close()
