"""
flannel_tw.metrics: the collector over fake daemon state, the page via StubTreq,
and a scrape of a real daemon's endpoint in a two-host udp lab after traffic.
"""
import collections
import os
import shutil
import sys
from ipaddress import IPv4Address, IPv4Network

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw import metrics


class Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def fake_daemon():
    from flannel_tw.backend.udp import new_counters
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


def samples(registry_or_text):
    """{(name, frozenset(labels)): value} from exposition text."""
    out = {}
    for family in text_string_to_metric_families(registry_or_text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(found, metric, **labels):
    return found[(metric, frozenset(labels.items()))]


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
        from flannel_tw.backend.udp import DROP_REASONS
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


class LabScrapeTests(unittest.TestCase):
    """Two udp hosts, ping container to container, then scrape host 1's endpoint."""

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to create network namespaces")
        if shutil.which("ip") is None or shutil.which("ping") is None:
            raise unittest.SkipTest("needs iproute2 and ping")
        if not os.path.exists("/dev/net/tun"):
            raise unittest.SkipTest("needs /dev/net/tun for the udp backend")

    def test_scrape_after_traffic(self):
        from flannel_tw.lab import run as labrun
        from flannel_tw.lab.topology import Lab
        lab = Lab()
        self.addCleanup(lab.teardown)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lab.add_switch()
        for i in (1, 2):
            lab.add_host(i)
        url = labrun.start_etcd(lab, workdir,
                                '{"Network": "10.33.0.0/16", "Backend": {"Type": "udp"}}')
        procs = {}
        for i in (1, 2):
            os.makedirs(os.path.join(workdir, "h%d" % i))
            argv = labrun.daemon_argv(workdir, i, url, lab.host_ip(i))
            argv += ["--metrics-port=9086", "--metrics-ip=127.0.0.1"]
            procs[i] = lab.spawn(lab.host_ns(i), argv, os.path.join(workdir, "h%d.out" % i),
                                 env=labrun._child_env(), cwd=workdir)
        labrun.wait_subnet_files(workdir, procs, timeout=60)
        for i in (1, 2):
            lab.add_container(i, labrun.subnet_file(workdir, i))
        results = labrun.ping_matrix(lab, [1, 2], settle=20)
        self.assertTrue(all(results.values()), results)

        code = ("import urllib.request as u; "
                "print(u.urlopen('http://127.0.0.1:9086/metrics', timeout=5).read().decode())")
        text = lab.exec(lab.host_ns(1), [sys.executable, "-c", code]).stdout
        found = samples(text)
        self.assertEqual(sample(found, "flannel_ready"), 1)
        self.assertEqual(sample(found, "flannel_leases_known"), 1)
        for name in ("flannel_udp_packets_total", "flannel_udp_bytes_total",
                     "flannel_udp_tun_packets_total"):
            for direction in ("in", "out"):
                self.assertGreater(sample(found, name, direction=direction), 0,
                                   (name, direction))
        self.assertEqual(sample(found, "flannel_udp_dropped_packets_total",
                                reason="spoofed-source"), 0)
        info = [k for k in found if k[0] == "flannel_lease_info"]
        self.assertEqual(len(info), 1)
        self.assertIn(("public_ip", str(lab.host_ip(1))), info[0][1])
