"""
Which leases in a real etcd reach the data plane (an in-process daemon with a recording
backend, as in tests/integration/test_faults.py): hostile keys and values written next to a good
peer are skipped with one warning each and counted in the metrics while the good peer
is routed; and when another host takes our subnet, we move and its new holder becomes
a peer at once.
"""
from ipaddress import IPv4Network

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw.model.events import ADDED
from flannel_tw.testing.etcd import shared_etcd, unique_prefix

from flannel_tw.testing.harness import CONFIG, DaemonHarness, logged
from flannel_tw.testing.polling import wait_until

# key -> value; each must be skipped, with the reason the metrics count it under
HOSTILE = {
    "x10.5.7.0-24": ('{"PublicIP":"192.0.2.66"}', "bad-key"),      # would alias 10.5.7.0-24
    "10.5.7.9-24": ('{"PublicIP":"192.0.2.67"}', "bad-key"),       # host bits set
    "0.0.0.0-1": ('{"PublicIP":"192.0.2.68"}', "outside-network"),
    "128.0.0.0-1": ('{"PublicIP":"192.0.2.69"}', "outside-network"),
    "10.6.3.0-24": ('{"PublicIP":"192.0.2.70"}', "outside-network"),
    "10.5.0.0-16": ('{"PublicIP":"192.0.2.71"}', "subnet-length"),
    "10.5.9.0-24": ('{"PublicIP":"127.0.0.1"}', "public-ip"),
    "10.5.10.0-24": ('{"PublicIP":"224.0.0.1"}', "public-ip"),
    "10.5.11.0-24": ('{"PublicIP":"0.0.0.0"}', "public-ip"),
    "10.5.12.0-24": ('{"PublicIP":"255.255.255.255"}', "public-ip"),
    "10.5.13.0-24": ('{"PublicIP":"192.0.2.1"}', "own-public-ip"),
}
GOOD = ("10.5.7.0-24", '{"PublicIP":"192.0.2.7"}')


class RoutingHarness(DaemonHarness):
    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.server.put_config(CONFIG, prefix=self.prefix)

    def put(self, name, value, ttl=600):
        self.server.v2_put(self.prefix + "/subnets/" + name, value, ttl=ttl)

    def routed(self, backend):
        """subnet -> PublicIP of what the backend was last told, for every subnet."""
        table = {}
        for e in backend.events:
            if e[0] != "events":
                continue
            for ev in e[1]:
                if ev.kind == ADDED:
                    table[str(ev.lease.subnet)] = str(ev.lease.attrs.public_ip)
                else:
                    table.pop(str(ev.lease.subnet), None)
        return table

    def skipped_metrics(self, daemon):
        from prometheus_client import generate_latest
        from prometheus_client.parser import text_string_to_metric_families
        from flannel_tw.observe.metrics import metrics_registry
        text = generate_latest(metrics_registry(daemon.status, process=False)).decode()
        return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "flannel_leases_skipped_total"}


def expected_counts(hostile):
    counts = {}
    for _, reason in hostile.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


