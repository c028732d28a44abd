# -*- test-case-name: tests.unit.test_leasecheck -*-
"""
Which leases read from etcd may be routed. Pure: no reactor.

Anyone who can write under C{<prefix>/subnets/} can write anything there, so a lease
is believed only when all of these hold (L{lease_problem}):

- C{bad-key}: its key is exactly flanneld's form C{A.B.C.D-N} (anchored, canonical
  dotted quad, the network address of the prefix): flanneld's unanchored regex would let
  C{x10.5.7.0-24} alias the peer at C{10.5.7.0-24} and replace or remove its route;
- C{outside-network}: its subnet lies inside the config's Network (a C{0.0.0.0-1} or
  C{128.0.0.0-1} lease would pull all host traffic into the overlay on host-gw/vxlan);
- C{subnet-length}: its prefix length is the config's SubnetLen;
- C{overlaps-own}: it does not overlap our own lease (our own subnet itself goes to the
  lease keeper, never to the data plane);
- C{public-ip}: its PublicIP is a usable unicast address for a peer: not in
  0.0.0.0/8 (unspecified, "this network"), 127.0.0.0/8 (loopback), 169.254.0.0/16
  (link-local: never forwarded by routers, so it cannot be another host's address
  across a network, and 169.254.169.254 is the cloud metadata service), 224.0.0.0/4
  (multicast), 240.0.0.0/4 (reserved, with the broadcast 255.255.255.255), nor inside
  the overlay Network itself (its packets would loop back into the overlay);
- C{own-public-ip}: its PublicIP is not our own (a route to ourselves is a loop; each
  host has one lease, flannel-compat.md section 12).

With IPv6 on, the v6 part of a dual-stack lease is checked as hostile as the v4 part
(L{ipv6_part_problem}); the lease watcher then routes the v4 part of a lease whose v6
part is bad and skips the v6 part with one warning (each side routing what it can;
flanneld's vxlan skips the whole event), while L{lease_problem} given C{ipv6_network}
refuses the whole lease (for a copy such as C{etcd migrate}). The v6 reasons:

- C{outside-network}: its v6 subnet lies inside the config's IPv6Network;
- C{subnet-length}: its v6 prefix length is the config's IPv6SubnetLen;
- C{overlaps-own}: its v6 subnet does not overlap our own v6 subnet;
- C{public-ipv6}: its PublicIPv6, when set, is a usable unicast address: not ::
  (unspecified), ::1 (loopback), fe80::/10 (link-local), ff00::/8 (multicast),
  ::ffff:0:0/96 (IPv4-mapped), nor inside the overlay IPv6Network;
- C{own-public-ip}: its PublicIPv6 is not our own;
- C{bad-v6-data}: its BackendV6Data, when present, is a JSON object (the backend checks
  its fields).

A lease without a v6 part is routed over IPv4 only. With IPv6 off, the v6 part of a
lease is not looked at (the watcher hands the backend the v4 part alone).

C{bad-value} (a value flanneld cannot parse) is counted under the same labels by the
subnet manager. Anything else is skipped with one warning per lease (L{SkipMemory}).
"""
import hashlib
from collections import OrderedDict
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Optional, Tuple

REASONS = ("bad-key", "bad-value", "outside-network", "subnet-length", "overlaps-own",
           "public-ip", "own-public-ip", "public-ipv6", "bad-v6-data")

