# -*- test-case-name: tests.unit.test_lease -*-
"""
Leases: the etcd key ``<prefix>/subnets/10.5.34.0-24`` <-> subnet, and the value JSON
exactly as flanneld writes it (flannel-compat.md section 2). Pure: no reactor.
"""
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Optional, Tuple

from flannel_tw.model.config import Pairs, decode_pairs, go_json_fields, plain


class LeaseParseError(ValueError):
    """A key or value that flanneld would skip as a "bad subnet node"."""


# flanneld v0.10's regex, unanchored and with two unescaped dots; \d is ASCII-only in Go.
SUBNET_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)", re.ASCII)
# flanneld v0.20's regex (dual-stack keys): end-anchored only (Go's $ is \Z), the IPv6
# part lowercase hex (uppercase fails).
DUAL_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?\Z", re.ASCII)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", re.ASCII)
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+", re.ASCII)
_FIELDS = ("PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data")
# Go's json.Marshal escapes these inside strings; they can only occur inside strings.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def _parse_ipv4(text: str) -> IPv4Address:
    """A dotted-quad IPv4 address (no other notations). Raises ValueError."""
    if not _IPV4_RE.fullmatch(text):
        raise ValueError(text)
    return IPv4Address(text)


def parse_ipv6(text: str) -> IPv6Address:
    """An IPv6 address in hex/colon notation (no zone, no IPv4 text). Raises ValueError."""
    if not isinstance(text, str) or not _IPV6_RE.fullmatch(text) or ":" not in text:
        raise ValueError(text)
    return IPv6Address(text)


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    backend_type: str = ""            # "" for udp/alloc (omitted from JSON)
    backend_data: Any = None          # decoded JSON value, None = omitted
    public_ipv6: Optional[IPv6Address] = None   # PublicIPv6 (null when None)
    backend_v6_data: Any = None       # BackendV6Data: decoded JSON value, None = omitted

    @property
    def dual_stack(self) -> bool:
        """True when the value carries a v6 field (written in flanneld v0.20's full form)."""
        return self.public_ipv6 is not None or self.backend_v6_data is not None

    def to_json(self) -> str:
        """
        Compact JSON as Go emits it. IPv4-only attrs: flanneld v0.10's form, fields in
        order PublicIP, BackendType, BackendData (the v3 registry inserts
        C{"PublicIPv6":null}). Attrs with a v6 field: flanneld v0.15+'s form, PublicIP,
        PublicIPv6 (always present, null when unset), BackendType, BackendData,
        BackendV6Data (the latter three omitted when empty).
        """
        doc = {"PublicIP": str(self.public_ip)}
        if self.dual_stack:
            doc["PublicIPv6"] = str(self.public_ipv6) if self.public_ipv6 is not None else None
        if self.backend_type:
            doc["BackendType"] = self.backend_type
        if self.backend_data is not None:
            doc["BackendData"] = self.backend_data
        if self.backend_v6_data is not None:
            doc["BackendV6Data"] = self.backend_v6_data
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
        fields = go_json_fields(doc, _FIELDS, raw=("BackendData", "BackendV6Data"))
        public_ip = fields.get("PublicIP")
        if public_ip is None:
            raise LeaseParseError("lease value has no PublicIP: %r" % (text,))
        try:
            if not isinstance(public_ip, str):
                raise ValueError(public_ip)
            address = _parse_ipv4(public_ip)
        except ValueError:
            raise LeaseParseError("lease PublicIP is not an IPv4 address: %r" % (text,))
        public_ipv6 = fields.get("PublicIPv6")     # absent or null: None, as in flanneld
        if public_ipv6 is not None:
            try:
                if isinstance(public_ipv6, str) and _IPV4_RE.fullmatch(public_ipv6):
                    # Go's ParseIP takes IPv4 text too (an IPv4-mapped address, which
                    # leasecheck refuses as a peer's PublicIPv6: the v4 part still routes)
                    public_ipv6 = IPv6Address("::ffff:%s" % (_parse_ipv4(public_ipv6),))
                else:
                    public_ipv6 = parse_ipv6(public_ipv6)
            except ValueError:
                raise LeaseParseError("lease PublicIPv6 is not an IPv6 address: %r" % (text,))
        backend_type = fields.get("BackendType", "")
        if not isinstance(backend_type, str):
            raise LeaseParseError("lease BackendType is not a string: %r" % (text,))
        return cls(public_ip=address, backend_type=backend_type,
                   backend_data=plain(fields.get("BackendData")), public_ipv6=public_ipv6,
                   backend_v6_data=plain(fields.get("BackendV6Data")))


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
        return self.key is None or self.key == subnet_to_key(self.subnet, self.ipv6_subnet)

    @property
    def is_reservation(self) -> bool:
        return self.ttl is None

    @property
    def key_name(self) -> str:
        """The key's last component in flanneld's form (v4, or v4&v6)."""
        return subnet_to_key(self.subnet, self.ipv6_subnet)


