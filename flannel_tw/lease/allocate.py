# -*- test-case-name: tests.unit.test_allocate -*-
"""
Choosing a free subnet as flanneld does (flannel-compat.md section 2, AcquireLease
step 4): scan SubnetMin..SubnetMax, keep the first 100 that overlap no taken
subnet, pick one at random. Pure: the random source is injected.

With IPv6 on (flanneld-v0.20-v3.md A4 step 4), a v6 subnet is chosen the same way and
independently: scan IPv6SubnetMin..IPv6SubnetMax for the first 100 free among the v6
parts of the leases, pick one at random. A lease without a v6 part takes no v6 subnet
(flanneld v0.20 panics on it; here it is simply not counted).
"""
from bisect import bisect_right
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Iterable, List, Optional, Tuple

from flannel_tw.model.config import NetworkConfig

CANDIDATES = 100


class OutOfSubnets(Exception):
    """No free subnet; carries ``pool_size`` (subnets in [SubnetMin, SubnetMax]) and ``taken``."""

    def __init__(self, pool_size: int, taken: int, family: str = ""):
        self.pool_size = pool_size
        self.taken = taken
        super().__init__("out of subnets: all %d %ssubnets of the pool are taken (%d leases)"
                         % (pool_size, family, taken))


def pool_size(config: NetworkConfig) -> int:
    """Number of subnets from SubnetMin to SubnetMax inclusive; 0 when min > max."""
    lo, hi = int(config.subnet_min), int(config.subnet_max)
    return 0 if lo > hi else (hi - lo) // config.subnet_size + 1


def ipv6_pool_size(config: NetworkConfig) -> int:
    """Number of v6 subnets from IPv6SubnetMin to IPv6SubnetMax; 0 without IPv6."""
    if not config.enable_ipv6:
        return 0
    lo, hi = int(config.ipv6_subnet_min), int(config.ipv6_subnet_max)
    return 0 if lo > hi else (hi - lo) // config.ipv6_subnet_size + 1


def fits(config: NetworkConfig, subnet: IPv4Network) -> bool:
    """True when subnet's address lies in [SubnetMin, SubnetMax] and its prefix is SubnetLen."""
    return (config.subnet_min <= subnet.network_address <= config.subnet_max
            and subnet.prefixlen == config.subnet_len)


def fits_ipv6(config: NetworkConfig, ipv6_subnet: Optional[IPv6Network]) -> bool:
    """
    flanneld v0.20's isIPv6SubnetConfigCompat: with EnableIPv6, the v6 part is present,
    its address in [IPv6SubnetMin, IPv6SubnetMax] and its prefix IPv6SubnetLen; without
    EnableIPv6 it must be absent.
    """
    if not config.enable_ipv6:
        return ipv6_subnet is None
    return (ipv6_subnet is not None
            and config.ipv6_subnet_min <= ipv6_subnet.network_address <= config.ipv6_subnet_max
            and ipv6_subnet.prefixlen == config.ipv6_subnet_len)


def holds_allocation(config: NetworkConfig, subnet: IPv4Network) -> bool:
    """
    Whether a leased subnet keeps others from being allocated over it. flanneld counts
    every key; flannel-tw ignores a subnet that no valid config of this Network hands
    out: one not inside Network, or with a prefix shorter than Network's + 2 (the
    shortest SubnetLen the config allows). Otherwise one hostile key such as
    C{0.0.0.0-1} or C{10.5.0.0-16} would leave every new host "out of subnets".
    """
    network = config.network
    return subnet.subnet_of(network) and subnet.prefixlen >= network.prefixlen + 2


def holds_ipv6_allocation(config: NetworkConfig, ipv6_subnet: Optional[IPv6Network]) -> bool:
    """L{holds_allocation} for a lease's v6 part (False when absent or IPv6 is off)."""
    network = config.ipv6_network
    return (config.enable_ipv6 and ipv6_subnet is not None and ipv6_subnet.subnet_of(network)
            and ipv6_subnet.prefixlen >= network.prefixlen + 2)


def _merged_intervals(taken: Iterable[IPv4Network]) -> Tuple[List[int], List[int]]:
    """Taken subnets as sorted, disjoint [start, end] address intervals (two lists)."""
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in taken)
    starts: List[int] = []
    ends: List[int] = []
    for start, end in spans:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _free(lo: int, hi: int, size: int, taken, limit: int) -> List[int]:
    """The first C{limit} addresses lo, lo+size, ... <= hi whose block of C{size}
    overlaps none of C{taken}. Must stay fast with 10,000 taken subnets and large pools
    (sort + bisect, no O(n*m); an IPv6 pool of 2**64 subnets is never walked)."""
    starts, ends = _merged_intervals(taken)
    candidate = lo
    free: List[int] = []
    while candidate <= hi and len(free) < limit:
        top = candidate + size - 1
        i = bisect_right(starts, top) - 1      # the last interval starting at or below top
        if i >= 0 and ends[i] >= candidate:
            # Overlap: jump to the first subnet boundary past this taken interval.
            candidate += (ends[i] - candidate) // size * size + size
            continue
        free.append(candidate)
        candidate += size
    return free


def free_subnets(config: NetworkConfig, taken: Iterable[IPv4Network],
                 limit: int = CANDIDATES) -> List[IPv4Network]:
    """The first ``limit`` subnets from SubnetMin upwards overlapping none of ``taken``."""
    return [IPv4Network((IPv4Address(a), config.subnet_len))
            for a in _free(int(config.subnet_min), int(config.subnet_max),
                           config.subnet_size, taken, limit)]


def free_ipv6_subnets(config: NetworkConfig, taken: Iterable[IPv6Network],
                      limit: int = CANDIDATES) -> List[IPv6Network]:
    """The first ``limit`` v6 subnets from IPv6SubnetMin upwards overlapping none of
    ``taken``; [] without IPv6."""
    if not config.enable_ipv6:
        return []
    return [IPv6Network((IPv6Address(a), config.ipv6_subnet_len))
            for a in _free(int(config.ipv6_subnet_min), int(config.ipv6_subnet_max),
                           config.ipv6_subnet_size, taken, limit)]


def choose_subnet(config: NetworkConfig, taken: Iterable[IPv4Network], rand) -> IPv4Network:
    """``rand`` is a random.Random. Raises OutOfSubnets."""
    taken = list(taken)
    free = free_subnets(config, taken)
    if not free:
        raise OutOfSubnets(pool_size(config), len(taken))
    return rand.choice(free)


def choose_ipv6_subnet(config: NetworkConfig, taken: Iterable[IPv6Network],
                       rand) -> IPv6Network:
    """A v6 subnet chosen as L{choose_subnet}, independently of the v4 choice. Raises
    OutOfSubnets (naming the IPv6 pool) when none is free."""
    taken = list(taken)
    free = free_ipv6_subnets(config, taken)
    if not free:
        raise OutOfSubnets(ipv6_pool_size(config), len(taken), "IPv6 ")
    return rand.choice(free)
