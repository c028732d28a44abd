"""
The lease watcher with dual-stack leases (issue 15): events carry the v6 part when IPv6
is on; an IPv4-only config hands the backend the v4 part alone; a hostile v6 part is
skipped with one warning and its lease routed as its v4 part, the rest keeps working;
the removal of another key of the same v4 subnet leaves the subnet's lease alone.
"""
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from twisted.internet import task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from flannel_tw.etcd.errors import EventIndexCleared
from flannel_tw.lease import watch
from flannel_tw.model.backoff import make_backoff
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.model.lease import Lease, LeaseAttrs, key_to_subnets
from flannel_tw.testing.fakes import FakeSubnetManager

NETWORK6 = IPv6Network("fc00::/48")
OWN_KEY = "10.5.1.0-24&fc00:0:0:1::-64"
OWN, OWN6 = key_to_subnets(OWN_KEY)


def klease(key, n, ip6=True, data6=None):
    subnet, subnet6 = key_to_subnets(key)
    attrs = LeaseAttrs(IPv4Address("192.0.2.%d" % n), "vxlan",
                       {"VtepMAC": "aa:00:00:00:00:%02x" % n},
                       public_ipv6=IPv6Address("2001:db8::%x" % n) if ip6 else None,
                       backend_v6_data=data6)
    return Lease(subnet, attrs, ttl=86400, key=key, ipv6_subnet=subnet6)


def removed(key):
    subnet, subnet6 = key_to_subnets(key)
    return Lease(subnet, None, key=key, ipv6_subnet=subnet6)


class Base(unittest.TestCase):
    ipv6 = True

    def setUp(self):
        self.clock = task.Clock()
        self.manager = FakeSubnetManager()
        self.batches = []
        self.own = []
        kw = dict(ipv6_network=NETWORK6, ipv6_subnet_len=64, own_ipv6_subnet=lambda: OWN6,
                  own_public_ipv6=IPv6Address("2001:db8::1")) if self.ipv6 else {}
        self.watcher = watch.LeaseWatcher(
            self.clock, self.manager, self.batches.append, own_subnet=lambda: OWN,
            own_sink=self.own.append, backoff=make_backoff(jitter=lambda: 0.0),
            network=OWN.supernet(new_prefix=16), subnet_len=24,
            own_public_ip=IPv4Address("192.0.2.1"), **kw)
        self.warnings = []

        def observe(event):
            if event.get("log_level") is not None and event["log_level"].name == "warn":
                self.warnings.append(event)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def answer(self, name, result):
        n, args, d = self.manager.next(name)
        d.callback(result)
        return args

    def routed(self):
        return [(e.kind, e.lease.key_name) for b in self.batches for e in b]