def subnet_to_key(subnet: IPv4Network, ipv6_subnet: Optional[IPv6Network] = None) -> str:
    """
    IPv4Network('10.5.34.0/24') -> '10.5.34.0-24'; with IPv6Network('fc00:0:0:a::/64')
    -> '10.5.34.0-24&fc00:0:0:a::-64' (the IPv6 text as Go's net.IP.String(): lowercase,
    RFC 5952, which is also Python's).
    """
    key = "%s-%d" % (subnet.network_address, subnet.prefixlen)
    if ipv6_subnet is not None:
        key += "&%s-%d" % (ipv6_subnet.network_address, ipv6_subnet.prefixlen)
    return key


def key_name(key: str) -> str:
    """The last path component of an etcd key."""
    return key.rstrip("/").rsplit("/", 1)[-1]


def _prefixlen(digits: str, limit: int) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 3 else limit + 1


def key_to_subnets(key: str) -> Tuple[IPv4Network, Optional[IPv6Network]]:
    """
    Last path component of a key -> C{(IPv4 subnet, IPv6 subnet or None)}. Raises
    LeaseParseError.

    flanneld v0.20's end-anchored regex is tried first (C{A.B.C.D-N&<ipv6>-M}); a key it
    matches with an IPv6 part (and a dotted-quad IPv4 part) must have a valid one (hex in lowercase, M at most 127),
    else the key is bad, as in flanneld. A key it does not match (an uppercase IPv6 part,
    trailing text) is read as v0.10 reads it: the first C{A.B.C.D-N} anywhere, IPv4
    only. Either way the result is the lenient reading (right for "which subnets are
    taken"); routing needs the exact form too (L{Lease.is_canonical}). Host bits are
    masked (an IPv4Network/IPv6Network cannot hold them).
    """
    name = key_name(key)
    m = DUAL_KEY_RE.search(name)
    if m is None or m.group(3) is None or not _IPV4_RE.fullmatch(m.group(1)):
        m = SUBNET_KEY_RE.search(name)     # v0.10's reading: the first A.B.C.D-N anywhere
    if m is None:
        raise LeaseParseError("not a subnet key: %r" % (key,))
    prefixlen = _prefixlen(m.group(2), 31)
    if prefixlen > 31:
        raise LeaseParseError("subnet key prefix length above 31: %r" % (key,))
    try:
        address = _parse_ipv4(m.group(1))
    except ValueError:
        raise LeaseParseError("subnet key address is not IPv4: %r" % (key,))
    subnet = IPv4Network("%s/%d" % (address, prefixlen), strict=False)
    if m.re is SUBNET_KEY_RE:
        return subnet, None
    prefixlen6 = _prefixlen(m.group(4), 127)
    if prefixlen6 > 127:
        raise LeaseParseError("subnet key IPv6 prefix length above 127: %r" % (key,))
    try:
        address6 = parse_ipv6(m.group(3))
    except ValueError:
        raise LeaseParseError("subnet key IPv6 part is not an IPv6 address: %r" % (key,))
    return subnet, IPv6Network("%s/%d" % (address6, prefixlen6), strict=False)


def key_to_subnet(key: str) -> IPv4Network:
    """
    Last path component of a key -> its IPv4 network (L{key_to_subnets}). Raises
    LeaseParseError.

    The component is searched (not anchored) with flanneld's regex, so
    ``x10.5.34.0-24y`` is accepted as flanneld v0.10 accepts it. LEN must be at most 31.
    flanneld keeps the address as written; we mask host bits (``10.5.34.7-24`` ->
    10.5.34.0/24) because an IPv4Network cannot hold them, which is what
    flanneld's overlap test amounts to anyway. This lenient reading is right for
    "which subnets are taken" (allocation); routing needs the exact form too
    (L{Lease.is_canonical}, L{parse_canonical_key}).
    """
    return key_to_subnets(key)[0]


def parse_canonical_keys(key: str) -> Tuple[IPv4Network, Optional[IPv6Network]]:
    """
    Last path component of a key in exactly the form flanneld writes it -> C{(IPv4
    network, IPv6 network or None)}: C{A.B.C.D-N} or C{A.B.C.D-N&<ipv6>-M}, anchored,
    canonical dotted quad, N in 0..31 and M in 0..127 without leading zeros, the IPv6
    text as Go prints it, each address the network address of its prefix.

    @raise LeaseParseError: anything else.
    """
    subnet, ipv6_subnet = key_to_subnets(key)
    if key_name(key) != subnet_to_key(subnet, ipv6_subnet):
        raise LeaseParseError("subnet key is not in flanneld's exact form A.B.C.D-N or "
                              "A.B.C.D-N&IPV6-M (expected %r): %r"
                              % (subnet_to_key(subnet, ipv6_subnet), key))
    return subnet, ipv6_subnet


def parse_canonical_key(key: str) -> IPv4Network:
    """
    The IPv4 network of a key in exactly flanneld's form (L{parse_canonical_keys}).
    C{x10.5.7.0-24}, C{10.5.7.0-024}, C{10.5.7.1-24} and C{010.5.7.0-24} are refused.

    @raise LeaseParseError: anything else.
    """
    return parse_canonical_keys(key)[0]
