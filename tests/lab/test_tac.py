"""
tac/flannel-udp.tac and tac/flannel-vxlan.tac run with ``twistd -ny`` in a lab host
namespace against a real etcd in the switch namespace (as tests/lab/test_process.py
does for tac/flannel.tac): subnet.env written, the tac's defaults in effect.
"""
import json
import os
import signal
import sys

from twisted.trial import unittest

from flannel_tw.tools.lab import run as labrun
from flannel_tw.tools.lab.topology import Lab
from flannel_tw.testing import skips
from flannel_tw.testing.lab_process import wait_for_subnet_env


class TacTests(unittest.TestCase):
    def start_lab(self, config):
        skips.require_lab()
        self.lab = Lab()
        self.addCleanup(self.lab.teardown)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.lab.add_switch()
        self.lab.add_host(1)
        self.etcd_url = labrun.start_etcd(self.lab, self.workdir, json.dumps(config))

    def run_tac(self, name, **env_extra):
        """Start ``twistd -ny tac/<name>`` in host 1; returns (process, stdout log, subnet file)."""
        subnet_file = os.path.join(self.workdir, "run", "subnet.env")
        env = labrun._child_env()
        for k in list(env):
            if k.startswith("FLANNELD_"):
                del env[k]
        env.update(FLANNELD_ETCD_ENDPOINTS=self.etcd_url,
                   FLANNELD_IFACE=str(self.lab.host_ip(1)),
                   FLANNELD_SUBNET_FILE=subnet_file)
        env.update(env_extra)
        log = os.path.join(self.workdir, name + ".out")
        tac = os.path.join(labrun.repo_root(), "tac", name)
        proc = self.lab.spawn(self.lab.host_ns(1), labrun.TWISTD + [
            "--nodaemon", "--pidfile=", "-y", tac], log, env=env, cwd=self.workdir)
        return proc, log, subnet_file

    def wait_for(self, path, proc, log, timeout=30):
        return wait_for_subnet_env(self, path, proc, log, timeout, what="twistd")

    def get(self, url):
        code = ("import sys, urllib.request as u; "
                "print(u.urlopen(sys.argv[1], timeout=5).read().decode())")
        return self.lab.exec(self.lab.host_ns(1), [sys.executable, "-c", code, url]).stdout

    def stop(self, proc, log):
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        self.assertIn(code, (0, -signal.SIGTERM), open(log).read())
        self.assertIn("Exiting cleanly", open(log).read())

    def test_udp_tac(self):
        self.start_lab({"Network": "10.8.0.0/16", "Backend": {"Type": "udp"}})
        proc, log, subnet_file = self.run_tac("flannel-udp.tac")
        env = self.wait_for(subnet_file, proc, log)
        self.assertEqual(env["FLANNEL_NETWORK"], "10.8.0.0/16")
        self.assertEqual(env["FLANNEL_MTU"], "1472")      # udp: 1500 - 28
        # the tac's defaults: /readyz and /metrics on 127.0.0.1 inside the host
        self.assertEqual(self.get("http://127.0.0.1:8471/readyz"), "flanneld is ready\n")
        metrics = self.get("http://127.0.0.1:9086/metrics")
        self.assertIn('flannel_udp_packets_total{direction="out"}', metrics)
        self.assertIn("flannel_ready 1.0", metrics)
        # text logs (its default)
        self.assertIn("[flannel_tw.daemon.FlannelDaemon#info] Wrote", open(log).read())
        self.stop(proc, log)

    def test_environment_beats_the_tac_defaults(self):
        self.start_lab({"Network": "10.8.0.0/16", "Backend": {"Type": "alloc"}})
        proc, log, subnet_file = self.run_tac("flannel-udp.tac", FLANNELD_METRICS_PORT="0",
                                              FLANNELD_HEALTHZ_PORT="8472",
                                              FLANNELD_LOG_FORMAT="json")
        env = self.wait_for(subnet_file, proc, log)
        self.assertEqual(env["FLANNEL_MTU"], "1500")      # alloc: no device
        self.assertEqual(self.get("http://127.0.0.1:8472/readyz"), "flanneld is ready\n")
        self.stop(proc, log)
        events = [json.loads(line) for line in open(log) if line.strip()]
        texts = [e["msg"] for e in events]
        self.assertTrue(any(t.startswith("Wrote ") for t in texts), texts)
        self.assertFalse(any("9086" in t for t in texts))

    def test_vxlan_tac_logs_json(self):
        """The vxlan tac with whatever backend etcd names (alloc here): JSON lines."""
        self.start_lab({"Network": "10.9.0.0/16", "Backend": {"Type": "alloc"}})
        proc, log, subnet_file = self.run_tac("flannel-vxlan.tac")
        env = self.wait_for(subnet_file, proc, log)
        self.assertEqual(env["FLANNEL_NETWORK"], "10.9.0.0/16")
        self.assertIn("flannel_ready 1.0", self.get("http://127.0.0.1:9086/metrics"))
        self.stop(proc, log)
        events = [json.loads(line) for line in open(log) if line.strip()]
        self.assertTrue(events)
        wrote = [e for e in events if e["msg"].startswith("Wrote ")]
        self.assertEqual(wrote[0]["path"], subnet_file)
        self.assertEqual(wrote[0]["level"], "info")

    def test_vxlan_tac_with_vxlan_backend(self):
        from flannel_tw.backend.registry import FACTORIES
        if "vxlan" not in FACTORIES:
            raise unittest.SkipTest("this build has no vxlan backend yet")
        self.start_lab({"Network": "10.9.0.0/16", "Backend": {"Type": "vxlan"}})
        proc, log, subnet_file = self.run_tac("flannel-vxlan.tac")
        env = self.wait_for(subnet_file, proc, log)
        self.assertEqual(env["FLANNEL_MTU"], "1450")      # vxlan: 1500 - 50
        links = self.lab.exec(self.lab.host_ns(1), ["ip", "-d", "link", "show", "flannel.1"]).stdout
        self.assertIn("vxlan id 1", links)
        self.stop(proc, log)