class DualStackConfigTests(Base):

    def test_events_carry_the_v6_part(self):
        self.watcher.start()
        self.answer("list_leases", ([klease(OWN_KEY, 1),
                                     klease("10.5.2.0-24&fc00:0:0:2::-64", 2),
                                     klease("10.5.3.0-24", 3)], 10))
        self.assertEqual(self.routed(), [(ADDED, "10.5.2.0-24&fc00:0:0:2::-64"),
                                         (ADDED, "10.5.3.0-24")])
        event = self.batches[0][0]
        self.assertEqual((event.lease.ipv6_subnet, event.lease.attrs.public_ipv6),
                         (IPv6Network("fc00:0:0:2::/64"), IPv6Address("2001:db8::2")))
        self.assertEqual([e.lease.ipv6_subnet for e in self.own], [OWN6])

    def test_hostile_v6_parts_skipped_once_each_rest_works(self):
        self.watcher.start()
        hostile = [klease("10.5.4.0-24&fd00:0:0:4::-64", 4),          # outside IPv6Network
                   klease("10.5.5.0-24&fc00:0:0:5::-80", 5),          # wrong prefix
                   klease("10.5.6.0-24&fc00:0:0:6::-64", 6, data6=[1]),  # bad BackendV6Data
                   klease("10.5.7.0-24&fc00:0:0:1::-64", 7)]          # our v6 subnet
        bad_ip6 = klease("10.5.8.0-24&fc00:0:0:8::-64", 8)
        bad_ip6 = Lease(bad_ip6.subnet, LeaseAttrs(bad_ip6.attrs.public_ip, "vxlan",
                                                   public_ipv6=IPv6Address("fe80::1")),
                        ttl=86400, key=bad_ip6.key, ipv6_subnet=bad_ip6.ipv6_subnet)
        good = klease("10.5.2.0-24&fc00:0:0:2::-64", 2)
        self.answer("list_leases", (hostile + [bad_ip6, good], 10))
        v4_parts = [(ADDED, l.key_name.split("&")[0]) for l in hostile + [bad_ip6]]
        self.assertEqual(self.routed(), v4_parts + [(ADDED, good.key_name)])
        for e in self.batches[0][:5]:
            self.assertEqual((e.lease.ipv6_subnet, e.lease.attrs.public_ipv6,
                              e.lease.attrs.backend_v6_data), (None, None, None))
        self.assertEqual(len(self.warnings), 5)
        self.assertTrue(all("Not routing the IPv6 part of lease" in w["log_format"]
                            for w in self.warnings))
        counts = self.watcher.skipped_counts()
        self.assertEqual((counts["outside-network"], counts["subnet-length"],
                          counts["bad-v6-data"], counts["overlaps-own"], counts["public-ipv6"]),
                         (1, 1, 1, 1, 1))
        # listed again (the watch index was cleared): no new warning, the same route
        self.manager.next("watch_leases")[2].errback(EventIndexCleared(401, "", "", 20))
        self.answer("list_leases", (hostile + [bad_ip6, good], 30))
        self.assertEqual(len([w for w in self.warnings
                              if "Not routing the IPv6 part" in w["log_format"]]), 5)
        self.assertEqual(self.routed(), v4_parts + [(ADDED, good.key_name)])

    def test_v6_part_fixed_later_is_an_update(self):
        """A lease routed as its v4 part gets its v6 part routed once it is fixed."""
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24&fc00:0:0:2::-64", 2, data6=[1])], 10))
        self.answer("watch_leases",
                    (LeaseEvent(ADDED, klease("10.5.2.0-24&fc00:0:0:2::-64", 2,
                                              data6={"VtepMAC": "06:00:00:00:00:02"})), 11))
        self.assertEqual(self.routed(), [(ADDED, "10.5.2.0-24"),
                                         (ADDED, "10.5.2.0-24&fc00:0:0:2::-64")])

    def test_a_v6_part_added_to_a_routed_peer_is_an_update(self):
        """A peer re-leased from its IPv4-only key to a dual-stack one: the old key's
        removal (in either order) leaves the new lease routed."""
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24", 2, ip6=False)], 10))
        self.answer("watch_leases",
                    (LeaseEvent(ADDED, klease("10.5.2.0-24&fc00:0:0:2::-64", 2)), 11))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.2.0-24")), 12))
        self.assertEqual(self.routed(), [(ADDED, "10.5.2.0-24"),
                                         (ADDED, "10.5.2.0-24&fc00:0:0:2::-64")])
        self.assertEqual(self.watcher.known[OWN.__class__("10.5.2.0/24")].ipv6_subnet,
                         IPv6Network("fc00:0:0:2::/64"))

    def test_removal_of_the_dual_key_removes(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24&fc00:0:0:2::-64", 2)], 10))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.2.0-24&fc00:0:0:2::-64")),
                                     11))
        self.assertEqual(self.routed(), [(ADDED, "10.5.2.0-24&fc00:0:0:2::-64"),
                                         (REMOVED, "10.5.2.0-24&fc00:0:0:2::-64")])


class IPv4OnlyConfigTests(Base):
    ipv6 = False

    def test_dual_stack_leases_are_ipv4_peers(self):
        """An IPv4-only config: & leases reach the backend as their v4 part, hostile v6
        parts included (they are not looked at)."""
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.2.0-24&fc00:0:0:2::-64", 2,
                                            data6={"VtepMAC": "x"}),
                                     klease("10.5.3.0-24&fd00::-8", 3, data6=[1])], 10))
        self.assertEqual(self.routed(), [(ADDED, "10.5.2.0-24"), (ADDED, "10.5.3.0-24")])
        for b in self.batches:
            for e in b:
                self.assertIsNone(e.lease.ipv6_subnet)
                self.assertIsNone(e.lease.attrs.public_ipv6)
                self.assertIsNone(e.lease.attrs.backend_v6_data)
                self.assertTrue(e.lease.is_canonical)
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.2.0-24&fc00:0:0:2::-64")),
                                     11))
        self.assertEqual(self.routed()[-1], (REMOVED, "10.5.2.0-24"))
        self.assertEqual(self.warnings, [])


class OtherKeyOfOurSubnetTests(Base):
    """A lease on our v4 subnet under another key (a host that raced us and gives way, or
    our own old key form) is neither ours nor a peer: the keeper never hears of it."""

    def test_listed_and_watched(self):
        self.watcher.start()
        rival = klease("10.5.1.0-24&fc00:0:0:9::-64", 9)
        self.answer("list_leases", ([rival, klease(OWN_KEY, 1)], 10))
        self.assertEqual([(e.kind, e.lease.key_name) for e in self.own], [(ADDED, OWN_KEY)])
        self.answer("watch_leases", (LeaseEvent(ADDED, rival), 11))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed(rival.key)), 12))
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed("10.5.1.0-24")), 13))
        self.assertEqual([(e.kind, e.lease.key_name) for e in self.own], [(ADDED, OWN_KEY)])
        self.assertEqual(self.routed(), [])
        self.assertEqual(len([w for w in self.warnings if "another key than ours"
                              in w["log_format"]]), 1)
        self.answer("watch_leases", (LeaseEvent(REMOVED, removed(OWN_KEY)), 14))
        self.assertEqual([(e.kind, e.lease.key_name) for e in self.own],
                         [(ADDED, OWN_KEY), (REMOVED, OWN_KEY)])

    def test_only_the_other_key_listed_means_ours_is_gone(self):
        self.watcher.start()
        self.answer("list_leases", ([klease("10.5.1.0-24", 9)], 10))
        self.assertEqual([e.kind for e in self.own], [REMOVED])
        self.assertEqual(self.routed(), [])
