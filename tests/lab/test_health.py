"""/healthz and /readyz over real HTTP on loopback, driven by a real etcd that goes away

The lab tests (TwistdNotifyTests); the whole description is in tests/integration/test_health.py."""

import json
import os
import shutil
import tempfile
import signal
import sys
import time

from twisted.trial import unittest

from flannel_tw.testing.health_client import notify_socket, received
from flannel_tw.testing import skips


class TwistdNotifyTests(unittest.TestCase):
    """``twistd -n flannel`` as a process in a lab namespace: READY=1, then SIGTERM."""

    timeout = 90

    def test_ready_after_subnet_env_and_clean_sigterm(self):
        from flannel_tw.testing.lab_process import CONFIG as LAB_CONFIG
        from flannel_tw.tools.lab import run as labrun
        from flannel_tw.tools.lab.topology import Lab

        skips.require_lab()
        lab = Lab()
        self.addCleanup(lab.teardown)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(workdir, "h1"))
        lab.add_switch()
        lab.add_host(1)
        etcd_url = labrun.start_etcd(lab, workdir, LAB_CONFIG)
        short = tempfile.mkdtemp(prefix="ftw-")  # sun_path is 108 bytes at most
        self.addCleanup(shutil.rmtree, short, True)
        path = os.path.join(short, "notify")  # a path socket crosses network namespaces
        sock = notify_socket(path)
        self.addCleanup(sock.close)
        env = labrun._child_env()
        env["NOTIFY_SOCKET"] = path
        log = os.path.join(workdir, "h1.out")
        subnet_file = labrun.subnet_file(workdir, 1)
        proc = lab.spawn(lab.host_ns(1), labrun.daemon_argv(workdir, 1, etcd_url,
                                                            lab.host_ip(1)),
                         log, env=env, cwd=workdir)
        deadline = time.monotonic() + 40
        got = []
        while "READY=1" not in got:
            got.extend(received(sock))
            if "READY=1" in got:
                exists_at_ready = os.path.exists(subnet_file)
            self.assertIsNone(proc.poll(), "daemon exited:\n%s" % open(log).read())
            self.assertLess(time.monotonic(), deadline, "no READY=1:\n%s" % open(log).read())
            time.sleep(0.05)
        self.assertEqual(got[-1], "READY=1")
        self.assertEqual(got[0], "STATUS=waiting for network config at %s/coreos.com/network/"
                                 "config" % etcd_url)
        self.assertRegex(got[-2], r"^STATUS=running: subnet 10\.7\.\d+\.0/24 via alloc$")
        self.assertTrue(exists_at_ready)
        subnet = open(subnet_file).read().split("FLANNEL_SUBNET=")[1].split("\n")[0]
        key = "/coreos.com/network/subnets/%s.0-24" % subnet.rsplit(".", 1)[0]

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        self.assertIn(code, (0, -signal.SIGTERM))
        daemon_log = open(os.path.join(workdir, "h1.log")).read()
        self.assertIn("Exiting cleanly; the lease and the data plane stay in place", daemon_log)
        self.assertNotIn("Traceback", daemon_log)
        code = ("import json, sys, urllib.request as u; "
                "print(u.urlopen(sys.argv[1], timeout=5).read().decode())")
        out = lab.exec(lab.switch_ns, [sys.executable, "-c", code,
                                       etcd_url + "/v2/keys" + key]).stdout
        node = json.loads(out)["node"]
        self.assertEqual(node["value"], '{"PublicIP":"%s"}' % lab.host_ip(1))
        self.assertGreater(node["ttl"], 86000)
        self.assertTrue(os.path.exists(subnet_file))
