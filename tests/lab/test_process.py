"""``twistd -n flannel`` and ``twistd -ny tac/flannel.tac`` as real processes, each in a
host namespace of the lab, against a real etcd in the lab's switch namespace
(alloc backend: these tests are about the control plane, not the data path)."""

import json
import os
import signal
import sys
import time

from twisted.trial import unittest

from flannel_tw.tools.lab import run as labrun
from flannel_tw.tools.lab.topology import Lab
from flannel_tw.testing.lab_process import CONFIG, wait_for_subnet_env
from flannel_tw.testing import skips


class ProcessTests(unittest.TestCase):
    def setUp(self):
        skips.require_lab()
        self.lab = Lab()
        self.addCleanup(self.lab.teardown)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.lab.add_switch()
        self.lab.add_host(1)
        self.etcd_url = labrun.start_etcd(self.lab, self.workdir, CONFIG)

    def etcd(self, method, key):
        """A v2 request made from inside the switch namespace (never via the root one)."""
        code = ("import json, sys, urllib.request as u; "
                "r = u.Request(sys.argv[1], method=sys.argv[2]); "
                "print(u.urlopen(r, timeout=5).read().decode())")
        cp = self.lab.exec(self.lab.switch_ns, [sys.executable, "-c", code,
                                                self.etcd_url + "/v2/keys" + key, method])
        return json.loads(cp.stdout)

    def wait_for(self, path, proc, log, timeout=30):
        return wait_for_subnet_env(self, path, proc, log, timeout, what="daemon")

    def stop(self, proc):
        """
        SIGTERM, then the exit status: twistd stops the reactor cleanly and re-raises
        the signal so that the status reports it (systemd counts that as a clean stop).
        The daemon's own clean-stop message is checked too.
        """
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        logs = "".join(open(os.path.join(self.workdir, name)).read()
                       for name in os.listdir(self.workdir) if name.endswith((".log", ".out")))
        self.assertIn("Exiting cleanly", logs)
        return 0 if code == -signal.SIGTERM else code

    def test_twistd_flannel_writes_subnet_env_and_stops_cleanly(self):
        log = os.path.join(self.workdir, "h1.out")
        argv = labrun.daemon_argv(self.workdir, 1, self.etcd_url, self.lab.host_ip(1))
        argv.append("--healthz-port=8471")
        os.makedirs(os.path.join(self.workdir, "h1"))
        proc = self.lab.spawn(self.lab.host_ns(1), argv, log, env=labrun._child_env())
        env = self.wait_for(labrun.subnet_file(self.workdir, 1), proc, log)
        self.assertEqual(env["FLANNEL_NETWORK"], "10.7.0.0/16")
        self.assertEqual(env["FLANNEL_MTU"], "1500")
        self.assertEqual(env["FLANNEL_IPMASQ"], "false")
        subnet = env["FLANNEL_SUBNET"]
        self.assertTrue(subnet.startswith("10.7.") and subnet.endswith(".1/24"), subnet)
        key = "/coreos.com/network/subnets/%s-24" % subnet.split("/")[0].rsplit(".", 1)[0]
        key = key.replace("-24", ".0-24")
        node = self.etcd("GET", key)["node"]
        self.assertEqual(node["value"], '{"PublicIP":"%s"}' % self.lab.host_ip(1))
        self.assertGreater(node["ttl"], 86000)
        # /healthz tells the truth: lease held
        code = ("import urllib.request as u; "
                "print(u.urlopen('http://127.0.0.1:8471/healthz', timeout=5).read().decode())")
        health = json.loads(self.lab.exec(self.lab.host_ns(1), [sys.executable, "-c", code]).stdout)
        self.assertTrue(health["healthy"], health)
        self.assertEqual(health["lease"], key.rsplit("/", 1)[1].replace("-", "/"))
        # SIGTERM: exit 0, lease left in place (flanneld never deletes it)
        self.assertEqual(self.stop(proc), 0)
        self.assertEqual(self.etcd("GET", key)["node"]["value"],
                         '{"PublicIP":"%s"}' % self.lab.host_ip(1))

    def test_tac_file_takes_settings_from_environment(self):
        subnet_file = os.path.join(self.workdir, "tac", "subnet.env")
        env = labrun._child_env()
        env.update(FLANNELD_ETCD_ENDPOINTS=self.etcd_url, FLANNELD_IFACE=str(self.lab.host_ip(1)),
                   FLANNELD_SUBNET_FILE=subnet_file, FLANNELD_IP_MASQ="true")
        log = os.path.join(self.workdir, "tac.out")
        tac = os.path.join(labrun.repo_root(), "tac", "flannel.tac")
        proc = self.lab.spawn(self.lab.host_ns(1), labrun.TWISTD + [
            "--nodaemon", "--pidfile=", "-y", tac], log, env=env, cwd=self.workdir)
        written = self.wait_for(subnet_file, proc, log)
        self.assertEqual(written["FLANNEL_IPMASQ"], "true")
        self.assertEqual(written["FLANNEL_NETWORK"], "10.7.0.0/16")
        self.assertEqual(self.stop(proc), 0)

    def test_unknown_backend_keeps_waiting_then_runs_when_fixed(self):
        put = ("import sys, urllib.parse as p, urllib.request as u; "
               "r = u.Request(sys.argv[1], data=p.urlencode({'value': sys.argv[2]}).encode(), "
               "method='PUT'); u.urlopen(r, timeout=5).read()")
        self.lab.exec(self.lab.switch_ns, [
            sys.executable, "-c", put, self.etcd_url + "/v2/keys/coreos.com/network/config",
            '{"Network": "10.7.0.0/16", "Backend": {"Type": "no-such"}}'])
        log = os.path.join(self.workdir, "h1.out")
        os.makedirs(os.path.join(self.workdir, "h1"))
        argv = labrun.daemon_argv(self.workdir, 1, self.etcd_url, self.lab.host_ip(1))
        proc = self.lab.spawn(self.lab.host_ns(1), argv, log, env=labrun._child_env())
        daemon_log = os.path.join(self.workdir, "h1.log")
        deadline = time.monotonic() + 20
        while "unknown backend type" not in (open(daemon_log).read()
                                             if os.path.exists(daemon_log) else ""):
            self.assertIsNone(proc.poll(), "daemon exited instead of waiting")
            self.assertLess(time.monotonic(), deadline, "no config error logged")
            time.sleep(0.1)
        self.lab.exec(self.lab.switch_ns, [
            sys.executable, "-c", put, self.etcd_url + "/v2/keys/coreos.com/network/config",
            CONFIG])
        self.wait_for(labrun.subnet_file(self.workdir, 1), proc, log)
        self.assertEqual(self.stop(proc), 0)
