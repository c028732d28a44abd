# -*- test-case-name: tests.unit.test_config -*-
"""
The network config stored at ``<prefix>/config``: parsing and validation with
flanneld's rules and defaults (flannel-compat.md section 1 and 13). Pure: no reactor.
"""
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Dict, Optional, Tuple


#: flanneld's default etcd prefix (--etcd-prefix): the config is at <prefix>/config, the
#: leases under <prefix>/subnets/
DEFAULT_PREFIX = "/coreos.com/network"


class ConfigError(ValueError):
    """
    The config is not usable. ``key`` names the offending field ("Network",
    "SubnetLen", "SubnetMin", "SubnetMax", "Backend") or is None for a JSON error.
    str(err) is a full sentence that names the key and what is wrong.
    """

    def __init__(self, message: str, key: Optional[str] = None):  # key: also the IPv6 fields
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str          # lower-cased, "udp" when Backend is absent
    # the raw Backend object; not in the repr: it may hold a secret (wireguard's PSK)
    backend: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # dual-stack (flanneld v0.15+): EnableIPv4 is always True here (IPv6-only is refused
    # at parse); the ipv6_* fields are set only when enable_ipv6
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: Optional[IPv6Network] = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: Optional[IPv6Address] = None
    ipv6_subnet_max: Optional[IPv6Address] = None

    @property
    def subnet_size(self) -> int:
        return 2 ** (32 - self.subnet_len)

    @property
    def ipv6_subnet_size(self) -> int:
        """Addresses per IPv6 subnet (0 when IPv6 is off)."""
        return 2 ** (128 - self.ipv6_subnet_len) if self.enable_ipv6 else 0


_FIELDS = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4",
           "EnableIPv6", "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax")
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", re.ASCII)
_CIDR_RE = re.compile(r"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})/(\d{1,2})", re.ASCII)
_UNSET = IPv4Address(0)
_ABSENT = object()


def go_json_fields(pairs, names, raw=()) -> Dict[str, Any]:
    """
    Map the (key, value) pairs of a decoded JSON object onto the field ``names``
    the way Go's encoding/json does: an exact match is preferred, otherwise the
    key matches a field without regard to case; unknown keys are ignored; when
    several keys land on one field the last one wins. A JSON null is a no-op,
    except for the ``raw`` fields (json.RawMessage in Go), which keep it.
    """
    folded = {name.casefold(): name for name in names}
    out: Dict[str, Any] = {}
    for key, value in pairs:
        name = key if key in names else folded.get(key.casefold())
        if name is not None and (value is not None or name in raw):
            out[name] = value
    return out


class Pairs(list):
    """A decoded JSON object as its list of (key, value) pairs, in document order."""


MAX_JSON_DEPTH = 64  # far beyond any config or lease; keeps plain() and friends off the recursion limit


