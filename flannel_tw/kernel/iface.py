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

With ``ipv6=True`` (the network config has EnableIPv6; flannel-tw refuses IPv6-only
configs, so this is dual-stack) the choice is flanneld v0.20's (``main.go``,
flanneld-v0.20-v3.md section C), which also picks the IPv6 address:

- no ``--iface``/``--iface-regex``: ``--public-ip`` selects the interface holding it,
  as ``--iface <that IP>`` would (a NAT'd address fails); else ``--public-ipv6`` the
  same way; else the default-route interface, whose v4 and v6 default routes must
  leave by the same interface (flanneld's error text);
- ``--iface <IPv4>``: the v6 address comes only from ``--public-ipv6``, which must be
  on the same interface; without it there is no v6 address (the daemon warns);
- ``--iface <IPv6>``: the interface holding it, that v6 address and the first usable
  v4 one;
- ``--iface <name>`` and a name matched by ``--iface-regex``: the first usable address
  of each family; an interface without a v6 address does not match;
- ``--iface-regex`` matches an interface by address only when its first usable v4 and
  first usable v6 addresses both match, else by name;
- a usable v6 address is the first global-unicast one (ULA counts: Go's
  ``IsGlobalUnicast``), else a link-local one;
- the public IPv6 is ``--public-ipv6`` if given, else the interface's v6 address.

IPv4-only configs keep v0.10's choice above: there ``--public-ip`` is only published
(a NAT'd public IP keeps working, as in the v0.10-v0.17 clusters flannel-tw joins) and
``--public-ipv6`` is not used.
"""
import re
import socket
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import List, Optional, Sequence, Tuple


FAILED = ("Failed to find interface to use that matches the interfaces "
          "and/or regexes provided")

RT_TABLE_MAIN = 254
_BROADCAST = IPv4Address("255.255.255.255")
_LINK_LOCAL = IPv4Network("169.254.0.0/16")
_LINK_LOCAL6 = IPv6Network("fe80::/10")


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
    addrs6: Tuple[IPv6Address, ...] = ()   # every IPv6 address, kernel order


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


def is_global_unicast6(a: IPv6Address) -> bool:
    """Go's ``net.IP.IsGlobalUnicast`` for IPv6: ULA (fc00::/7) and site-local count."""
    return not (a.is_loopback or a.is_multicast or a.is_unspecified or a in _LINK_LOCAL6)


def usable_ip6(addrs: Sequence[IPv6Address]) -> Optional[IPv6Address]:
    """flanneld's GetIfaceIP6Addr: the first global-unicast, else a link-local address."""
    for a in addrs:
        if is_global_unicast6(a):
            return a
    for a in addrs:
        if a in _LINK_LOCAL6:
            return a
    return None


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


def _read_links(ipr, v6=False) -> List[_Link]:
    by_index = {}
    for a in ipr.get_addr(family=socket.AF_INET):
        text = _attr(a, "IFA_LOCAL") or _attr(a, "IFA_ADDRESS")
        if text is None:
            continue
        by_index.setdefault(a["index"], []).append(IPv4Address(text))
    by_index6 = {}
    if v6:
        for a in ipr.get_addr(family=socket.AF_INET6):
            text = _attr(a, "IFA_ADDRESS") or _attr(a, "IFA_LOCAL")
            if text is None:
                continue
            by_index6.setdefault(a["index"], []).append(IPv6Address(text.split("%")[0]))
    links = []
    for msg in ipr.get_links():
        links.append(_Link(index=msg["index"],
                           name=_attr(msg, "IFLA_IFNAME", ""),
                           mtu=_attr(msg, "IFLA_MTU", 0) or 0,
                           addrs=tuple(by_index.get(msg["index"], ())),
                           addrs6=tuple(by_index6.get(msg["index"], ()))))
    links.sort(key=lambda l: l.index)
    return links


def _default_route_index(ipr, family=socket.AF_INET) -> int:
    """flanneld's GetDefaultGatewayIface (GetDefaultV6GatewayIface for AF_INET6): the
    first main-table route of C{family} to nil or the whole space."""
    v6 = " v6" if family == socket.AF_INET6 else ""
    for r in ipr.get_routes(family=family):
        table = _attr(r, "RTA_TABLE", r["table"])
        if table != RT_TABLE_MAIN:
            continue
        if r["dst_len"] != 0:
            continue
        oif = _attr(r, "RTA_OIF", 0) or 0
        if oif <= 0:
            raise LookupError("Found default%s route but could not determine interface" % v6)
        return oif
    raise LookupError("Unable to find default%s route" % v6)


def _describe(links: Sequence[_Link], v6=False) -> str:
    parts = []
    for l in links:
        addrs = ",".join(str(a) for a in l.addrs) or "no IPv4"
        if v6:
            addrs += "; " + (",".join(str(a) for a in l.addrs6) or "no IPv6")
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
        else:
            # not in v0.10 (which fails): the interface holding that IPv6 address and its
            # first usable IPv4 one, so that a dual-stack --iface <IPv6> passes the first,
            # IPv4 choice made before the config is read
            for l in links:
                if wanted in l.addrs6:
                    return _finish(l, None, public)
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


def parse_public_ipv6(public_ipv6: Optional[str]) -> Optional[IPv6Address]:
    """Parse ``--public-ipv6``; ``None``/``""`` mean unset. Raises ValueError naming the flag."""
    if not public_ipv6:
        return None
    try:
        if "%" in public_ipv6:          # a scope (zone): Go's net.ParseIP has none
            raise ValueError(public_ipv6)
        return IPv6Address(public_ipv6)
    except ValueError:
        raise ValueError("invalid --public-ipv6 address: %r (must be an IPv6 address)"
                         % (public_ipv6,))


# -- dual-stack (flanneld v0.20) --------------------------------------------------

def _finish_dual(link: _Link, addr, addr6, public, public6, need6=True) -> ExtIface:
    """The ExtIface of C{link} with both families; C{addr6} None and C{need6}: the
    first usable v6 address, none being an error."""
    ext = _finish(link, addr, public)
    if addr6 is None and need6:
        addr6 = usable_ip6(link.addrs6)
        if addr6 is None:
            raise LookupError("failed to find IPv6 address for interface %s" % link.name)
    return replace(ext, addr6=addr6, public_ipv6=public6 if public6 is not None else addr6)


def _dual_by_iface(links, spec: str, public, public6) -> ExtIface:
    try:
        wanted = ip_address(spec)
    except ValueError:
        wanted = None
    if wanted is None:
        for l in links:
            if l.name == spec:
                return _finish_dual(l, None, None, public, public6)
        raise LookupError("error looking up interface %s: no such network interface" % spec)
    if wanted.version == 6:
        for l in links:
            if wanted in l.addrs6:
                return _finish_dual(l, None, wanted, public, public6)
        raise LookupError("error looking up interface %s: No interface with given IPv6 "
                          "found" % spec)
    for l in links:
        if wanted in l.addrs:
            break
    else:
        raise LookupError("error looking up interface %s: No interface with given IP found"
                          % spec)
    if public6 is None:
        # flanneld v0.20: an IPv4 --iface takes its v6 address only from --public-ipv6
        return _finish_dual(l, wanted, None, public, None, need6=False)
    for l6 in links:
        if public6 in l6.addrs6:
            break
    else:
        raise LookupError("error looking up v6 interface %s (--public-ipv6): No interface "
                          "with given IPv6 found" % public6)
    if l6.index != l.index:
        raise LookupError("v6 interface %s must be the same with v4 interface %s"
                          % (l6.name, l.name))
    return _finish_dual(l, wanted, public6, public, public6)


def _dual_by_regex(links, pattern: str, public, public6) -> ExtIface:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise LookupError("bad --iface-regex %r: %s" % (pattern, e))
    for l in links:
        a, a6 = usable_ip4(l.addrs), usable_ip6(l.addrs6)
        if a is not None and a6 is not None and rx.search(str(a)) and rx.search(str(a6)):
            return _finish_dual(l, a, a6, public, public6)
    for l in links:
        if rx.search(l.name):
            return _finish_dual(l, None, None, public, public6)
    raise LookupError("Could not match pattern %s to any of the available network "
                      "interfaces (%s)" % (pattern, ", ".join(l.name for l in links)))


def _dual_default(ipr, links, public, public6) -> ExtIface:
    # v0.20: the public IP (else the public IPv6) selects the interface, as --iface would
    for flag, given in (("--public-ip", public), ("--public-ipv6", public6)):
        if given is not None:
            try:
                return _dual_by_iface(links, str(given), public, public6)
            except LookupError as e:
                raise LookupError("%s %s selects the interface holding it (dual-stack, as "
                                  "flanneld v0.20): %s" % (flag, given, e))
    index = _default_route_index(ipr)
    index6 = _default_route_index(ipr, socket.AF_INET6)
    names = {l.index: l.name for l in links}
    if index6 != index:
        raise LookupError("v6 default route interface %s must be the same with v4 default "
                          "route interface %s" % (names.get(index6, index6),
                                                  names.get(index, index)))
    for l in links:
        if l.index == index:
            return _finish_dual(l, None, None, None, None)
    raise LookupError("default route interface index %d not found" % index)


def lookup_ext_iface(ifaces: Sequence[str] = (), regexes: Sequence[str] = (),
                     public_ip: Optional[str] = None, *, ipr=None,
                     public_ipv6: Optional[str] = None, ipv6: bool = False) -> ExtIface:
    """
    Choose the external interface as flanneld v0.10 does, or with C{ipv6} (the config
    enables IPv6) as flanneld v0.20 does for dual-stack, with the v6 address and
    C{public_ipv6} (see the module docstring).

    ``ipr`` is an object with pyroute2 IPRoute's API (``get_links``, ``get_addr``,
    ``get_routes``), e.g. a ``pyroute2.NetNS``; when None a ``pyroute2.IPRoute()``
    is opened and closed.

    Raises IfaceError with the candidates listed, or ValueError for a bad --public-ip
    or --public-ipv6.
    """
    if isinstance(ifaces, str):
        ifaces = [ifaces]
    if isinstance(regexes, str):
        regexes = [regexes]
    public = parse_public_ip(public_ip)
    public6 = parse_public_ipv6(public_ipv6) if ipv6 else None
    by_iface, by_regex = (_dual_by_iface, _dual_by_regex) if ipv6 else (_by_iface, _by_regex)
    extra = (public6,) if ipv6 else ()
    own = ipr is None
    if own:
        from pyroute2 import IPRoute
        ipr = IPRoute()
    try:
        links = _read_links(ipr, v6=True)
        errors = []
        if not ifaces and not regexes:
            try:
                if ipv6:
                    return _dual_default(ipr, links, public, public6)
                index = _default_route_index(ipr)
                for l in links:
                    if l.index == index:
                        return _finish(l, None, public)
                raise LookupError("default route interface index %d not found" % index)
            except LookupError as e:
                raise IfaceError("failed to get default interface: %s; interfaces: %s"
                                 % (e, _describe(links, ipv6)))
        for spec in ifaces:
            try:
                return by_iface(links, spec, public, *extra)
            except LookupError as e:
                errors.append(str(e))
        for pattern in regexes:
            try:
                return by_regex(links, pattern, public, *extra)
            except LookupError as e:
                errors.append(str(e))
        asked = []
        if ifaces:
            asked.append("--iface=%s" % ",".join(ifaces))
        if regexes:
            asked.append("--iface-regex=%s" % ",".join(regexes))
        raise IfaceError("%s (%s); %s; interfaces: %s"
                         % (FAILED, " ".join(asked), "; ".join(errors),
                            _describe(links, ipv6)))
    finally:
        if own:
            ipr.close()
