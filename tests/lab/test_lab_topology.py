"""Tests for flannel_tw.tools.lab.topology on real kernels: namespaces, a bridge, veths.
All traffic stays inside the namespaces each test makes."""

import json
import os
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network

from twisted.trial import unittest

from flannel_tw.tools.lab.topology import (
    Container, Lab, LabError, cleanup_stale, list_netns, parse_subnet_env)
from flannel_tw.testing import skips


def _ip_json(ns, *args):
    out = subprocess.run(["ip", "-n", ns, "-j"] + list(args), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TopologyTests(unittest.TestCase):
    skip = skips.missing(root=True, tools=("ip",))

    def make_lab(self, **kw):
        lab = Lab(**kw)
        self.addCleanup(lab.teardown)
        return lab

    def write_env(self, subnet="10.5.72.1/24", mtu=1472):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=%s\n"
                    "FLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n" % (subnet, mtu))
        return path

    def lab_namespaces(self, lab):
        return [n for n in list_netns() if n.startswith(lab.prefix)]

    def test_names(self):
        lab = self.make_lab()
        self.assertRegex(lab.prefix, r"^fl[0-9a-f]{4}$")
        self.assertNotEqual(lab.prefix, Lab().prefix)
        for name in [lab.switch_ns, lab.host_ns(99), lab.container_ns(99)]:
            self.assertLessEqual(len(name), 15)
            self.assertTrue(name.startswith(lab.prefix))
        self.assertEqual(lab.gateway, IPv4Address("192.168.250.1"))
        self.assertEqual(lab.host_ip(3), IPv4Address("192.168.250.13"))
        self.assertEqual(Lab(subnet="10.77.0.0/24").host_ip(1),
                         IPv4Address("10.77.0.11"))

    def test_hosts_ping_on_underlay(self):
        lab = self.make_lab()
        sw = lab.add_switch()
        h1, h2 = lab.add_host(1), lab.add_host(2)
        self.assertEqual((sw, h1, h2), (lab.prefix + "sw", lab.prefix + "h1",
                                        lab.prefix + "h2"))
        self.assertTrue(lab.ping(h1, lab.host_ip(2)))
        self.assertTrue(lab.ping(h2, lab.host_ip(1)))
        self.assertTrue(lab.ping(h1, lab.gateway))
        self.assertTrue(lab.ping(sw, lab.host_ip(2)))
        # the host's interface as the daemon will see it
        (eth0,) = _ip_json(h1, "addr", "show", "dev", "eth0")
        self.assertEqual(eth0["mtu"], 1500)
        self.assertIn("UP", eth0["flags"])
        inet = [a for a in eth0["addr_info"] if a["family"] == "inet"]
        self.assertEqual([(a["local"], a["prefixlen"]) for a in inet],
                         [("192.168.250.11", 24)])
        routes = _ip_json(h1, "route", "show", "default")
        self.assertEqual([(r["dst"], r["gateway"], r["dev"]) for r in routes],
                         [("default", "192.168.250.1", "eth0")])
        # the switch's peer ports sit on br0
        ports = _ip_json(sw, "link", "show", "master", "br0")
        self.assertEqual(sorted(p["ifname"] for p in ports), ["h1", "h2"])

    def test_host_iface_lookup(self):
        """The daemon's interface choice finds eth0 in a lab host."""
        from pyroute2 import NetNS
        from flannel_tw.kernel.iface import lookup_ext_iface
        lab = self.make_lab()
        lab.add_switch()
        ns = lab.add_host(4)
        ipr = NetNS(ns)
        self.addCleanup(ipr.close)
        got = lookup_ext_iface(ipr=ipr)
        self.assertEqual((got.name, str(got.addr), got.mtu),
                         ("eth0", "192.168.250.14", 1500))

    def test_container_from_subnet_env(self):
        lab = self.make_lab()
        lab.add_switch()
        h1 = lab.add_host(1)
        lab.add_host(2)
        c = lab.add_container(1, self.write_env("10.5.72.1/24", 1472))
        self.assertEqual(c, Container(
            ns=lab.prefix + "h1c", host=1, addr=IPv4Address("10.5.72.2"),
            gateway=IPv4Address("10.5.72.1"),
            subnet=IPv4Network("10.5.72.0/24"), mtu=1472))
        (eth0,) = _ip_json(c.ns, "addr", "show", "dev", "eth0")
        self.assertEqual(eth0["mtu"], 1472)
        self.assertEqual([(a["local"], a["prefixlen"]) for a in eth0["addr_info"]
                          if a["family"] == "inet"], [("10.5.72.2", 24)])
        routes = _ip_json(c.ns, "route", "show", "default")
        self.assertEqual([(r["gateway"], r["dev"]) for r in routes],
                         [("10.5.72.1", "eth0")])
        (docker0,) = _ip_json(h1, "addr", "show", "dev", "docker0")
        self.assertEqual(docker0["mtu"], 1472)
        self.assertEqual([(a["local"], a["prefixlen"]) for a in docker0["addr_info"]
                          if a["family"] == "inet"], [("10.5.72.1", 24)])
        fwd = lab.exec(h1, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout
        self.assertEqual(fwd.strip(), "1")
        # local traffic works; the remote host has no route (that is flannel's job)
        self.assertTrue(lab.ping(c.ns, c.gateway))
        self.assertTrue(lab.ping(c.ns, lab.host_ip(1)))
        self.assertTrue(lab.ping(h1, c.addr))
        self.assertFalse(lab.ping(lab.host_ns(2), c.addr, timeout=1))

    def test_exec_and_spawn(self):
        lab = self.make_lab()
        lab.add_switch()
        ns = lab.add_host(1)
        out = lab.exec(ns, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        self.assertIn("192.168.250.11/24", out)
        e = self.assertRaises(LabError, lab.exec, ns, ["ip", "link", "show", "nosuch0"])
        self.assertIn("nosuch0", str(e))
        self.assertEqual(lab.exec(ns, ["false"], check=False).returncode, 1)
        log = self.mktemp()
        p = lab.spawn(ns, [sys.executable, "-c",
                           "import time; print('started', flush=True); time.sleep(300)"],
                      log)
        for _ in range(100):
            if os.path.exists(log) and "started" in open(log).read():
                break
            time.sleep(0.05)
        self.assertIn("started", open(log).read())
        self.assertIn(p.pid, lab.state()["pids"])
        lab.teardown()
        self.assertIsNotNone(p.poll())
        self.assertFalse(_alive(p.pid))

    def test_teardown_removes_everything(self):
        lab = self.make_lab()
        lab.add_switch()
        for i in (1, 2):
            lab.add_host(i)
        lab.add_container(1, self.write_env("10.5.72.1/24"))
        lab.add_container(2, self.write_env("10.5.3.1/24"))
        made = {lab.prefix + n for n in ["sw", "h1", "h2", "h1c", "h2c"]}
        self.assertEqual(set(self.lab_namespaces(lab)), made)
        p = lab.spawn(lab.host_ns(2), ["sleep", "300"], self.mktemp())
        lab.teardown()
        self.assertEqual(self.lab_namespaces(lab), [])
        self.assertFalse(_alive(p.pid))
        lab.teardown()   # idempotent
        self.assertEqual(self.lab_namespaces(lab), [])

    def test_teardown_after_failure_mid_setup(self):
        lab = self.make_lab()
        lab.add_switch()
        lab.add_host(1)
        # the kernel refuses this MTU on docker0, after the container namespace
        # and the bridge were made
        self.assertRaises(LabError, lab.add_container, 1,
                          self.write_env("10.5.72.1/24", 99999))
        self.assertIn(lab.prefix + "h1c", self.lab_namespaces(lab))
        # a second host fails half-way: its namespace exists, no veth yet
        lab.switch, switch = lab.prefix + "nosuch", lab.switch
        self.assertRaises(LabError, lab.add_host, 2)
        lab.switch = switch
        self.assertIn(lab.prefix + "h2", self.lab_namespaces(lab))
        lab.teardown()
        self.assertEqual(self.lab_namespaces(lab), [])

    def test_teardown_before_anything(self):
        lab = self.make_lab()
        lab.teardown()
        self.assertRaises(LabError, lab.add_host, 1)

    def test_cleanup_stale(self):
        lab = self.make_lab()
        lab.add_switch()
        ns = lab.add_host(1)
        p = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "300"],
                             start_new_session=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        # a namespace that merely shares the prefix is not the lab's
        other = lab.prefix + "other"
        subprocess.run(["ip", "netns", "add", other], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", other],
                        capture_output=True)
        for _ in range(100):     # wait until sleep is inside the namespace
            if subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split():
                break
            time.sleep(0.05)
        removed = cleanup_stale(lab.prefix)
        self.assertEqual(sorted(removed), sorted([lab.prefix + "sw", ns]))
        self.assertEqual(self.lab_namespaces(lab), [other])
        self.assertIsNotNone(p.wait(timeout=5))


class LabRunTests(unittest.TestCase):
    """``flannel-tw lab`` end to end: real etcd, real daemons, real kernels."""
    skip = skips.missing(root=True, tools=("ip",))

    def test_up_udp_two_hosts(self):
        import contextlib
        import io
        import re
        from flannel_tw.tools.lab import run
        skips.require_etcd()
        out = io.StringIO()
        workdir = self.mktemp()
        with contextlib.redirect_stdout(out):
            rc = run.main(["--hosts", "2", "--backend", "udp", "--timeout", "30",
                           "--workdir", workdir])
        text = out.getvalue()
        prefix = re.search(r"^lab (fl[0-9a-f]{4}):", text, re.M).group(1)
        self.addCleanup(cleanup_stale, prefix)
        self.assertEqual([n for n in list_netns() if n.startswith(prefix)], [])
        self.assertEqual(rc, 0, text + "\n" + "\n".join(
            open(os.path.join(workdir, f)).read()[-2000:]
            for f in sorted(os.listdir(workdir)) if f.endswith(".log")))
        self.assertIn("all 4 pings succeeded", text)
        self.assertNotIn("\u2717", text)
        for i in (1, 2):
            env = parse_subnet_env(os.path.join(workdir, "h%d" % i, "subnet.env"))
            self.assertEqual(env["FLANNEL_MTU"], "1472")
            self.assertIn(IPv4Network(env["FLANNEL_SUBNET"], strict=False),
                          list(IPv4Network("10.5.0.0/16").subnets(8)))