def decode_pairs(text):
    """
    json.loads keeping every object as Pairs, so duplicate and case-variant keys survive.

    @raise ValueError: not JSON, or nested deeper than L{MAX_JSON_DEPTH}.
    """
    try:
        doc = json.loads(text, object_pairs_hook=Pairs, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _check_depth(doc)
    return doc


def _check_depth(doc):
    level = [doc]
    for _ in range(MAX_JSON_DEPTH):
        level = [child for v in level if isinstance(v, list)  # Pairs is a list too
                 for child in ((c for _, c in v) if isinstance(v, Pairs) else v)]
        if not level:
            return
    raise ValueError("nested too deeply (more than %d levels)" % (MAX_JSON_DEPTH,))


def _reject_constant(name):
    raise ValueError("%s is not JSON" % (name,))


def plain(value):
    """Pairs -> dict, recursively (the last of duplicate keys wins, as in Go)."""
    if isinstance(value, Pairs):
        return {k: plain(v) for k, v in value}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _decode_object(text) -> Pairs:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError("config is not valid UTF-8: %s" % (e,))
    try:
        doc = decode_pairs(text)
    except ValueError as e:
        raise ConfigError("config is not valid JSON: %s" % (e,))
    if not isinstance(doc, Pairs):
        raise ConfigError("config must be a JSON object, not %s" % (json.dumps(plain(doc)),))
    return doc


def _parse_network(value) -> IPv4Network:
    if not isinstance(value, str):
        raise ConfigError("Network must be a string like \"10.1.0.0/16\", not %s"
                          % (json.dumps(plain(value)),), key="Network")
    if value == "":
        raise ConfigError("Network is empty: define an IPv4 CIDR such as \"10.1.0.0/16\"",
                          key="Network")
    m = _CIDR_RE.fullmatch(value)
    try:
        if m is None or int(m.group(2)) > 32:
            raise ValueError(value)
        network = IPv4Network("%s/%s" % (m.group(1), int(m.group(2))), strict=False)
    except ValueError:
        raise ConfigError("Network %r is not an IPv4 CIDR such as \"10.1.0.0/16\"" % (value,),
                          key="Network")
    if network == IPv4Network("0.0.0.0/0"):
        raise ConfigError("Network 0.0.0.0/0 is empty: define an IPv4 CIDR such as "
                          "\"10.1.0.0/16\"", key="Network")
    return network


def _parse_subnet_len(value, key="SubnetLen") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("%s must be a non-negative integer, not %s"
                          % (key, json.dumps(plain(value))), key=key)
    return value


def _parse_address(key: str, value) -> IPv4Address:
    if isinstance(value, str) and _IPV4_RE.fullmatch(value):
        try:
            return IPv4Address(value)
        except ValueError:
            pass
    raise ConfigError("%s must be an IPv4 address string, not %s"
                      % (key, json.dumps(plain(value))), key=key)


def _parse_backend(value) -> Tuple[str, dict]:
    if value is _ABSENT:
        return "udp", {}
    if value is None:               # Go: RawMessage "null" decodes to a Type of ""
        raise ConfigError("Backend is null: Backend has no Type", key="Backend")
    if not isinstance(value, Pairs):
        raise ConfigError("Backend must be a JSON object, not %s" % (json.dumps(plain(value)),),
                          key="Backend")
    btype = go_json_fields(value, ("Type",)).get("Type", "")
    if not isinstance(btype, str):
        raise ConfigError("Backend Type must be a string, not %s" % (json.dumps(plain(btype)),),
                          key="Backend")
    if btype == "":
        raise ConfigError("Backend has no Type", key="Backend")
    return btype.lower(), plain(value)


def parse_config(text) -> NetworkConfig:
    """Parse and validate config JSON (str or bytes). Raises ConfigError."""
    fields = go_json_fields(_decode_object(text), _FIELDS, raw=("Backend",))
    ipv6 = _parse_ipv6(fields)     # first: an IPv6-only config is refused before Network
    if "Network" not in fields:
        raise ConfigError("Network is missing: define an IPv4 CIDR such as \"10.1.0.0/16\"",
                          key="Network")
    network = _parse_network(fields["Network"])
    subnet_len = _parse_subnet_len(fields.get("SubnetLen", 0))
    smin = _parse_address("SubnetMin", fields["SubnetMin"]) if "SubnetMin" in fields else _UNSET
    smax = _parse_address("SubnetMax", fields["SubnetMax"]) if "SubnetMax" in fields else _UNSET
    prefix = network.prefixlen

    # Step 1 and 2: SubnetLen.
    if subnet_len > 0:
        if subnet_len > 30:
            raise ConfigError("SubnetLen %d: SubnetLen must be less than /31" % subnet_len,
                              key="SubnetLen")
        if subnet_len < prefix + 2:
            raise ConfigError("SubnetLen %d with Network %s: Network must be able to "
                              "accommodate at least four subnets" % (subnet_len, network),
                              key="SubnetLen")
    elif prefix > 28:
        raise ConfigError("Network %s: Network is too small. Minimum useful network prefix "
                          "is /28" % (network,), key="Network")
    elif prefix <= 22:
        subnet_len = 24
    else:
        subnet_len = prefix + 2

    # Step 3 and 4: the range, with defaults that skip the first subnet.
    size = 2 ** (32 - subnet_len)
    if smin == _UNSET:
        smin = network.network_address + size
    elif smin not in network:
        raise ConfigError("SubnetMin %s: SubnetMin is not in the range of the Network %s"
                          % (smin, network), key="SubnetMin")
    if smax == _UNSET:
        smax = IPv4Address(int(network.broadcast_address) + 1 - size)
    elif smax not in network:
        raise ConfigError("SubnetMax %s: SubnetMax is not in the range of the Network %s"
                          % (smax, network), key="SubnetMax")

    # Step 5: boundaries. Step 6 (min <= max) is not checked, as in flanneld.
    if int(smin) % size:
        raise ConfigError("SubnetMin is not on a SubnetLen boundary: %s (SubnetLen %d)"
                          % (smin, subnet_len), key="SubnetMin")
    if int(smax) % size:
        raise ConfigError("SubnetMax is not on a SubnetLen boundary: %s (SubnetLen %d)"
                          % (smax, subnet_len), key="SubnetMax")

    backend_type, backend = _parse_backend(fields.get("Backend", _ABSENT))
    return NetworkConfig(network=network, subnet_len=subnet_len, subnet_min=smin,
                         subnet_max=smax, backend_type=backend_type, backend=backend,
                         **ipv6)


# -- dual-stack (flanneld v0.15+; flanneld-v0.20-v3.md section B) ---------------------

IPV6_ONLY_REFUSED = (
    "EnableIPv4 is false: IPv6-only networks are not supported with etcd. flanneld's etcd "
    "subnet manager has no IPv6-only lease key (every key is \"A.B.C.D-N\" or "
    "\"A.B.C.D-N&<ipv6>-<len>\", always with an IPv4 subnet) and would publish PublicIP "
    "0.0.0.0 for every host, so hosts would reuse each other's leases. Use a dual-stack "
    "network instead: \"EnableIPv4\": true (the default), \"Network\", \"EnableIPv6\": "
    "true and \"IPv6Network\"")
_IPV6_CIDR_RE = re.compile(r"([0-9A-Fa-f:.]+)/(\d{1,3})", re.ASCII)
_IPV6_ADDR_RE = re.compile(r"[0-9A-Fa-f:.]+", re.ASCII)
_MAPPED = IPv6Network("::ffff:0:0/96")


def _parse_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError("%s must be true or false, not %s" % (key, json.dumps(plain(value))),
                          key=key)
    return value


def _parse_ipv6_network(value) -> IPv6Network:
    if not isinstance(value, str):
        raise ConfigError("IPv6Network must be a string like \"fc00::/48\", not %s"
                          % (json.dumps(plain(value)),), key="IPv6Network")
    if value == "":
        raise ConfigError("IPv6Network is empty: please define a correct IPv6Network "
                          "parameter in the flannel config, an IPv6 CIDR such as "
                          "\"fc00::/48\"", key="IPv6Network")
    m = _IPV6_CIDR_RE.fullmatch(value)
    try:
        if m is None or ":" not in m.group(1) or int(m.group(2)) > 128:
            raise ValueError(value)
        network = IPv6Network("%s/%d" % (m.group(1), int(m.group(2))), strict=False)
    except ValueError:
        raise ConfigError("IPv6Network %r is not an IPv6 CIDR such as \"fc00::/48\"" % (value,),
                          key="IPv6Network")
    if network.prefixlen == 0:
        raise ConfigError("IPv6Network %s is empty: please define a correct IPv6Network "
                          "parameter in the flannel config, an IPv6 CIDR such as "
                          "\"fc00::/48\"" % (network,), key="IPv6Network")
    if network.overlaps(_MAPPED):
        raise ConfigError("IPv6Network %s overlaps the IPv4-mapped range ::ffff:0:0/96, "
                          "whose addresses flanneld writes as IPv4 in lease keys"
                          % (network,), key="IPv6Network")
    return network


def _parse_ipv6_address(key: str, value) -> IPv6Address:
    if isinstance(value, str) and _IPV6_ADDR_RE.fullmatch(value) and ":" in value:
        try:
            return IPv6Address(value)
        except ValueError:
            pass
    raise ConfigError("%s must be an IPv6 address string, not %s"
                      % (key, json.dumps(plain(value))), key=key)


def _parse_ipv6(fields) -> Dict[str, Any]:
    """
    The dual-stack fields of NetworkConfig (keyword arguments), with flanneld v0.20's
    defaults and errors. The IPv6 keys are type-checked whenever present (Go's decoder
    would refuse a bad value too) and validated only with EnableIPv6, as flanneld does.
    """
    enable_ipv4 = _parse_bool("EnableIPv4", fields.get("EnableIPv4", True))
    enable_ipv6 = _parse_bool("EnableIPv6", fields.get("EnableIPv6", False))
    if not enable_ipv4:
        raise ConfigError(IPV6_ONLY_REFUSED, key="EnableIPv4")
    network = (_parse_ipv6_network(fields["IPv6Network"]) if "IPv6Network" in fields
               else None)
    subnet_len = _parse_subnet_len(fields.get("IPv6SubnetLen", 0), "IPv6SubnetLen")
    smin = (_parse_ipv6_address("IPv6SubnetMin", fields["IPv6SubnetMin"])
            if "IPv6SubnetMin" in fields else None)
    smax = (_parse_ipv6_address("IPv6SubnetMax", fields["IPv6SubnetMax"])
            if "IPv6SubnetMax" in fields else None)
    if not enable_ipv6:
        return {}
    if network is None:
        raise ConfigError("IPv6Network is missing: please define a correct IPv6Network "
                          "parameter in the flannel config (EnableIPv6 is true), an IPv6 "
                          "CIDR such as \"fc00::/48\"", key="IPv6Network")
    prefix = network.prefixlen
    if subnet_len > 0:
        if subnet_len > 126:
            raise ConfigError("IPv6SubnetLen %d: SubnetLen must be less than /127"
                              % (subnet_len,), key="IPv6SubnetLen")
        if subnet_len < prefix + 2:
            raise ConfigError("IPv6SubnetLen %d with IPv6Network %s: network must be able to "
                              "accommodate at least four subnets" % (subnet_len, network),
                              key="IPv6SubnetLen")
    elif prefix > 124:
        raise ConfigError("IPv6Network %s: IPv6Network is too small. Minimum useful network "
                          "prefix is /124" % (network,), key="IPv6Network")
    elif prefix <= 62:
        subnet_len = 64
    else:
        subnet_len = prefix + 2
    size = 2 ** (128 - subnet_len)
    if smin is None:
        smin = network.network_address + size
    elif smin not in network:
        raise ConfigError("IPv6SubnetMin %s: IPv6SubnetMin is not in the range of the "
                          "IPv6Network %s" % (smin, network), key="IPv6SubnetMin")
    if smax is None:
        smax = IPv6Address(int(network.broadcast_address) + 1 - size)
    elif smax not in network:
        raise ConfigError("IPv6SubnetMax %s: IPv6SubnetMax is not in the range of the "
                          "IPv6Network %s" % (smax, network), key="IPv6SubnetMax")
    if int(smin) % size:
        raise ConfigError("IPv6SubnetMin is not on a SubnetLen boundary: %s (IPv6SubnetLen %d)"
                          % (smin, subnet_len), key="IPv6SubnetMin")
    if int(smax) % size:
        raise ConfigError("IPv6SubnetMax is not on a SubnetLen boundary: %s (IPv6SubnetLen %d)"
                          % (smax, subnet_len), key="IPv6SubnetMax")
    return dict(enable_ipv6=True, ipv6_network=network, ipv6_subnet_len=subnet_len,
                ipv6_subnet_min=smin, ipv6_subnet_max=smax)
