"""flannel_tw.observe.metrics: the collector over hand-built status snapshots
(L{flannel_tw.observe.status.DaemonStatus}) and the page via StubTreq."""

import collections
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from prometheus_client import generate_latest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.lease.status import KeeperStatus, WatcherStatus
from flannel_tw.observe import metrics
from flannel_tw.observe.status import DaemonStatus
from flannel_tw.testing.metrics_samples import sample, samples


def fake_status():
    """A running udp daemon's snapshot, as FlannelDaemon.status() makes it."""
    from flannel_tw.backend.udp.backend import new_counters
    counters = new_counters()
    counters.update(packets_in=7, bytes_in=700, packets_out=5, bytes_out=500,
                    tun_packets_in=6, tun_bytes_in=600, tun_packets_out=7, tun_bytes_out=700,
                    icmp_unreachable=1)
    counters["spoofed-source"] = 3
    counters["no-route"] = 1
    return DaemonStatus(
        phase="running", ready=True,
        lease=IPv4Network("10.1.74.0/24"), network=IPv4Network("10.1.0.0/16"),
        public_ip=IPv4Address("192.168.250.11"), backend="udp",
        keeper=KeeperStatus(state="held", lease_ok=True, renewals=4, renewal_failures=1,
                            last_renewal_at=None, renewal_failing_for=None,
                            lease_expires_in=None),
        watcher=WatcherStatus(state="watching", failures=0, resyncs=2, last_event_at=None,
                              peers=2, retained=0),
        etcd_errors=collections.Counter({"transport": 3, "etcd_401": 1}),
        backend_counters=counters)


def render(status):
    return generate_latest(metrics.metrics_registry(lambda: status, process=False)).decode()


class CollectorTests(unittest.TestCase):
    def test_live_state(self):
        found = samples(render(fake_status()))
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
        """The registry asks for a new snapshot at each scrape."""
        now = [fake_status()]
        registry = metrics.metrics_registry(lambda: now[0], process=False)
        samples(generate_latest(registry).decode())
        before = now[0]
        counters = dict(before.backend_counters, packets_out=15)
        errors = dict(before.etcd_errors, unavailable=2)
        now[0] = replace(before, backend_counters=counters, etcd_errors=errors,
                         keeper=replace(before.keeper, renewals=9),
                         watcher=replace(before.watcher, peers=0))
        found = samples(generate_latest(registry).decode())
        self.assertEqual(sample(found, "flannel_udp_packets_total", direction="out"), 15)
        self.assertEqual(sample(found, "flannel_lease_renewals_total"), 9)
        self.assertEqual(sample(found, "flannel_leases_known"), 0)
        self.assertEqual(sample(found, "flannel_etcd_errors_total", kind="unavailable"), 2)

    def test_daemon_before_it_runs(self):
        """Waiting for config: no watcher, keeper, backend, lease or etcd client yet."""
        found = samples(render(DaemonStatus(phase="waiting-config")))
        self.assertEqual(sample(found, "flannel_ready"), 0)
        self.assertEqual(sample(found, "flannel_leases_known"), 0)
        self.assertEqual(sample(found, "flannel_lease_renewals_total"), 0)
        self.assertFalse([k for k in found if k[0] == "flannel_lease_info"])

    def test_other_backends_counters(self):
        status = replace(fake_status(), backend="vxlan", backend_counters={"fdb_updates": 3})
        found = samples(render(status))
        self.assertEqual(sample(found, "flannel_backend_counter_total", backend="vxlan",
                                name="fdb_updates"), 3)
        self.assertFalse([k for k in found if k[0].startswith("flannel_udp_")])

    def test_alloc_backend_without_counters(self):
        status = replace(fake_status(), backend="alloc", backend_counters=None)
        self.assertFalse([k for k in samples(render(status)) if "backend_counter" in k[0]])

    def test_skipped_leases_by_reason(self):
        from flannel_tw.model.leasecheck import REASONS
        status = replace(fake_status(), skipped={REASONS[0]: 2, "not-a-reason": 5})
        found = samples(render(status))
        self.assertEqual(sample(found, "flannel_leases_skipped_total", reason=REASONS[0]), 2)
        self.assertEqual({dict(k[1])["reason"] for k in found
                          if k[0] == "flannel_leases_skipped_total"}, set(REASONS))


class PageTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_metrics_page(self):
        treq = StubTreq(metrics.metrics_root(fake_status))
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
        treq = StubTreq(metrics.metrics_root(fake_status))
        response = yield treq.get("http://flannel/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertIn("openmetrics", response.headers.getRawHeaders("content-type")[0])
        body = yield response.text()
        self.assertTrue(body.rstrip().endswith("# EOF"))

    def test_service_listens_where_asked(self):
        from twisted.internet import reactor
        svc = metrics.metrics_service(fake_status, reactor, "127.0.0.1", 0)
        self.assertEqual(svc.endpoint._interface, "127.0.0.1")
