# -*- test-case-name: tests.test_lease -*-
"""
Leases: the etcd key ``<prefix>/subnets/10.5.34.0-24`` <-> subnet, and the value JSON
exactly as flanneld writes it (flannel-compat.md section 2). Pure: no reactor.
"""
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Optional


class LeaseParseError(ValueError):
    """A key or value that flanneld would skip as a "bad subnet node"."""


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    backend_type: str = ""            # "" for udp/alloc (omitted from JSON)
    backend_data: Any = None          # decoded JSON value, None = omitted

    def to_json(self) -> str:
        """Compact JSON, fields in order PublicIP, BackendType, BackendData."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, text) -> "LeaseAttrs":
        """Raises LeaseParseError. Field names match case-insensitively (Go)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    attrs: LeaseAttrs
    ttl: Optional[int] = None         # seconds left as etcd reported; None = reservation (no TTL)
    modified_index: int = 0

    @property
    def is_reservation(self) -> bool:
        return self.ttl is None


def subnet_to_key(subnet: IPv4Network) -> str:
    """IPv4Network('10.5.34.0/24') -> '10.5.34.0-24'."""
    raise NotImplementedError


def key_to_subnet(key: str) -> IPv4Network:
    """Last path component of a key -> network. Raises LeaseParseError."""
    raise NotImplementedError
