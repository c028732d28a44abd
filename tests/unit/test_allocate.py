"""
Tests for flannel_tw.lease.allocate: flanneld's subnet choice (flannel-compat.md
section 2, AcquireLease step 4), checked against a naive reference scan.
"""
import random
from ipaddress import IPv4Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.lease.allocate import (CANDIDATES, OutOfSubnets, choose_subnet, fits, free_subnets,
                                 holds_allocation,
                                 pool_size)
from flannel_tw.model.config import NetworkConfig, parse_config


def config(network="10.5.0.0/16", **extra) -> NetworkConfig:
    fields = ", ".join('"%s": %s' % (k, '"%s"' % v if isinstance(v, str) else v)
                       for k, v in extra.items())
    return parse_config('{"Network": "%s"%s}' % (network, ", " + fields if fields else ""))


def naive_free(c: NetworkConfig, taken, limit=CANDIDATES):
    """flanneld's loop, literally: each candidate against every lease."""
    out = []
    address = int(c.subnet_min)
    while address <= int(c.subnet_max) and len(out) < limit:
        candidate = IPv4Network((address, c.subnet_len))
        if not any(candidate.overlaps(t) for t in taken):
            out.append(candidate)
        address += c.subnet_size
    return out


class FitsTests(TestCase):
    """A lease fits when its address is in [min, max] and its prefix is SubnetLen."""

    def test_fits(self):
        c = config()
        self.assertTrue(fits(c, IPv4Network("10.5.1.0/24")))
        self.assertTrue(fits(c, IPv4Network("10.5.255.0/24")))
        self.assertFalse(fits(c, IPv4Network("10.5.0.0/24")))       # the skipped first
        self.assertFalse(fits(c, IPv4Network("10.5.2.0/25")))       # wrong prefix
        self.assertFalse(fits(c, IPv4Network("10.6.1.0/24")))       # outside

    def test_pool_size(self):
        """Subnets from min to max inclusive, 0 when min > max."""
        self.assertEqual(pool_size(config()), 255)
        self.assertEqual(pool_size(config("10.1.0.0/24")), 3)
        self.assertEqual(pool_size(config(SubnetMin="10.5.9.0", SubnetMax="10.5.3.0")), 0)


class FreeSubnetsTests(TestCase):
    """The first candidates upwards from SubnetMin."""

    def test_empty(self):
        """Nothing taken: the first 100 from SubnetMin."""
        free = free_subnets(config(), [])
        self.assertEqual(len(free), CANDIDATES)
        self.assertEqual(free[0], IPv4Network("10.5.1.0/24"))
        self.assertEqual(free[-1], IPv4Network("10.5.100.0/24"))

    def test_skips_overlaps(self):
        """Overlap is interval intersection, whatever the taken prefix."""
        taken = [IPv4Network("10.5.1.0/24"), IPv4Network("10.5.2.128/25"),
                 IPv4Network("10.5.4.0/22"), IPv4Network("10.5.3.7/32")]
        self.assertEqual(free_subnets(config(), taken, limit=2),
                         [IPv4Network("10.5.8.0/24"), IPv4Network("10.5.9.0/24")])

    def test_bigger_taken_covers_all(self):
        """A taken /8 covering the whole network leaves nothing."""
        self.assertEqual(free_subnets(config(), [IPv4Network("10.0.0.0/8")]), [])

    def test_limit(self):
        """Only the pool is scanned, up to ``limit``."""
        self.assertEqual(len(free_subnets(config("10.1.0.0/24"), [])), 3)
        self.assertEqual(free_subnets(config(), [], limit=1), [IPv4Network("10.5.1.0/24")])

    def test_large(self):
        """10,000 taken in a 65,536-subnet pool: runs (no timing assertion) and is right."""
        c = config("10.0.0.0/8", SubnetLen=24)
        rand = random.Random(7)
        taken = [IPv4Network((int(c.subnet_min) + 256 * i, 24))
                 for i in rand.sample(range(12000), 10000)]
        free = free_subnets(c, taken)
        taken_set = set(taken)     # all taken are aligned /24s: free means not in the set
        expected = [n for n in (IPv4Network((int(c.subnet_min) + 256 * i, 24))
                                for i in range(12100)) if n not in taken_set][:CANDIDATES]
        self.assertEqual(free, expected)


