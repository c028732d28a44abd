# -*- test-case-name: tests.test_iface -*-
"""
Choosing the external interface and public IP as flanneld does (flannel-compat.md
section 10), with pyroute2.
"""
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Optional, Sequence


class IfaceError(Exception):
    """No interface matches; the message lists the candidates seen."""


@dataclass(frozen=True)
class ExtIface:
    name: str
    index: int
    addr: IPv4Address        # the interface address (IfaceAddr)
    public_ip: IPv4Address   # --public-ip or addr
    mtu: int


def lookup_ext_iface(ifaces: Sequence[str] = (), regexes: Sequence[str] = (),
                     public_ip: Optional[str] = None) -> ExtIface:
    """Raises IfaceError with the candidates listed, or ValueError for a bad --public-ip."""
    raise NotImplementedError
