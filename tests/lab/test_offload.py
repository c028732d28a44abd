"""The udp backend's offloaded mode (flannel_tw.backend.udp.offload): vnet headers, user-space

The lab tests (OffloadLabTests); the whole description is in tests/unit/test_offload.py."""

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

from twisted.trial.unittest import TestCase

from flannel_tw.testing import skips
from flannel_tw.testing.overlay import TCP_SINK, TCP_SOURCE, read_text, wait_for


METRICS_PORT = 9187


class OffloadLabTests(TestCase):
    """Two hosts in the lab with real daemons; TCP data checked end to end."""

    timeout = 120

    def setUp(self):
        skips.require(root=True, tun=True, tools=("ip",), etcd=True)

    def build(self, env2=None):
        from flannel_tw.tools.lab.run import (
            _child_env, daemon_argv, start_etcd, subnet_file, wait_subnet_files)
        from flannel_tw.tools.lab.topology import Lab
        self.workdir = tempfile.mkdtemp(prefix="flannel-tw-offload-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        lab = self.lab = Lab()
        self.addCleanup(lab.teardown)
        lab.add_switch()
        procs = {}
        self.etcd = start_etcd(lab, self.workdir, json.dumps(
            {"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}))
        for i, extra in ((1, {}), (2, env2 or {})):
            lab.add_host(i)
            os.makedirs(os.path.join(self.workdir, "h%d" % i))
            env = _child_env()
            env.update(extra)
            argv = daemon_argv(self.workdir, i, self.etcd, lab.host_ip(i)) + [
                "--metrics-port=%d" % METRICS_PORT, "--metrics-ip=%s" % lab.host_ip(i)]
            procs[i] = lab.spawn(lab.host_ns(i), argv,
                                 os.path.join(self.workdir, "h%d.out" % i), env=env,
                                 cwd=self.workdir)
        wait_subnet_files(self.workdir, procs, 60)
        for i in (1, 2):
            lab.add_container(i, subnet_file(self.workdir, i))
        deadline = time.monotonic() + 30
        for a, b in ((1, 2), (2, 1)):
            while not lab.ping(lab.containers[a].ns, lab.containers[b].addr, 1, 1):
                self.assertLess(time.monotonic(), deadline, "containers cannot reach each other")

    def leases(self):
        cp = self.lab.exec(self.lab.switch_ns, [sys.executable, "-c",
                           "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                           self.etcd + "/v2/keys/coreos.com/network/subnets"])
        nodes = json.loads(cp.stdout)["node"]["nodes"]
        return {json.loads(n["value"])["PublicIP"]: n["value"] for n in nodes}

    def counter(self, i, name, metric="flannel_backend_counter_total", label="backend=\"udp\",name"):
        """A udp backend counter of host i's daemon, from its metrics endpoint."""
        cp = self.lab.exec(self.lab.host_ns(i), [
            sys.executable, "-c",
            "import urllib.request,sys;print(urllib.request.urlopen(sys.argv[1]).read().decode())",
            "http://%s:%d/metrics" % (self.lab.host_ip(i), METRICS_PORT)])
        want = '%s{%s="%s"}' % (metric, label, name)
        for line in cp.stdout.splitlines():
            if line.startswith(want):
                return float(line.split()[-1])
        self.fail("no %s in the metrics of h%d:\n%s" % (want, i, cp.stdout))

    def reassembled(self, i):
        cp = self.lab.exec(self.lab.host_ns(i), ["cat", "/proc/net/snmp"])
        lines = [l.split() for l in cp.stdout.splitlines() if l.startswith("Ip:")]
        return int(dict(zip(lines[0], lines[1]))["ReasmOKs"])

    def transfer(self, src, dst, size=4 << 20, port=5555):
        path = os.path.join(self.workdir, "data-%d-%d" % (src, dst))
        data = os.urandom(size)
        with open(path, "wb") as f:
            f.write(data)
        c_src, c_dst = self.lab.containers[src], self.lab.containers[dst]
        log = os.path.join(self.workdir, "sink-%d.log" % port)
        sink = self.lab.spawn(c_dst.ns, [sys.executable, "-c", TCP_SINK, str(port)], log)
        wait_for(lambda: "listening" in read_text(log) or sink.poll() is not None, 30)
        self.assertIn("listening", read_text(log), "the TCP sink did not start")
        cp = self.lab.exec(c_src.ns, [sys.executable, "-c", TCP_SOURCE, str(c_dst.addr),
                                      str(port), path], timeout=90)
        sink.wait(30)
        # the sink answers "<sha256> <bytes> <peer address>"
        self.assertEqual(cp.stdout.split()[:2], [hashlib.sha256(data).hexdigest(), str(size)])

    def test_offload_pair(self):
        self.build()
        values = self.leases()
        for i in (1, 2):
            self.assertEqual(values[str(self.lab.host_ip(i))],
                             '{"PublicIP":"%s","BackendData":{"FlannelTW":{"Offload":2}}}'
                             % self.lab.host_ip(i))
        before = self.reassembled(2), self.reassembled(1)
        self.transfer(1, 2)
        self.transfer(2, 1, port=5556)
        # super-packets crossed the underlay as frames of MTU-sized datagrams: many
        # frames each way, and no IP fragment to reassemble on either host
        for i in (1, 2):
            self.assertGreater(self.counter(i, "frames_out"), 10)
            self.assertGreater(self.counter(i, "frames_in"), 10)
            self.assertEqual(self.counter(i, "incomplete-frame",
                                          "flannel_udp_dropped_packets_total", "reason"), 0)
            # the kernel's own headers pass the receiver's check
            self.assertEqual(self.counter(i, "bad-offload",
                                          "flannel_udp_dropped_packets_total", "reason"), 0)
        self.assertEqual((self.reassembled(2), self.reassembled(1)), before)

    def test_mixed_with_plain_peer(self):
        """h2 runs with offload off: its lease is flanneld's, and so is the wire."""
        self.build(env2={"FLANNEL_TW_UDP_OFFLOAD": "0"})
        values = self.leases()
        self.assertEqual(values[str(self.lab.host_ip(2))],
                         '{"PublicIP":"%s"}' % self.lab.host_ip(2))
        self.assertIn("FlannelTW", values[str(self.lab.host_ip(1))])
        before = self.reassembled(2), self.reassembled(1)
        self.transfer(1, 2)
        self.transfer(2, 1, port=5556)
        # every datagram fitted the underlay MTU: nothing was reassembled on either host
        self.assertEqual((self.reassembled(2), self.reassembled(1)), before)
