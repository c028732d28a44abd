# -*- test-case-name: tests.test_allocate -*-
"""
Choosing a free subnet as flanneld does (flannel-compat.md section 2, AcquireLease
step 4): scan SubnetMin..SubnetMax, keep the first 100 that overlap no taken
subnet, pick one at random. Pure: the random source is injected.
"""
from ipaddress import IPv4Network
from typing import Iterable, List

from flannel_tw.config import NetworkConfig

CANDIDATES = 100


class OutOfSubnets(Exception):
    """No free subnet; carries ``pool_size`` (subnets in [SubnetMin, SubnetMax]) and ``taken``."""

    def __init__(self, pool_size: int, taken: int):
        self.pool_size = pool_size
        self.taken = taken
        super().__init__("out of subnets: all %d subnets of the pool are taken (%d leases)"
                         % (pool_size, taken))


def fits(config: NetworkConfig, subnet: IPv4Network) -> bool:
    """True when subnet's address lies in [SubnetMin, SubnetMax] and its prefix is SubnetLen."""
    raise NotImplementedError


def free_subnets(config: NetworkConfig, taken: Iterable[IPv4Network],
                 limit: int = CANDIDATES) -> List[IPv4Network]:
    """The first ``limit`` subnets from SubnetMin upwards overlapping none of ``taken``.
    Must stay fast with 10,000 taken subnets and large pools (sort + bisect, no O(n*m))."""
    raise NotImplementedError


def choose_subnet(config: NetworkConfig, taken: Iterable[IPv4Network], rand) -> IPv4Network:
    """``rand`` is a random.Random. Raises OutOfSubnets."""
    raise NotImplementedError
