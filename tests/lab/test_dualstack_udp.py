"""
Dual-stack udp overlays on real kernels (issue 15): a real etcd, one ``twistd flannel``
per host namespace with a config that has EnableIPv6, a dual-stack container behind each
host (flannel_tw.testing.dualstack); every container pings every other over IPv4 and
IPv6, in plain and in offloaded mode. The IPv6 packets travel inside the same IPv4 UDP
datagrams (port 8285, the peers' PublicIP) as the IPv4 ones.

All traffic stays inside the namespaces each test makes; every lab is torn down in a
cleanup, and the cleanup checks that no namespace is left.
"""
import os
import re

from twisted.trial import unittest

from flannel_tw.testing import skips
from flannel_tw.testing.dualstack import dualstack_config, etcd_get, make_dualstack, no_crash
from flannel_tw.testing.overlay import PY, read_text, wait_for

SKIP = skips.missing(root=True, tools=("ip", "ping"), etcd=True)
HOSTS = [1, 2, 3]
METRICS_PORT = 9187


class UdpDualStackTests(unittest.TestCase):
    skip = SKIP

    def check(self, offload):
        ds = make_dualstack(self, HOSTS, config=dualstack_config(
            "udp", backend_options={"Offload": offload}),
            extra=("--metrics-port=%d" % METRICS_PORT, "--metrics-ip=0.0.0.0"))
        results = ds.assert_matrix(families=(4, 6))
        self.assertEqual(len(results), 12)
        h1 = ds.lab.host_ns(1)
        for j in (2, 3):                # the host reaches the remote containers too
            ds.assert_reaches(h1, ds.c(j).addr6)
        # flannel0: <v6 subnet addr>/128 and the IPv6Network route, beside the v4 ones
        global6 = ds.sh(h1, "ip", "-6", "addr", "show", "dev", "flannel0", "scope", "global")
        self.assertEqual(re.findall(r"inet6 (\S+)", global6),
                         ["%s/128" % ds.subnet6(1).network_address])
        self.assertIn("fd00:10:5::/48 dev flannel0", ds.sh(h1, "ip", "-6", "route"))
        # the outer packets stay IPv4: the socket is the IPv4 one on 8285
        self.assertIn("%s:8285" % ds.lab.host_ip(1), ds.sh(h1, "ss", "-uanp"))
        # our leases say the udp backend carries IPv6
        leases = etcd_get(ds, None)
        key1 = "%s-%d&%s-%d" % (ds.subnet(1).network_address, ds.subnet(1).prefixlen,
                                ds.subnet6(1).network_address, ds.subnet6(1).prefixlen)
        self.assertIn(key1, leases, sorted(leases))
        self.assertEqual(leases[key1]["BackendV6Data"], {"FlannelTW": {"UDPv6": 1}})
        self.assertIn("offload %s" % ("on" if offload else "off"), ds.log(1))
        no_crash(self, ds, HOSTS)
        return ds

    def test_three_hosts_both_families_on_etcd_v3(self):
        """The config and the leases in etcd's v3 keyspace (--etcd-api=v3)."""
        ds = make_dualstack(self, HOSTS, config=dualstack_config("udp"), keyspace="v3")
        self.assertEqual(len(ds.assert_matrix(families=(4, 6))), 12)
        for i in HOSTS:
            self.assertIn("Using etcd's v3 keyspace", ds.log(i))
        no_crash(self, ds, HOSTS)

    def counter(self, ds, i, name, metric="flannel_backend_counter_total", label="name"):
        """A udp backend counter of host i's daemon, from its metrics endpoint."""
        text = ds.py(ds.lab.host_ns(i), "import urllib.request, sys\n"
                     "print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                     "http://%s:%d/metrics" % (ds.lab.host_ip(i), METRICS_PORT)).stdout
        want = '%s{backend="udp",%s="%s"}' % (metric, label, name)
        if metric != "flannel_backend_counter_total":
            want = '%s{%s="%s"}' % (metric, label, name)
        for line in text.splitlines():
            if line.startswith(want):
                return float(line.split()[-1])
        self.fail("no %s in the metrics of h%d:\n%s" % (want, i, text))

    def test_three_hosts_both_families_plain(self):
        ds = self.check(offload=False)
        # IPv6 to a subnet nobody holds: ICMPv6 no route, from flannel0's address
        out = ds.lab.exec(ds.c(1).ns, ["ping", "-6", "-n", "-c", "1", "-W", "2",
                                       "fd00:10:5:ffff::1"], check=False).stdout
        self.assertIn("From %s" % ds.subnet6(1).network_address, out)
        self.assertIn("No route", out)
        self.assertGreaterEqual(self.counter(ds, 1, "no-route", "flannel_udp_dropped_packets_total",
                                             "reason"), 1)

    def test_three_hosts_both_families_offload(self):
        ds = self.check(offload=True)
        # TCP over IPv6 between two containers, bytes intact: TCPv6 super-packets
        # (TUN_F_TSO6) cross the underlay as frames, received whole on the other side
        script = (
            "import socket, sys, hashlib\n"
            "data = bytes(range(256)) * 4096\n"
            "s = socket.create_connection((sys.argv[1], 7000), timeout=10)\n"
            "s.sendall(data); s.shutdown(socket.SHUT_WR)\n"
            "print(hashlib.sha256(data).hexdigest())\n")
        server = (
            "import socket, hashlib\n"
            "l = socket.socket(socket.AF_INET6); l.bind(('::', 7000)); l.listen(1)\n"
            "l.settimeout(20); c, _ = l.accept(); h = hashlib.sha256()\n"
            "while True:\n"
            "    b = c.recv(65536)\n"
            "    if not b: break\n"
            "    h.update(b)\n"
            "print(h.hexdigest())\n")
        frames = self.counter(ds, 1, "frames_out"), self.counter(ds, 2, "frames_in")
        out = os.path.join(ds.workdir, "tcp6-server.out")
        srv = ds.lab.spawn(ds.c(2).ns, [PY, "-c", server], out)
        listening = wait_for(lambda: ":7000" in ds.sh(ds.c(2).ns, "ss", "-6ltn"), 10)
        self.assertTrue(listening, read_text(out))
        sent = ds.py(ds.c(1).ns, script, ds.c(2).addr6, timeout=30).stdout.strip()
        srv.wait(timeout=30)
        self.assertEqual(read_text(out).strip(), sent)
        self.assertGreater(self.counter(ds, 1, "frames_out") - frames[0], 5)
        self.assertGreater(self.counter(ds, 2, "frames_in") - frames[1], 5)
        for i in (1, 2):
            for bad in ("bad-offload", "bad-header", "incomplete-frame"):
                self.assertEqual(self.counter(ds, i, bad, "flannel_udp_dropped_packets_total",
                                              "reason"), 0, (i, bad))