class HostileLeaseTests(RoutingHarness, unittest.TestCase):

    @defer.inlineCallbacks
    def test_hostile_leases_in_the_first_list_are_skipped_good_peer_routed(self):
        # we hold a lease already (a restart): keys such as 0.0.0.0-1 overlap the whole
        # pool, and flanneld's allocation (which we follow) counts them as taken.
        # The subnets the test writes later are held while the first daemon picks its
        # own, so that its random pick is never one of them (a hostile value written
        # over our own lease is another test: the move in MovedSubnetTests).
        later = ["10.5.%d.0-24" % i for i in range(7, 14)]     # GOOD, 10.5.8.0 and HOSTILE's
        for name in later:
            self.put(name, '{"PublicIP":"192.0.2.99"}')
        first = self.make_daemon([self.server.url], prefix=self.prefix)
        first.startService()
        yield self.running(first)
        yield first.stopService()
        self.assertNotIn("%s-24" % (first.lease.subnet.network_address,), later)
        for name in later:
            self.server.v2_delete(self.prefix + "/subnets/" + name)
        # (a lease with our PublicIP before we start is ours: acquire_lease reuses it)
        hostile = {k: v for k, v in HOSTILE.items() if v[1] != "own-public-ip"}
        for name, (value, _) in hostile.items():
            self.put(name, value)
        self.put(*GOOD)
        d = self.run_daemon(self.make_daemon([self.server.url], prefix=self.prefix))
        yield self.running(d)
        self.assertEqual(d.lease.subnet, first.lease.subnet)
        backend = self.backends[1]
        self.assertEqual(self.routed(backend), {"10.5.7.0/24": "192.0.2.7"})
        self.assertEqual(len(logged(self.logs, "Ignoring lease", LogLevel.warn)), len(hostile))
        metrics = self.skipped_metrics(d)
        for reason, n in expected_counts(hostile).items():
            self.assertEqual(metrics[reason], n, reason)
        # renewed (rewritten) hostile leases warn no more and count no more
        for name, (value, _) in hostile.items():
            self.put(name, value)
        self.put("10.5.8.0-24", '{"PublicIP":"192.0.2.8"}')
        yield wait_until(lambda: "10.5.8.0/24" in self.routed(backend))
        self.assertEqual(len(logged(self.logs, "Ignoring lease", LogLevel.warn)), len(hostile))
        self.assertEqual(self.skipped_metrics(d), metrics)
        self.assertEqual(self.routed(backend), {"10.5.7.0/24": "192.0.2.7",
                                                "10.5.8.0/24": "192.0.2.8"})
        # deleting the alias key leaves the real peer routed
        self.server.v2_delete(self.prefix + "/subnets/x10.5.7.0-24")
        self.server.v2_delete(self.prefix + "/subnets/10.5.8.0-24")
        yield wait_until(lambda: "10.5.8.0/24" not in self.routed(backend))
        self.assertEqual(self.routed(backend), {"10.5.7.0/24": "192.0.2.7"})
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_hostile_leases_through_the_watch_are_skipped_good_peer_routed(self):
        self.put(*GOOD)
        d = self.run_daemon(self.make_daemon([self.server.url], prefix=self.prefix))
        yield self.running(d)
        backend = self.backends[0]
        yield wait_until(lambda: self.routed(backend) == {"10.5.7.0/24": "192.0.2.7"})
        # The daemon took a random subnet: a hostile key (or the marker) naming that very
        # subnet would be a write to our own lease, another test; move such a key aside.
        own = "%s-24" % (d.lease.subnet.network_address,)
        spare = ("10.5.%d.0-24" % i for i in range(200, 250))
        hostile = {(next(spare) if name == own else name): v for name, v in HOSTILE.items()}
        marker = "10.5.14.0-24" if own != "10.5.14.0-24" else next(spare)
        marker_subnet = marker.replace("-", "/")
        for name, (value, _) in hostile.items():
            self.put(name, value)
        self.put(marker, '{"PublicIP":"192.0.2.14"}')    # the marker: last write
        yield wait_until(lambda: marker_subnet in self.routed(backend))
        self.assertEqual(self.routed(backend), {"10.5.7.0/24": "192.0.2.7",
                                                marker_subnet: "192.0.2.14"})
        metrics = self.skipped_metrics(d)
        for reason, n in expected_counts(hostile).items():
            self.assertEqual(metrics[reason], n, reason)
        self.assertEqual(len(logged(self.logs, "Ignoring lease", LogLevel.warn)),
                         len(hostile) - 1)      # our own PublicIP: an info line
        self.assertEqual(d.lease.subnet.prefixlen, 24)
        self.assertEqual(self.exits, [])


class MovedSubnetTests(RoutingHarness, unittest.TestCase):
    @defer.inlineCallbacks
    def test_our_subnet_taken_we_move_and_its_new_holder_is_routed(self):
        self.put("10.5.200.0-24", '{"PublicIP":"192.0.2.200"}')
        d = self.run_daemon(self.make_daemon([self.server.url], prefix=self.prefix))
        yield self.running(d)
        backend = self.backends[0]
        old = d.lease.subnet
        # another host (a second writer) takes our subnet, as after an expiry or a restore
        self.server.v2_put(self.key(old, self.prefix), '{"PublicIP":"192.0.2.77"}', ttl=600)
        yield wait_until(lambda: d.lease.subnet != old and d.keeper.state == "held",
                         timeout=20)
        new = d.lease.subnet
        # the sink holds the old subnet's new holder, at once (not at its renewal)
        yield wait_until(lambda: self.routed(backend).get(str(old)) == "192.0.2.77")
        self.assertEqual(self.routed(backend), {str(old): "192.0.2.77",
                                                "10.5.200.0/24": "192.0.2.200"})
        self.assertNotIn(new, d.watcher.known)
        self.assertEqual(len(logged(self.logs, "now held by another host (192.0.2.77)",
                                    LogLevel.critical)), 1)
        # from then on the old subnet is an ordinary peer: its removal is routed too
        self.server.v2_delete(self.key(old, self.prefix))
        yield wait_until(lambda: str(old) not in self.routed(backend))
        self.assertEqual(d.lease.subnet, new)
        self.assertIsInstance(new, IPv4Network)
        self.assertEqual(self.exits, [])
