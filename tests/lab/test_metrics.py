"""flannel_tw.observe.metrics: the collector over fake daemon state, the page via StubTreq,
and a scrape of a real daemon's endpoint in a two-host udp lab after traffic."""

import os
import sys

from twisted.trial import unittest

from flannel_tw.testing.metrics_samples import sample, samples
from flannel_tw.testing import skips
from flannel_tw.testing.overlay import lab_with_etcd


class LabScrapeTests(unittest.TestCase):
    """Two udp hosts, ping container to container, then scrape host 1's endpoint."""

    def setUp(self):
        skips.require(root=True, tools=("ip", "ping"), tun=True)

    def test_scrape_after_traffic(self):
        from flannel_tw.tools.lab import run as labrun
        lab, workdir, url = lab_with_etcd(
            self, '{"Network": "10.33.0.0/16", "Backend": {"Type": "udp"}}')
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