_UNUSABLE = (
    (IPv4Network("0.0.0.0/8"), "unspecified ('this network', 0.0.0.0/8)"),
    (IPv4Network("127.0.0.0/8"), "loopback"),
    (IPv4Network("169.254.0.0/16"), "link-local"),
    (IPv4Network("224.0.0.0/4"), "multicast"),
    (IPv4Network("255.255.255.255/32"), "the broadcast address"),
    (IPv4Network("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
)


def public_ip_problem(ip: IPv4Address, network: Optional[IPv4Network] = None
                      ) -> Optional[str]:
    """Why C{ip} cannot be a peer's PublicIP, or None when it can."""
    for block, why in _UNUSABLE:
        if ip in block:
            return why
    if network is not None and ip in network:
        return "inside the overlay network %s" % (network,)
    return None


_UNUSABLE_V6 = (
    (IPv6Network("::/128"), "unspecified (::)"),
    (IPv6Network("::1/128"), "loopback"),
    (IPv6Network("fe80::/10"), "link-local"),
    (IPv6Network("ff00::/8"), "multicast"),
    (IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
)


def public_ipv6_problem(ip: IPv6Address, network: Optional[IPv6Network] = None
                        ) -> Optional[str]:
    """Why C{ip} cannot be a peer's PublicIPv6, or None when it can."""
    for block, why in _UNUSABLE_V6:
        if ip in block:
            return why
    if network is not None and ip in network:
        return "inside the overlay IPv6 network %s" % (network,)
    return None


def lease_problem(lease, network: Optional[IPv4Network] = None,
                  subnet_len: Optional[int] = None,
                  own_subnet: Optional[IPv4Network] = None,
                  own_public_ip: Optional[IPv4Address] = None,
                  ipv6_network: Optional[IPv6Network] = None,
                  ipv6_subnet_len: Optional[int] = None,
                  own_ipv6_subnet: Optional[IPv6Network] = None,
                  own_public_ipv6: Optional[IPv6Address] = None
                  ) -> Optional[Tuple[str, str]]:
    """
    C{(reason, message)} when another host's L{flannel_tw.model.lease.Lease} must not be
    routed, None when it may. A check whose context is None is not made; the v6 part is
    checked only with C{ipv6_network} (IPv6 on). C{reason} is one of L{REASONS}.
    """
    problem = _v4_problem(lease, network, subnet_len, own_subnet, own_public_ip)
    if problem is None and ipv6_network is not None:
        problem = ipv6_part_problem(lease, ipv6_network, ipv6_subnet_len, own_subnet,
                                    own_ipv6_subnet, own_public_ipv6)
    return problem


def ipv6_part_problem(lease, network: IPv6Network, subnet_len: Optional[int] = None,
                      own_v4_subnet: Optional[IPv4Network] = None,
                      own_subnet: Optional[IPv6Network] = None,
                      own_public_ipv6: Optional[IPv6Address] = None
                      ) -> Optional[Tuple[str, str]]:
    """
    C{(reason, message)} when the v6 part of a lease (whose v4 part passed
    L{lease_problem}) must not be routed; None when it may, or when the lease has none.
    A check whose context is None is not made; C{own_v4_subnet} tells our own lease
    apart (its v6 subnet is ours, not an overlap).
    """
    if own_v4_subnet is not None and lease.subnet == own_v4_subnet:
        own_subnet = None
    subnet = lease.ipv6_subnet
    if subnet is None:
        return None             # an IPv4-only lease: routed over IPv4 only
    if not subnet.subnet_of(network):
        return "outside-network", "IPv6 subnet %s is not inside the IPv6 network %s" % (
            subnet, network)
    if subnet_len is not None and subnet.prefixlen != subnet_len:
        return "subnet-length", "IPv6 subnet %s is not a /%d (IPv6SubnetLen)" % (
            subnet, subnet_len)
    if own_subnet is not None and subnet.overlaps(own_subnet):   # another host's lease
        return "overlaps-own", "IPv6 subnet %s overlaps our own IPv6 subnet %s" % (
            subnet, own_subnet)
    ip = lease.attrs.public_ipv6
    if ip is not None:
        why = public_ipv6_problem(ip, network)
        if why is not None:
            return "public-ipv6", "PublicIPv6 %s is %s" % (ip, why)
        if own_public_ipv6 is not None and ip == own_public_ipv6:
            return "own-public-ip", "PublicIPv6 %s is our own" % (ip,)
    data = lease.attrs.backend_v6_data
    if data is not None and not isinstance(data, dict):
        return "bad-v6-data", "BackendV6Data is not a JSON object: %.80r" % (data,)
    return None


def _v4_problem(lease, network, subnet_len, own_subnet, own_public_ip):
    subnet = lease.subnet
    if not lease.is_canonical:
        return "bad-key", "the key %r is not in flanneld's exact form %r" % (
            lease.key, "%s-%d" % (subnet.network_address, subnet.prefixlen))
    if network is not None and not subnet.subnet_of(network):
        return "outside-network", "%s is not inside the network %s" % (subnet, network)
    if subnet_len is not None and subnet.prefixlen != subnet_len:
        return "subnet-length", "%s is not a /%d (SubnetLen)" % (subnet, subnet_len)
    if own_subnet is not None and subnet != own_subnet and subnet.overlaps(own_subnet):
        return "overlaps-own", "%s overlaps our own lease %s" % (subnet, own_subnet)
    if lease.attrs is None:
        return "bad-value", "no lease value"
    ip = lease.attrs.public_ip
    why = public_ip_problem(ip, network)
    if why is not None:
        return "public-ip", "PublicIP %s is %s" % (ip, why)
    if own_public_ip is not None and ip == own_public_ip:
        return "own-public-ip", "PublicIP %s is our own" % (ip,)
    return None


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class SkipMemory:
    """
    Which leases were skipped and why, so each is warned about (and counted) once,
    however often it is listed or rewritten with the same fault. Bounded: at most
    C{limit} keys are remembered (least recently skipped forgotten first), each by a
    16-byte digest, so remote input cannot grow it; a key is forgotten when it is
    deleted or gets a good value (L{forget}), or when a full list no longer has it
    (L{retain}).

    C{counts}: reason -> leases skipped for that reason (a fixed label set, L{REASONS}).
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._seen = OrderedDict()      # digest -> reason
        self.counts = dict.fromkeys(REASONS, 0)

    def __len__(self):
        return len(self._seen)

    def note(self, key: str, reason: str) -> bool:
        """Record that C{key} is skipped for C{reason}; True when this is news (warn)."""
        if reason not in self.counts:
            raise ValueError("unknown skip reason %r" % (reason,))
        digest = _digest(key)
        if self._seen.get(digest) == reason:
            self._seen.move_to_end(digest)
            return False
        self._seen[digest] = reason
        self._seen.move_to_end(digest)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        self.counts[reason] += 1
        return True

    def forget(self, key: str) -> None:
        self._seen.pop(_digest(key), None)

    def retain(self, keys) -> None:
        """Forget every key not among C{keys} (a complete list of what exists now)."""
        keep = {_digest(k) for k in keys}
        for digest in [d for d in self._seen if d not in keep]:
            del self._seen[digest]
