# -*- test-case-name: tests.unit.test_allocate -*-
"""
Choosing a free subnet as flanneld does (flannel-compat.md section 2, AcquireLease
step 4): scan SubnetMin..SubnetMax, keep the first 100 that overlap no taken
subnet, pick one at random. Pure: the random source is injected.
"""
from bisect import bisect_right
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, List, Tuple

from flannel_tw.model.config import NetworkConfig

CANDIDATES = 100


class OutOfSubnets(Exception):
    """No free subnet; carries ``pool_size`` (subnets in [SubnetMin, SubnetMax]) and ``taken``."""

    def __init__(self, pool_size: int, taken: int):
        self.pool_size = pool_size
        self.taken = taken
        super().__init__("out of subnets: all %d subnets of the pool are taken (%d leases)"
                         % (pool_size, taken))


def pool_size(config: NetworkConfig) -> int:
    """Number of subnets from SubnetMin to SubnetMax inclusive; 0 when min > max."""
    lo, hi = int(config.subnet_min), int(config.subnet_max)
    return 0 if lo > hi else (hi - lo) // config.subnet_size + 1


def fits(config: NetworkConfig, subnet: IPv4Network) -> bool:
    """True when subnet's address lies in [SubnetMin, SubnetMax] and its prefix is SubnetLen."""
    return (config.subnet_min <= subnet.network_address <= config.subnet_max
            and subnet.prefixlen == config.subnet_len)


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


def free_subnets(config: NetworkConfig, taken: Iterable[IPv4Network],
                 limit: int = CANDIDATES) -> List[IPv4Network]:
    """The first ``limit`` subnets from SubnetMin upwards overlapping none of ``taken``.
    Must stay fast with 10,000 taken subnets and large pools (sort + bisect, no O(n*m))."""
    starts, ends = _merged_intervals(taken)
    size = config.subnet_size
    candidate, last = int(config.subnet_min), int(config.subnet_max)
    free: List[IPv4Network] = []
    while candidate <= last and len(free) < limit:
        top = candidate + size - 1
        i = bisect_right(starts, top) - 1      # the last interval starting at or below top
        if i >= 0 and ends[i] >= candidate:
            # Overlap: jump to the first subnet boundary past this taken interval.
            candidate += (ends[i] - candidate) // size * size + size
            continue
        free.append(IPv4Network((IPv4Address(candidate), config.subnet_len)))
        candidate += size
    return free


def choose_subnet(config: NetworkConfig, taken: Iterable[IPv4Network], rand) -> IPv4Network:
    """``rand`` is a random.Random. Raises OutOfSubnets."""
    taken = list(taken)
    free = free_subnets(config, taken)
    if not free:
        raise OutOfSubnets(pool_size(config), len(taken))
    return rand.choice(free)
