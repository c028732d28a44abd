"""flannel_tw.observe.metrics: the collector over fake daemon state, the page via StubTreq,
and a scrape of a real daemon's endpoint in a two-host udp lab after traffic."""

import collections
from ipaddress import IPv4Address, IPv4Network

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.observe import metrics
from flannel_tw.testing.metrics_samples import Obj, sample, samples


def fake_daemon():
    from flannel_tw.backend.udp.backend import new_counters
    counters = new_counters()
    counters.update(packets_in=7, bytes_in=700, packets_out=5, bytes_out=500,
                    tun_packets_in=6, tun_bytes_in=600, tun_packets_out=7, tun_bytes_out=700,
                    icmp_unreachable=1)
    counters["spoofed-source"] = 3
    counters["no-route"] = 1
    return Obj(
        ready=True,
        lease=Obj(subnet=IPv4Network("10.1.74.0/24")),
        ext_iface=Obj(public_ip=IPv4Address("192.168.250.11")),
        watcher=Obj(known={IPv4Network("10.1.5.0/24"): 1, IPv4Network("10.1.6.0/24"): 2},
                    resyncs=2, failures=0),
        keeper=Obj(renewals=4, renewal_failures=1),
        etcd_client=Obj(error_counts=collections.Counter({"transport": 3, "etcd_401": 1})),
        backend=Obj(name="udp", counters=counters),
    )


def render(daemon):
    from prometheus_client import generate_latest
    return generate_latest(metrics.metrics_registry(daemon, process=False)).decode()


class CollectorTests(unittest.TestCase):
    def test_live_state(self):
        d = fake_daemon()
        found = samples(render(d))
        self.assertEqual(sample(found, "flannel_up"), 1)
        self.assertEqual(sample(found, "flannel_ready"), 1)
        self.assertEqual(sample(found, "flannel_lease_info", subnet="10.1.74.0/24",
                                public_ip="192.168.250.11", backend="udp"), 1)
        self.assertEqual(sample(found, "flannel_leases_known"), 2)
        self.assertEqual(sample(found, "flannel_lease_renewals_total"), 4)
        self.assertEqual(sample(found, "flannel_lease_renewal_failures_total"), 1)
        self.assertEqual(sample(found, "flannel_watch_resyncs_total"), 2)
        self.assertEqual(sample(found, "flannel_etcd_errors_total", kind="transport"), 3)
        self.assertEqual(sample(found, "flannel_etcd_errors_total", kind="etcd_401"), 1)
        self.assertEqual(sample(found, "flannel_udp_packets_total", direction="in"), 7)
        self.assertEqual(sample(found, "flannel_udp_packets_total", direction="out"), 5)
        self.assertEqual(sample(found, "flannel_udp_bytes_total", direction="out"), 500)
        self.assertEqual(sample(found, "flannel_udp_tun_packets_total", direction="in"), 6)
        self.assertEqual(sample(found, "flannel_udp_tun_bytes_total", direction="out"), 700)
        self.assertEqual(sample(found, "flannel_udp_icmp_unreachable_total"), 1)
        self.assertEqual(sample(found, "flannel_udp_dropped_packets_total",
                                reason="spoofed-source"), 3)
        from flannel_tw.backend.udp.backend import DROP_REASONS
        for reason in DROP_REASONS:
            self.assertIn(("flannel_udp_dropped_packets_total",
                           frozenset({"reason": reason}.items())), found)
        # counters with a metric of their own are not repeated as flannel_backend_counter
        other = {dict(k[1])["name"] for k in found if k[0] == "flannel_backend_counter_total"}
        self.assertFalse(other & (set(DROP_REASONS) | set(metrics._UDP_DIRECTIONAL)
                                  | {"icmp_unreachable"}), other)

    def test_reads_state_at_scrape_time(self):
        d = fake_daemon()
        d.backend.counters["packets_out"] += 10
        d.keeper.renewals = 9
        d.watcher.known = {}
        d.etcd_client.error_counts["unavailable"] += 2
        found = samples(render(d))
        self.assertEqual(sample(found, "flannel_udp_packets_total", direction="out"), 15)
        self.assertEqual(sample(found, "flannel_lease_renewals_total"), 9)
        self.assertEqual(sample(found, "flannel_leases_known"), 0)
        self.assertEqual(sample(found, "flannel_etcd_errors_total", kind="unavailable"), 2)

    def test_daemon_before_it_runs(self):
        """Waiting for config: no watcher, keeper, backend, lease or etcd client yet."""
        d = Obj(ready=False, lease=None, watcher=None, keeper=None, backend=None)
        found = samples(render(d))
        self.assertEqual(sample(found, "flannel_ready"), 0)
        self.assertEqual(sample(found, "flannel_leases_known"), 0)
        self.assertEqual(sample(found, "flannel_lease_renewals_total"), 0)
        self.assertFalse([k for k in found if k[0] == "flannel_lease_info"])

    def test_other_backends_counters(self):
        d = fake_daemon()
        d.backend = Obj(name="vxlan", counters={"fdb_updates": 3})
        found = samples(render(d))
        self.assertEqual(sample(found, "flannel_backend_counter_total", backend="vxlan",
                                name="fdb_updates"), 3)
        self.assertFalse([k for k in found if k[0].startswith("flannel_udp_")])

    def test_alloc_backend_without_counters(self):
        d = fake_daemon()
        d.backend = Obj(name="alloc")
        self.assertFalse([k for k in samples(render(d)) if "backend_counter" in k[0]])


class PageTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_metrics_page(self):
        treq = StubTreq(metrics.metrics_root(fake_daemon()))
        response = yield treq.get("http://flannel/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(
            "text/plain"))
        body = yield response.text()
        found = samples(body)
        self.assertEqual(sample(found, "flannel_udp_packets_total", direction="in"), 7)
        self.assertIn(("process_open_fds", frozenset()), found)

    @defer.inlineCallbacks
    def test_openmetrics_when_asked(self):
        treq = StubTreq(metrics.metrics_root(fake_daemon()))
        response = yield treq.get("http://flannel/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertIn("openmetrics", response.headers.getRawHeaders("content-type")[0])
        body = yield response.text()
        self.assertTrue(body.rstrip().endswith("# EOF"))

    def test_service_listens_where_asked(self):
        from twisted.internet import reactor
        svc = metrics.metrics_service(fake_daemon(), reactor, "127.0.0.1", 0)
        self.assertEqual(svc.endpoint._interface, "127.0.0.1")
