"""Tests for the dual-stack lab underlay (flannel_tw.tools.lab.topology with subnet6,
``flannel-tw lab --ipv6``) on real kernels. All traffic stays inside the namespaces
each test makes; every lab is torn down in a cleanup."""

import json
import subprocess
from ipaddress import IPv6Address, IPv6Network

from twisted.trial import unittest

from flannel_tw.tools.lab.topology import Lab, LabError, list_netns
from flannel_tw.testing import skips


def _ip_json(ns, *args):
    out = subprocess.run(["ip", "-n", ns, "-j"] + list(args), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def write_env(path, subnet="10.5.72.1/24", subnet6="fd00:10:5:48::1/64", mtu=1450):
    with open(path, "w") as f:
        f.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=%s\n" % subnet)
        if subnet6:
            f.write("FLANNEL_IPV6_NETWORK=fd00:10:5::/48\nFLANNEL_IPV6_SUBNET=%s\n" % subnet6)
        f.write("FLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n" % mtu)
    return path


class DualStackTopologyTests(unittest.TestCase):
    skip = skips.missing(root=True, tools=("ip", "ping", "sysctl"))

    def make_lab(self, **kw):
        lab = Lab(subnet6="fd00:250::/64", **kw)
        self.addCleanup(lambda: self.assertEqual(
            [n for n in list_netns() if n.startswith(lab.prefix)], []))
        self.addCleanup(lab.teardown)
        return lab

    def test_addresses(self):
        lab = self.make_lab()
        self.assertEqual(lab.subnet6, IPv6Network("fd00:250::/64"))
        self.assertEqual(lab.gateway6, IPv6Address("fd00:250::1"))
        self.assertEqual(lab.host_ip6(3), IPv6Address("fd00:250::d"))
        plain = Lab()
        self.assertIsNone(plain.subnet6)
        self.assertIsNone(plain.gateway6)
        self.assertIsNone(plain.host_ip6(1))
        self.assertRaises(ValueError, Lab, subnet6="fd00::/124")
        self.assertRaises(ValueError, Lab, subnet6="10.0.0.0/24")

    def test_hosts_ping_over_v6_at_once(self):
        """No DAD: the underlay's v6 addresses work right after they are added."""
        lab = self.make_lab()
        lab.add_switch()
        h1, h2 = lab.add_host(1), lab.add_host(2)
        # the first ping, no settling: a tentative address would fail it
        self.assertTrue(lab.ping(h1, lab.host_ip6(2), timeout=2))
        self.assertTrue(lab.ping(h2, lab.gateway6, timeout=2))
        self.assertTrue(lab.ping(h1, lab.host_ip(2)))       # v4 still there
        (eth0,) = _ip_json(h1, "addr", "show", "dev", "eth0")
        inet6 = [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]
                 if a["family"] == "inet6" and a.get("scope") == "global"]
        self.assertEqual(inet6, [("fd00:250::b", 64)])
        self.assertFalse([a for a in eth0["addr_info"] if a.get("tentative")])
        routes = _ip_json(h1, "-6", "route", "show", "default")
        self.assertEqual([(r["gateway"], r["dev"]) for r in routes], [("fd00:250::1", "eth0")])

    def test_dual_stack_container(self):
        lab = self.make_lab()
        lab.add_switch()
        lab.add_host(1)
        c = lab.add_container(1, write_env(self.mktemp()))
        self.assertEqual(str(c.addr6), "fd00:10:5:48::2")
        self.assertEqual(str(c.gateway6), "fd00:10:5:48::1")
        self.assertEqual(str(c.subnet6), "fd00:10:5:48::/64")
        self.assertEqual([str(a) for a in c.addrs()], ["10.5.72.2", "fd00:10:5:48::2"])
        self.assertTrue(lab.ping(c.ns, c.gateway6, timeout=2))
        self.assertTrue(lab.ping(lab.host_ns(1), c.addr6, timeout=2))
        # the container's v6 traffic leaves through the host (forwarding on): it reaches
        # the host's underlay address and the switch (which routes back via no route:
        # the switch has none to the container subnet, so only the host address)
        self.assertTrue(lab.ping(c.ns, lab.host_ip6(1), timeout=2))
        routes = _ip_json(c.ns, "-6", "route", "show", "default")
        self.assertEqual([r["gateway"] for r in routes], ["fd00:10:5:48::1"])
        fwd = lab.exec(lab.host_ns(1), ["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
        self.assertEqual(fwd.stdout.strip(), "1")
        state = lab.state()
        self.assertEqual(state["subnet6"], "fd00:250::/64")
        self.assertEqual(state["hosts"]["1"]["ip6"], "fd00:250::b")
        self.assertEqual(state["containers"]["1"]["addr6"], "fd00:10:5:48::2")

    def test_v4_only_env_gives_v4_only_container(self):
        lab = self.make_lab()
        lab.add_switch()
        lab.add_host(1)
        c = lab.add_container(1, write_env(self.mktemp(), subnet6=None))
        self.assertIsNone(c.addr6)
        self.assertEqual(c.addrs(), [c.addr])
        self.assertEqual(_ip_json(c.ns, "-6", "route", "show", "default"), [])

    def test_bad_v6_subnet_env(self):
        lab = self.make_lab()
        lab.add_switch()
        lab.add_host(1)
        for bad in ["fd00::zz/64", "10.5.1.1/24", "fd00::1/128"]:
            e = self.assertRaises(LabError, lab.add_container, 1,
                                  write_env(self.mktemp(), subnet6=bad))
            self.assertRegex(str(e), "bad subnet.env|no room for a container")
        self.assertNotIn(lab.container_ns(1), list_netns())


class DualStackLabTests(unittest.TestCase):
    """flannel_tw.testing.dualstack: etcd with a dual-stack config, daemons, containers."""
    skip = skips.missing(root=True, tun=True, tools=("ip", "ping", "sysctl"), etcd=True)

    def test_two_hosts_udp(self):
        from flannel_tw.testing.dualstack import make_dualstack
        ds = make_dualstack(self, [1, 2], backend="udp")
        self.assertEqual(json.loads(ds.config)["IPv6Network"], "fd00:10:5::/48")
        self.assertTrue(json.loads(ds.config)["EnableIPv6"])
        for i in (1, 2):
            argv = " ".join(ds.argv(i))
            self.assertIn("--public-ipv6=%s" % ds.lab.host_ip6(i), argv)
            self.assertIn("--iface=%s" % ds.lab.host_ip(i), argv)
            # the container is dual-stack exactly when the daemon wrote a v6 subnet
            self.assertEqual(ds.c(i).subnet6, ds.subnet6(i))
        self.assertTrue(ds.lab.ping(ds.lab.host_ns(1), ds.lab.host_ip6(2)))
        results = ds.assert_matrix(families=(4,))
        self.assertEqual(sorted(results), [(1, 2, 4), (2, 1, 4)])

    def test_two_hosts_host_gw_v3_both_families(self):
        from flannel_tw.testing.dualstack import make_dualstack
        ds = make_dualstack(self, [1, 2], backend="host-gw", keyspace="v3")
        self.assertIn("--etcd-api=v3", ds.argv(1))
        for i in (1, 2):
            self.assertIsNotNone(ds.subnet6(i))
            self.assertEqual(ds.c(i).subnet6, ds.subnet6(i))
        results = ds.assert_matrix()
        self.assertEqual(sorted(results), [(1, 2, 4), (1, 2, 6), (2, 1, 4), (2, 1, 6)])
        self.assertIn("Using etcd's v3 keyspace", ds.log(1))

    def test_daemons_choose_v6_and_add_ip6tables_rules(self):
        """A real daemon with --ip-masq in a dual-stack lab: its v6 address from
        --public-ipv6 on its --iface, the dual-stack lease it publishes, and flanneld
        v0.20's ip6tables rules for its v6 subnet."""
        from flannel_tw.testing.dualstack import make_dualstack
        from flannel_tw.testing.overlay import ETCD_REQUEST
        ds = make_dualstack(self, [1], backend="udp", ip_masq=True)
        url = "http://%s:2379/v2/keys/coreos.com/network/subnets" % ds.lab.gateway
        out = ds.py(ds.lab.switch_ns, ETCD_REQUEST, "GET", url).stdout
        status, _, body = out.partition("\n")
        self.assertEqual(status, "200", out)
        (node,) = json.loads(body)["node"]["nodes"]
        key = node["key"].rsplit("/", 1)[1]
        self.assertIn("&", key, key)                     # 10.5.x.0-24&fd00:10:5:y::-64
        v6 = key.split("&")[1].replace("-", "/")
        self.assertEqual(json.loads(node["value"])["PublicIPv6"], str(ds.lab.host_ip6(1)))
        self.assertIn("IPv6 enabled: using interface eth0 with addresses 192.168.250.11 and "
                      "fd00:250::b", ds.log(1))
        nat = ds.sh(ds.lab.host_ns(1), "ip6tables", "-t", "nat", "-S")
        self.assertIn('-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
                      nat)
        self.assertIn('-A FLANNEL-POSTRTG ! -s fd00:10:5::/48 -d %s -m comment --comment '
                      '"flanneld masq" -j RETURN' % v6, nat)
        fwd = ds.sh(ds.lab.host_ns(1), "ip6tables", "-S", "FLANNEL-FWD")
        self.assertIn("-A FLANNEL-FWD -s fd00:10:5::/48", fwd)


class LabIPv6RunTests(unittest.TestCase):
    """``flannel-tw lab --ipv6`` end to end: real etcd, real daemons, both families."""
    skip = skips.missing(root=True, tools=("ip", "ping", "sysctl"), etcd=True)

    def test_up_ipv6_host_gw_two_hosts(self):
        import contextlib
        import io
        import os
        import re
        from ipaddress import IPv6Interface
        from flannel_tw.tools.lab import run
        from flannel_tw.tools.lab.topology import cleanup_stale, parse_subnet_env
        out = io.StringIO()
        workdir = self.mktemp()
        with contextlib.redirect_stdout(out):
            rc = run.main(["--ipv6", "--hosts", "2", "--backend", "host-gw", "--timeout",
                           "30", "--workdir", workdir])
        text = out.getvalue()
        prefix = re.search(r"^lab (fl[0-9a-f]{4}):", text, re.M).group(1)
        self.addCleanup(cleanup_stale, prefix)
        self.assertEqual([n for n in list_netns() if n.startswith(prefix)], [])
        self.assertEqual(rc, 0, text + "\n" + "\n".join(
            open(os.path.join(workdir, f)).read()[-2000:]
            for f in sorted(os.listdir(workdir)) if f.endswith(".log")))
        self.assertIn('"EnableIPv6": true, "IPv6Network": "fd00:10:5::/48"', text)
        self.assertIn("IPv4:\n", text)
        self.assertIn("IPv6:\n", text)
        self.assertIn("all 8 pings succeeded", text)
        self.assertNotIn("\u2717", text)
        for i in (1, 2):
            env = parse_subnet_env(os.path.join(workdir, "h%d" % i, "subnet.env"))
            net6 = IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network
            self.assertTrue(net6.subnet_of(IPv6Network("fd00:10:5::/48")), net6)
            self.assertEqual(net6.prefixlen, 64)
            self.assertIn("fd00:250::%x" % (10 + i), text)       # the host table

    def test_bad_ipv6_flags(self):
        import contextlib
        import io
        from flannel_tw.tools.lab import run
        for argv in (["--network6", "10.0.0.0/8"], ["--network6", "fd00::1/48"],
                     ["--underlay6", "fd00::/125"], ["--underlay6", "nope"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = run.main(["--ipv6"] + argv)
            self.assertEqual(rc, 2, argv)
            self.assertIn("bad --network6/--underlay6", err.getvalue(), argv)
