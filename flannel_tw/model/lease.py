# -*- test-case-name: tests.unit.test_lease -*-
"""
Leases: the etcd key ``<prefix>/subnets/10.5.34.0-24`` <-> subnet, and the value JSON
exactly as flanneld writes it (flannel-compat.md section 2). Pure: no reactor.
"""
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Optional

from flannel_tw.model.config import Pairs, decode_pairs, go_json_fields, plain


class LeaseParseError(ValueError):
    """A key or value that flanneld would skip as a "bad subnet node"."""


# flanneld's regex, unanchored and with two unescaped dots; \d is ASCII-only in Go.
SUBNET_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)", re.ASCII)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", re.ASCII)
_FIELDS = ("PublicIP", "BackendType", "BackendData")
# Go's json.Marshal escapes these inside strings; they can only occur inside strings.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def _parse_ipv4(text: str) -> IPv4Address:
    """A dotted-quad IPv4 address (no other notations). Raises ValueError."""
    if not _IPV4_RE.fullmatch(text):
        raise ValueError(text)
    return IPv4Address(text)


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    backend_type: str = ""            # "" for udp/alloc (omitted from JSON)
    backend_data: Any = None          # decoded JSON value, None = omitted
    public_ipv6: Optional[IPv6Address] = None   # PublicIPv6 (null when None)
    backend_v6_data: Any = None       # BackendV6Data: decoded JSON value, None = omitted

    def to_json(self) -> str:
        """Compact JSON, fields in order PublicIP, BackendType, BackendData."""
        doc = {"PublicIP": str(self.public_ip)}
        if self.backend_type:
            doc["BackendType"] = self.backend_type
        if self.backend_data is not None:
            doc["BackendData"] = self.backend_data
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group()], text)

    @classmethod
    def from_json(cls, text) -> "LeaseAttrs":
        """Raises LeaseParseError. Field names match case-insensitively (Go)."""
        try:
            if isinstance(text, (bytes, bytearray)):
                text = bytes(text).decode("utf-8")
            doc = decode_pairs(text)
        except ValueError as e:
            raise LeaseParseError("lease value is not valid JSON: %s" % (e,))
        if not isinstance(doc, Pairs):
            raise LeaseParseError("lease value must be a JSON object, not %r" % (text,))
        fields = go_json_fields(doc, _FIELDS, raw=("BackendData",))
        public_ip = fields.get("PublicIP")
        if public_ip is None:
            raise LeaseParseError("lease value has no PublicIP: %r" % (text,))
        try:
            if not isinstance(public_ip, str):
                raise ValueError(public_ip)
            address = _parse_ipv4(public_ip)
        except ValueError:
            raise LeaseParseError("lease PublicIP is not an IPv4 address: %r" % (text,))
        backend_type = fields.get("BackendType", "")
        if not isinstance(backend_type, str):
            raise LeaseParseError("lease BackendType is not a string: %r" % (text,))
        return cls(public_ip=address, backend_type=backend_type,
                   backend_data=plain(fields.get("BackendData")))


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    attrs: LeaseAttrs
    ttl: Optional[int] = None         # seconds left as etcd reported; None = reservation (no TTL)
    modified_index: int = 0
    # the last component of the etcd key as stored (None: not read from etcd). flanneld's
    # parser is lenient (see key_to_subnet), so "x10.5.7.0-24" gives the subnet of
    # "10.5.7.0-24"; only a lease whose key is canonical (is_canonical) may be routed.
    key: Optional[str] = field(default=None, compare=False)
    # the IPv6 part of a dual-stack lease (key "10.5.34.0-24&fc00:0:0:a::-64"), None when
    # the lease is IPv4-only
    ipv6_subnet: Optional[IPv6Network] = None

    @property
    def is_canonical(self) -> bool:
        """True when the key is exactly flanneld's form for this subnet (or unknown)."""
        return self.key is None or self.key == subnet_to_key(self.subnet)

    @property
    def is_reservation(self) -> bool:
        return self.ttl is None


def subnet_to_key(subnet: IPv4Network) -> str:
    """IPv4Network('10.5.34.0/24') -> '10.5.34.0-24'."""
    return "%s-%d" % (subnet.network_address, subnet.prefixlen)


def key_name(key: str) -> str:
    """The last path component of an etcd key."""
    return key.rstrip("/").rsplit("/", 1)[-1]


def key_to_subnet(key: str) -> IPv4Network:
    """Last path component of a key -> network. Raises LeaseParseError.

    The component is searched (not anchored) with flanneld's regex, so
    ``x10.5.34.0-24y`` is accepted as flanneld accepts it. LEN must be at most 31.
    flanneld keeps the address as written; we mask host bits (``10.5.34.7-24`` ->
    10.5.34.0/24) because an IPv4Network cannot hold them, which is what
    flanneld's overlap test amounts to anyway. This lenient reading is right for
    "which subnets are taken" (allocation); routing needs the exact form too
    (L{Lease.is_canonical}, L{parse_canonical_key}).
    """
    name = key_name(key)
    m = SUBNET_KEY_RE.search(name)
    if m is None:
        raise LeaseParseError("not a subnet key: %r" % (key,))
    digits = m.group(2).lstrip("0") or "0"
    prefixlen = int(digits) if len(digits) <= 2 else 99
    if prefixlen > 31:
        raise LeaseParseError("subnet key prefix length above 31: %r" % (key,))
    try:
        address = _parse_ipv4(m.group(1))
    except ValueError:
        raise LeaseParseError("subnet key address is not IPv4: %r" % (key,))
    return IPv4Network("%s/%d" % (address, prefixlen), strict=False)


def parse_canonical_key(key: str) -> IPv4Network:
    """
    Last path component of a key in exactly the form flanneld writes it -> network:
    C{A.B.C.D-N}, anchored, a canonical dotted quad (no leading zeros), N in 0..31
    without leading zeros, and A.B.C.D the network address of the prefix.
    C{x10.5.7.0-24}, C{10.5.7.0-024}, C{10.5.7.1-24} and C{010.5.7.0-24} are refused.

    @raise LeaseParseError: anything else.
    """
    subnet = key_to_subnet(key)
    if key_name(key) != subnet_to_key(subnet):
        raise LeaseParseError("subnet key is not in flanneld's exact form A.B.C.D-N "
                              "(expected %r): %r" % (subnet_to_key(subnet), key))
    return subnet
