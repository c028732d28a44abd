"""Test helpers (formerly in tests/test_kernel_overlay.py), shared by
tests/lab/test_kernel_overlay.py, tests/lab/test_lease_lab.py.
(No test module imports another: what several need lives here.)"""

import hashlib
import json
import os
import time
from ipaddress import IPv4Interface, IPv4Network

from flannel_tw.host.iptables import forward_rules, masq_rules
from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.tools.lab.run import start_daemons, start_etcd, subnet_file, wait_subnet_files
from flannel_tw.tools.lab.topology import Lab, list_netns, stop_pids
from flannel_tw.testing.overlay import PY, TCP_SINK, TCP_SOURCE, read_text, say, wait_for


NETWORK = "10.5.0.0/16"
SETTLE = 15
RECEIVER = 9
STALE_SUBNET = "10.5.252.0/24"
STALE_MAC = "02:00:00:00:00:01"
ETCD = r"""
import sys, urllib.parse, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
data = urllib.parse.urlencode({"value": sys.argv[3]}).encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(sys.argv[2], data=data, method=sys.argv[1])
try:
    with opener.open(req, timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
"""
# a POST to the v3 JSON gateway (argv: URL PATH BODY); prints the answer
ETCD3 = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(sys.argv[1] + sys.argv[2], data=sys.argv[3].encode(), method="POST")
with opener.open(req, timeout=5) as r:
    print(r.read().decode())
