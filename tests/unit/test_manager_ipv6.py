"""
Dual-stack lease policy (flanneld-v0.20-v3.md A4) on the in-memory registry: a v6 subnet
allocated beside the v4 one (independent scan, random pick), reuse with the v4 and v6
compatibility rules, previous subnets, a config switched to or from dual-stack, mixed
clusters (IPv4-only and dual-stack leases in one keyspace) without a crash; and the
allocation functions (hypothesis).
"""
import json
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from flannel_tw.lease.allocate import (CANDIDATES, OutOfSubnets, choose_ipv6_subnet,
                                       fits_ipv6, free_ipv6_subnets, holds_ipv6_allocation)
from flannel_tw.lease.manager import SUBNET_TTL, SubnetManager
from flannel_tw.model.config import parse_config
from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.model.lease import LeaseAttrs, key_to_subnets
from flannel_tw.testing.registry import FakeRegistry

V4_JSON = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
DUAL_JSON = ('{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", '
             '"Backend": {"Type": "vxlan"}}')
V4 = parse_config(V4_JSON)
DUAL = parse_config(DUAL_JSON)
IP = IPv4Address("192.0.2.1")
IP6 = IPv6Address("2001:db8::1")
ATTRS = LeaseAttrs(IP, "vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"})
ATTRS6 = LeaseAttrs(IP, "vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}, public_ipv6=IP6,
                    backend_v6_data={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"})
NET = IPv4Network("10.5.7.0/24")
NET6 = IPv6Network("fc00:0:0:7::/64")


def other(n, v6=True):
    """Another host's value."""
    if v6:
        return ('{"PublicIP":"198.51.100.%d","PublicIPv6":"2001:db8:1::%x",'
                '"BackendType":"vxlan"}' % (n, n))
    return '{"PublicIP":"198.51.100.%d","BackendType":"vxlan"}' % (n,)


class DualStackAcquireTests(unittest.TestCase):

    def setUp(self):
        self.registry = FakeRegistry(config=DUAL_JSON)
        self.manager = SubnetManager(self.registry, rand=random.Random(3))

    def acquire(self, config=DUAL, attrs=ATTRS6, **kw):
        return self.successResultOf(self.manager.acquire_lease(config, attrs, **kw))

    def last_write(self):
        op, name, value, ttl, _ = self.registry.writes[-1]
        return op, name, value, ttl

    def test_new_dual_stack_lease(self):
        """A new lease has a v6 part from the pool, under the & key, with the v0.20 value."""
        lease = self.acquire()
        self.assertTrue(fits_ipv6(DUAL, lease.ipv6_subnet))
        op, name, value, ttl = self.last_write()
        self.assertEqual((op, ttl), ("create", SUBNET_TTL))
        self.assertEqual(name, "%s-24&%s-64" % (lease.subnet.network_address,
                                                  lease.ipv6_subnet.network_address))
        self.assertEqual(key_to_subnets(name), (lease.subnet, lease.ipv6_subnet))
        self.assertEqual(value, ATTRS6.to_json())
        self.assertTrue(value.startswith('{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1",'))

    def test_v6_pick_is_among_the_first_100_free_and_independent(self):
        """Several hosts: each v6 subnet among the first 100 free from IPv6SubnetMin,
        none twice; the v6 pick does not follow the v4 pick."""
        v4s, v6s = [], []
        for n in range(2, 30):
            attrs = LeaseAttrs(IPv4Address("192.0.2.%d" % n), "vxlan",
                               public_ipv6=IPv6Address("2001:db8::%x" % n))
            lease = self.acquire(attrs=attrs)
            v4s.append(int(lease.subnet.network_address) >> 8 & 0xff)
            v6s.append(int(lease.ipv6_subnet.network_address) >> 64 & 0xffff)
        self.assertEqual(len(set(v6s)), len(v6s))
        self.assertTrue(all(1 <= x <= len(v6s) + CANDIDATES for x in v6s))
        self.assertNotEqual(v4s, v6s)

    def test_reuse_after_restart(self):
        """Our dual-stack lease (same PublicIP) is reused, both parts kept."""
        first = self.acquire()
        again = self.acquire()
        self.assertEqual((again.subnet, again.ipv6_subnet), (first.subnet, first.ipv6_subnet))
        self.assertEqual(self.last_write()[0], "compare_and_set")

    def test_previous_subnets_from_subnet_env(self):
        lease = self.acquire(previous_subnet=NET, previous_ipv6_subnet=NET6)
        self.assertEqual((lease.subnet, lease.ipv6_subnet), (NET, NET6))

    def test_previous_v6_held_by_another_host(self):
        """The previous v6 subnet held by another lease: a fresh v6 part, the v4 kept."""
        self.registry.put_raw("10.5.9.0-24&fc00:0:0:7::-64", other(9), ttl=100)
        lease = self.acquire(previous_subnet=NET, previous_ipv6_subnet=NET6)
        self.assertEqual(lease.subnet, NET)
        self.assertNotEqual(lease.ipv6_subnet, NET6)
        self.assertTrue(fits_ipv6(DUAL, lease.ipv6_subnet))

    def test_previous_v6_not_fitting(self):
        lease = self.acquire(previous_subnet=NET,
                             previous_ipv6_subnet=IPv6Network("fd00:0:0:7::/64"))
        self.assertEqual(lease.subnet, NET)
        self.assertTrue(fits_ipv6(DUAL, lease.ipv6_subnet))

    def test_config_switched_to_dual_stack(self):
        """Our IPv4-only lease under a dual-stack config: the old key deleted, the same v4
        subnet leased again with a v6 part."""
        self.registry.put_raw("10.5.7.0-24", ATTRS.to_json(), ttl=100)
        lease = self.acquire()
        self.assertEqual(lease.subnet, NET)
        self.assertIsNotNone(lease.ipv6_subnet)
        names = [r.key.rsplit("/", 1)[-1] for r in self.successResultOf(self.registry.list())[0]]
        self.assertEqual(names, ["10.5.7.0-24&%s-64" % lease.ipv6_subnet.network_address])
        ops = [w[0] for w in self.registry.writes[-2:]]
        self.assertEqual(ops, ["delete", "create"])

    def test_config_switched_back_to_ipv4_only(self):
        """Our dual-stack lease under an IPv4-only config: v6 must be absent (A4): the
        same v4 subnet leased again under its v4 key, with an IPv4-only value."""
        self.registry.put_raw("10.5.7.0-24&fc00:0:0:7::-64", ATTRS6.to_json(), ttl=100)
        lease = self.acquire(config=V4, attrs=ATTRS)
        self.assertEqual((lease.subnet, lease.ipv6_subnet), (NET, None))
        names = [r.key.rsplit("/", 1)[-1] for r in self.successResultOf(self.registry.list())[0]]
        self.assertEqual(names, ["10.5.7.0-24"])
        self.assertEqual(self.last_write()[2], ATTRS.to_json())

    def test_v6_range_changed(self):
        """Our v6 part outside a new IPv6 range: re-leased with one inside, v4 kept."""
        self.registry.put_raw("10.5.7.0-24&fc00:0:0:7::-64", ATTRS6.to_json(), ttl=100)
        config = parse_config('{"Network": "10.5.0.0/16", "EnableIPv6": true, '
                              '"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:100::"}')
        lease = self.acquire(config=config)
        self.assertEqual(lease.subnet, NET)
        self.assertGreaterEqual(lease.ipv6_subnet.network_address, IPv6Address("fc00:0:0:100::"))

    def test_dual_stack_host_in_an_ipv4_cluster(self):
        """IPv4-only leases of other hosts take v4 subnets and no v6 subnet; no crash
        (flanneld v0.20 panics in IP6Net.Overlaps here)."""
        for n in range(1, 101):
            self.registry.put_raw("10.5.%d.0-24" % n, other(n + 10, v6=False), ttl=100)
        lease = self.acquire()
        self.assertGreater(int(lease.subnet.network_address) >> 8 & 0xff, 100)
        self.assertTrue(fits_ipv6(DUAL, lease.ipv6_subnet))

    def test_ipv4_host_in_a_dual_stack_cluster(self):
        """An IPv4-only config sees & leases as their v4 part: those subnets are taken and
        its own lease is IPv4-only."""
        for n in range(1, 101):
            self.registry.put_raw("10.5.%d.0-24&fc00:0:0:%x::-64" % (n, n), other(n + 10),
                                  ttl=100)
        lease = self.acquire(config=V4, attrs=ATTRS)
        self.assertGreater(int(lease.subnet.network_address) >> 8 & 0xff, 100)
        self.assertIsNone(lease.ipv6_subnet)
        self.assertEqual(self.last_write()[1], "%s-24" % lease.subnet.network_address)

    def test_v6_taken_by_mixed_leases(self):
        """The first 100 free v6 subnets skip those of dual-stack leases, however many
        IPv4-only leases are around."""
        for n in range(1, 100):
            self.registry.put_raw("10.5.%d.0-24&fc00:0:0:%x::-64" % (n, n), other(n), ttl=100)
        self.registry.put_raw("10.5.200.0-24", other(200, v6=False), ttl=100)
        lease = self.acquire()
        self.assertGreaterEqual(int(lease.ipv6_subnet.network_address) >> 64 & 0xffff, 100)

    def test_hostile_v6_keys_take_no_v6_subnet(self):
        """A v6 part outside IPv6Network or shorter than its prefix + 2 holds nothing."""
        self.registry.put_raw("10.5.1.0-24&fc00::-48", other(1), ttl=100)
        self.registry.put_raw("10.5.2.0-24&::-0", other(2), ttl=100)
        lease = self.acquire()
        self.assertTrue(fits_ipv6(DUAL, lease.ipv6_subnet))
        self.assertNotIn(lease.subnet, (IPv4Network("10.5.1.0/24"), IPv4Network("10.5.2.0/24")))

    def test_out_of_ipv6_subnets(self):
        config = parse_config('{"Network": "10.5.0.0/16", "EnableIPv6": true, '
                              '"IPv6Network": "fc00::/124"}')        # 3 v6 subnets (/126)
        for n, a in enumerate(("4", "8", "c"), 1):
            self.registry.put_raw("10.5.%d.0-24&fc00::%s-126" % (n, a), other(n), ttl=100)
        f = self.failureResultOf(self.manager.acquire_lease(config, ATTRS6), OutOfSubnets)
        self.assertIn("IPv6 subnets", str(f.value))

    def test_renew_and_get_use_the_dual_key(self):
        lease = self.acquire()
        renewed = self.successResultOf(self.manager.renew_lease(lease))
        self.assertEqual(renewed.ipv6_subnet, lease.ipv6_subnet)
        self.assertEqual(self.last_write()[1], lease.key_name)
        got = self.successResultOf(self.manager.get_lease(lease.subnet, lease.ipv6_subnet))
        self.assertEqual((got.ipv6_subnet, got.attrs), (lease.ipv6_subnet, ATTRS6))

    def test_watch_events_carry_the_v6_part(self):
        cursor = self.registry.index
        self.registry.put_raw("10.5.9.0-24&fc00:0:0:9::-64", other(9), ttl=100)
        self.registry.remove("10.5.9.0-24&fc00:0:0:9::-64")
        event, index = self.successResultOf(self.manager.watch_leases(cursor + 1))
        self.assertEqual((event.kind, event.lease.ipv6_subnet, event.lease.attrs.public_ipv6),
                         (ADDED, IPv6Network("fc00:0:0:9::/64"), IPv6Address("2001:db8:1::9")))
        event, index = self.successResultOf(self.manager.watch_leases(index + 1))
        self.assertEqual((event.kind, event.lease.ipv6_subnet),
                         (REMOVED, IPv6Network("fc00:0:0:9::/64")))


class KeeperDualStackTests(unittest.TestCase):
    """The keeper re-acquires with its v6 part preferred too."""

    def test_reacquire_after_delete_keeps_both_parts(self):
        from flannel_tw.lease.keeper import LeaseKeeper
        clock = task.Clock()
        registry = FakeRegistry(config=DUAL_JSON)
        manager = SubnetManager(registry, rand=random.Random(5))
        lease = self.successResultOf(manager.acquire_lease(DUAL, ATTRS6))
        keeper = LeaseKeeper(clock, manager, DUAL, ATTRS6, lease, 3600)
        keeper.start()
        registry.remove(lease.key_name)
        clock.advance(86400)       # the renewal finds the key gone and re-acquires
        self.assertEqual((keeper.lease.subnet, keeper.lease.ipv6_subnet),
                         (lease.subnet, lease.ipv6_subnet))
        keeper.stop()


class AllocationPropertyTests(unittest.TestCase):

    @settings(max_examples=50, deadline=None)
    @given(st.integers(48, 120), st.lists(st.integers(0, 300), max_size=60), st.integers(0, 9))
    def test_free_ipv6_subnets(self, prefix, taken_idx, seed):
        """The free v6 subnets are the first ones from IPv6SubnetMin, in order, inside
        [min, max], none overlapping a taken one; the choice is one of them."""
        config = parse_config(json.dumps({"Network": "10.5.0.0/16", "EnableIPv6": True,
                                          "IPv6Network": "fc00::/%d" % prefix}))
        size = config.ipv6_subnet_size
        base = int(config.ipv6_subnet_min)
        taken = [IPv6Network((base + i * size, config.ipv6_subnet_len)) for i in taken_idx
                 if base + i * size <= int(config.ipv6_subnet_max)]
        free = free_ipv6_subnets(config, taken)
        expect = []
        a = base
        while a <= int(config.ipv6_subnet_max) and len(expect) < CANDIDATES:
            n = IPv6Network((a, config.ipv6_subnet_len))
            if not any(n.overlaps(t) for t in taken):
                expect.append(n)
            a += size
        self.assertEqual(free, expect)
        if free:
            self.assertIn(choose_ipv6_subnet(config, taken, random.Random(seed)), free)
        else:
            self.assertRaises(OutOfSubnets, choose_ipv6_subnet, config, taken, random.Random(seed))

    @given(st.integers(0, 2 ** 128 - 1), st.integers(0, 128))
    def test_holds_and_fits(self, address, prefix):
        n = IPv6Network((address, prefix), strict=False)
        self.assertEqual(holds_ipv6_allocation(DUAL, n),
                         n.subnet_of(IPv6Network("fc00::/48")) and prefix >= 50)
        self.assertFalse(holds_ipv6_allocation(V4, n))
        self.assertEqual(fits_ipv6(DUAL, n), n.subnet_of(IPv6Network("fc00::/48")) and
                         prefix == 64 and n.network_address >= IPv6Address("fc00:0:0:1::"))
        self.assertFalse(fits_ipv6(V4, n))
        self.assertTrue(fits_ipv6(V4, None))
        self.assertFalse(fits_ipv6(DUAL, None))


class RacingRegistry(FakeRegistry):
    """Another host creates C{theirs} (a different key for an overlapping subnet) right
    before (C{first=True}) or right after our create."""

    def __init__(self, theirs, first, **kw):
        FakeRegistry.__init__(self, **kw)
        self.theirs, self.first = theirs, first

    def create(self, name, value, ttl):
        if self.theirs is not None and self.first:
            self.put_raw(self.theirs(name), other(50), ttl=ttl)
        d = FakeRegistry.create(self, name, value, ttl)
        if self.theirs is not None and not self.first:
            self.put_raw(self.theirs(name), other(50), ttl=ttl)
        self.theirs = None      # once
        return d


def same_v4_other_v6(name):
    v4 = name.split("&")[0]
    return v4 + "&fc00:0:0:ffff::-64"


def same_v6_other_v4(name):
    return "10.5.254.0-24&" + name.split("&")[1]


def same_v4_ipv4_only(name):
    return name.split("&")[0]


class CrossKeyRaceTests(unittest.TestCase):
    """Two hosts taking the same subnet at once under different keys (the v6 part differs,
    or one key is IPv4-only): create-only cannot see it; the later create gives way."""

    def acquire(self, theirs, first):
        registry = RacingRegistry(theirs, first, config=DUAL_JSON)
        manager = SubnetManager(registry, rand=random.Random(3))
        return registry, self.successResultOf(manager.acquire_lease(DUAL, ATTRS6))

    def test_later_create_gives_way(self):
        for theirs in (same_v4_other_v6, same_v6_other_v4, same_v4_ipv4_only):
            registry, lease = self.acquire(theirs, first=True)
            names = sorted(registry.records)
            self.assertEqual(len(names), 2, theirs)
            self.assertIn(lease.key_name, names)
            other_lease = [n for n in names if n != lease.key_name][0]
            o4, o6 = key_to_subnets(other_lease)
            self.assertFalse(o4.overlaps(lease.subnet), theirs)
            self.assertFalse(o6 is not None and o6.overlaps(lease.ipv6_subnet), theirs)
            deletes = [w for w in registry.writes if w[0] == "delete"]
            self.assertEqual(len(deletes), 1, theirs)
            self.assertIsNotNone(deletes[0][4], "a compare-and-delete on our own index")

    def test_earlier_create_keeps_its_lease(self):
        registry, lease = self.acquire(same_v4_other_v6, first=False)
        self.assertEqual([w[0] for w in registry.writes], ["create"])
        self.assertIn(lease.key_name, registry.records)