@st.composite
def scenarios(draw):
    prefix = draw(st.integers(14, 26))
    network = IPv4Network((draw(st.integers(0, 2 ** 32 - 1)), prefix), strict=False)
    c = parse_config('{"Network": "%s"}' % network)
    pool = [IPv4Network((int(c.subnet_min) + i * c.subnet_size, c.subnet_len))
            for i in range(min(pool_size(c), 300))]
    taken = draw(st.lists(st.one_of(
        st.sampled_from(pool),
        st.builds(lambda a, p: IPv4Network((a, p), strict=False),
                  st.integers(int(network.network_address), int(network.broadcast_address)),
                  st.integers(prefix, 32))), max_size=300))
    return c, taken


class PropertyTests(TestCase):
    """Against the naive reference, and the invariants of the choice."""

    @given(scenarios())
    def test_matches_naive(self, scenario):
        """free_subnets equals flanneld's literal loop."""
        c, taken = scenario
        self.assertEqual(free_subnets(c, taken), naive_free(c, taken))

    @given(scenarios(), st.randoms(use_true_random=False))
    def test_choice(self, scenario, rand):
        """The choice fits, overlaps nothing taken and is among the first 100 candidates."""
        c, taken = scenario
        try:
            chosen = choose_subnet(c, iter(taken), rand)
        except OutOfSubnets as e:
            self.assertEqual(naive_free(c, taken), [])
            self.assertEqual((e.pool_size, e.taken), (pool_size(c), len(taken)))
            return
        self.assertTrue(fits(c, chosen))
        self.assertTrue(c.subnet_min <= chosen.network_address <= c.subnet_max)
        self.assertFalse(any(chosen.overlaps(t) for t in taken))
        self.assertIn(chosen, naive_free(c, taken, CANDIDATES))


class ChooseTests(TestCase):
    """Random choice and exhaustion."""

    def test_uniform_over_first_100(self):
        """Every one of the first 100 can come out, nothing beyond."""
        c = config()
        rand = random.Random(1)
        seen = {choose_subnet(c, [], rand) for _ in range(1500)}
        self.assertEqual(seen, set(free_subnets(c, [])))

    def test_out_of_subnets(self):
        """All of a 3-subnet pool taken: OutOfSubnets with pool size and lease count."""
        c = config("10.1.0.0/24")
        taken = [IPv4Network("10.1.0.%d/26" % (64 * i)) for i in range(4)]
        err = self.assertRaises(OutOfSubnets, choose_subnet, c, taken, random.Random(0))
        self.assertEqual((err.pool_size, err.taken), (3, 4))
        self.assertIn("out of subnets", str(err))

    def test_min_above_max(self):
        """An empty pool (min > max) is out of subnets."""
        c = config(SubnetMin="10.5.9.0", SubnetMax="10.5.3.0")
        err = self.assertRaises(OutOfSubnets, choose_subnet, c, [], random.Random(0))
        self.assertEqual((err.pool_size, err.taken), (0, 0))


class HoldsAllocationTests(TestCase):
    """allocate.holds_allocation: which leased subnets keep others from being allocated."""

    def test_examples(self):
        c = config()      # 10.5.0.0/16, SubnetLen 24
        for text, holds in [("10.5.7.0/24", True), ("10.5.7.0/26", True), ("10.5.4.0/22", True),
                            ("10.5.0.0/18", True), ("10.5.0.0/17", False),
                            ("10.5.0.0/16", False), ("0.0.0.0/1", False),
                            ("10.0.0.0/8", False), ("10.6.0.0/24", False)]:
            self.assertEqual(holds_allocation(c, IPv4Network(text)), holds, text)

    @given(st.integers(0, 2 ** 32 - 1), st.integers(0, 32))
    def test_what_holds_is_a_subnet_a_valid_config_could_hand_out(self, addr, plen):
        c = config()
        subnet = IPv4Network((addr, plen), strict=False)
        expected = (subnet.subnet_of(c.network) and plen >= c.network.prefixlen + 2)
        self.assertEqual(holds_allocation(c, subnet), expected)