"""


def _rule_lines(rules):
    return ["-A %s %s" % (chain, " ".join(args)) for _, chain, args in rules]


class KernelOverlay:
    """A lab with etcd (config for ``backend`` in the ``keyspace`` "v2" or "v3"),
    daemons with --ip-masq (and --etcd-api=v3 with the v3 keyspace), containers."""

    def __init__(self, testcase, backend, keyspace="v2"):
        self.t = testcase
        self.backend = backend
        self.keyspace = keyspace
        self.lab = lab = Lab()
        testcase.addCleanup(lambda: testcase.assertEqual(
            [n for n in list_netns() if n.startswith(lab.prefix)], []))
        testcase.addCleanup(lab.teardown)
        self.workdir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.workdir)
        self.procs = {}
        self.envs = {}
        lab.add_switch()
        for i in (1, 2, 3, RECEIVER):
            lab.add_host(i)
        config = json.dumps({"Network": NETWORK, "Backend": {"Type": backend}})
        self.etcd_url = start_etcd(lab, self.workdir, config, keyspace=keyspace)

    # -- daemons ------------------------------------------------------------------

    def log(self, i):
        return read_text(os.path.join(self.workdir, "h%d.log" % i))

    def logs(self):
        return "\n".join("--- h%d.log:\n%s" % (i, self.log(i)[-3000:]) for i in sorted(self.procs))

    def runs(self, i):
        return self.log(i).count("Running with lease")

    def start(self, *hosts):
        fresh = [i for i in hosts if i not in self.envs]
        before = {i: self.runs(i) for i in hosts}
        extra = ["--etcd-api=v3"] if self.keyspace == "v3" else []
        procs = start_daemons(self.lab, self.workdir, self.etcd_url, hosts, ip_masq=True,
                              extra=extra)
        self.procs.update(procs)
        envs = wait_subnet_files(self.workdir, procs, 30)
        for i in hosts:
            if not wait_for(lambda: self.runs(i) > before[i] or procs[i].poll() is not None, 30):
                self.t.fail("h%d did not come up:\n%s" % (i, self.logs()))
        self.envs.update(envs)
        for i in fresh:
            self.lab.add_container(i, subnet_file(self.workdir, i))

    def stop(self, i):
        proc = self.procs.pop(i)
        stop_pids([proc.pid], grace=8.0)
        proc.wait(timeout=5)

    def subnet(self, i):
        return IPv4Interface(self.envs[i]["FLANNEL_SUBNET"]).network

    def c(self, i):
        return self.lab.containers[i]

    # -- in namespaces -------------------------------------------------------------

    def sh(self, i, *argv, check=True):
        ns = i if isinstance(i, str) else self.lab.host_ns(i)
        return self.lab.exec(ns, list(argv), check=check).stdout

    def py(self, ns, script, *args, timeout=30, check=True):
        return self.lab.exec(ns, [PY, "-c", script] + [str(a) for a in args],
                             timeout=timeout, check=check)

    def spawn_py(self, ns, name, script, *args, ready=None):
        path = os.path.join(self.workdir, name + ".log")
        proc = self.lab.spawn(ns, [PY, "-u", "-c", script] + [str(a) for a in args], path)
        if ready and not wait_for(lambda: ready in read_text(path) or proc.poll() is not None,
                                  10):
            self.t.fail("%s not ready:\n%s" % (name, read_text(path)))
        return proc, path

    def etcd(self, method, key, value=None):
        url = "http://%s:2379/v2/keys%s/subnets/%s" % (self.lab.gateway, DEFAULT_PREFIX, key)
        args = [method, url] + ([value] if value is not None else [])
        return int(self.py(self.lab.switch_ns, ETCD, *args).stdout.strip())

    def v3(self, path, body):
        """A request to etcd's v3 JSON gateway, made from the switch namespace."""
        out = self.py(self.lab.switch_ns, ETCD3, "http://%s:2379" % self.lab.gateway, path,
                      json.dumps(body)).stdout
        return json.loads(out)

    def assert_reaches(self, ns, addr, settle=SETTLE):
        ok = wait_for(lambda: self.lab.ping(ns, addr, count=1, timeout=1), settle, interval=0.2)
        if not ok:
            self.t.fail("no ping reply from %s to %s within %ss\n%s" % (ns, addr, settle,
                                                                       self.logs()))

    def tcp(self, src, dst, port, size=4 * 1024 * 1024):
        """size random bytes over TCP from container src to container dst; sha256 checked."""
        data = os.urandom(size)
        path = os.path.join(self.workdir, "payload-%d.bin" % port)
        with open(path, "wb") as f:
            f.write(data)
        _, sink_log = self.spawn_py(self.c(dst).ns, "sink%d" % port, TCP_SINK, port,
                                    ready="listening")
        started = time.monotonic()
        cp = self.py(self.c(src).ns, TCP_SOURCE, self.c(dst).addr, port, path, timeout=60,
                     check=False)
        elapsed = time.monotonic() - started
        self.t.assertEqual(cp.returncode, 0, cp.stderr + read_text(sink_log))
        # hash, byte count and the peer address the sink saw: no masquerading inside
        self.t.assertEqual(cp.stdout.split(), [hashlib.sha256(data).hexdigest(), str(size),
                                               str(self.c(src).addr)])
        say("%s: tcp c%d->c%d %d bytes in %.2fs, sha256 ok", self.backend, src, dst, size,
            elapsed)

    # -- what the kernel holds -----------------------------------------------------

    def mac(self, i):
        out = self.sh(i, "ip", "-o", "link", "show", "flannel.1")
        return out.split("link/ether ")[1].split()[0]

    def entries(self, i):
        """The overlay entries of host i, as sorted text lines."""
        if self.backend == "vxlan":
            routes = self.sh(i, "ip", "route", "show", "dev", "flannel.1").splitlines()
            neigh = self.sh(i, "ip", "neigh", "show", "dev", "flannel.1").splitlines()
            fdb = [l for l in self.sh(i, "bridge", "fdb", "show", "dev",
                                      "flannel.1").splitlines() if " dst " in l]
            return sorted(l.strip() for l in routes + neigh + fdb)
        net = IPv4Network(NETWORK)
        out = []
        for line in self.sh(i, "ip", "route").splitlines():
            dst = line.split()[0]
            if "/" in dst and IPv4Network(dst).subnet_of(net) and " via " in line:
                out.append(line.strip())
        return sorted(out)

    def expected(self, i, peers):
        lines = []
        for j in peers:
            s = self.subnet(j)
            if self.backend == "vxlan":
                mac = self.mac(j)
                lines += ["%s via %s onlink" % (s, s.network_address),
                          "%s lladdr %s PERMANENT" % (s.network_address, mac),
                          "%s dst %s self permanent" % (mac, self.lab.host_ip(j))]
            else:
                lines.append("%s via %s dev eth0" % (s, self.lab.host_ip(j)))
        return sorted(lines)

    def assert_entries(self, i, peers):
        want = self.expected(i, peers)
        got = wait_for(lambda: self.entries(i) == want and want, SETTLE, interval=0.2)
        if not got:
            self.t.assertEqual(self.entries(i), want, "h%d\n%s" % (i, self.logs()))

    def assert_iptables(self, i):
        nat = [l for l in self.sh(i, "iptables", "-t", "nat", "-S", "POSTROUTING").splitlines()
               if l.startswith("-A")]
        fwd = [l for l in self.sh(i, "iptables", "-S", "FORWARD").splitlines()
               if l.startswith("-A")]
        self.t.assertEqual(nat, _rule_lines(masq_rules(NETWORK, self.subnet(i))))
        self.t.assertEqual(fwd, _rule_lines(forward_rules(NETWORK)))

    def add_stale(self, i):
        """Entries for a lease that does not exist, as an earlier run could leave them."""
        s = IPv4Network(STALE_SUBNET)
        if self.backend == "vxlan":
            self.sh(i, "ip", "route", "add", str(s), "via", str(s.network_address), "dev",
                    "flannel.1", "onlink")
            self.sh(i, "ip", "neigh", "add", str(s.network_address), "lladdr", STALE_MAC,
                    "dev", "flannel.1", "nud", "permanent")
            self.sh(i, "bridge", "fdb", "add", STALE_MAC, "dev", "flannel.1", "dst",
                    "192.168.250.99", "self", "permanent")
        else:
            self.sh(i, "ip", "route", "add", str(s), "via", "192.168.250.99", "dev", "eth0")
        self.t.assertIn(STALE_SUBNET, "\n".join(self.entries(i)))
