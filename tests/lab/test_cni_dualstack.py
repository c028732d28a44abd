"""The CNI plugin with a dual-stack subnet.env and the real ``bridge`` and ``host-local``
plugins (Debian's containernetworking-plugins): ADD gives the container an address from
each range, a route to each flannel network, and both families reach the bridge; DEL
removes it. One lab host namespace (flannel_tw.tools.lab, dual-stack underlay), the
subnet.env written by the test; every namespace is removed in a cleanup."""

import json
import os
import subprocess
import sys
from ipaddress import ip_interface, ip_network

from twisted.trial import unittest

from flannel_tw.testing import skips
from flannel_tw.testing.cni_fixtures import _write
from flannel_tw.tools.lab.topology import Lab, list_netns

PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
ENV = ("FLANNEL_NETWORK=10.44.0.0/16\nFLANNEL_SUBNET=10.44.7.1/24\n"
       "FLANNEL_IPV6_NETWORK=fd00:44::/48\nFLANNEL_IPV6_SUBNET=fd00:44:0:7::1/64\n"
       "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def _plugin_dir():
    for d in PLUGIN_DIRS:
        if all(os.access(os.path.join(d, p), os.X_OK) for p in ("bridge", "host-local")):
            return d
    return None


class DualStackCNITests(unittest.TestCase):
    skip = skips.missing(root=True, tools=("ip", "ping", "iptables"))

    def setUp(self):
        self.plugins = _plugin_dir()
        if self.plugins is None:
            raise unittest.SkipTest("needs the bridge and host-local CNI plugins "
                                    "(Debian package containernetworking-plugins)")
        self.lab = lab = Lab(subnet6="fd00:250::/64")
        self.addCleanup(lambda: self.assertEqual(
            [n for n in list_netns() if n.startswith(lab.prefix)], []))
        self.addCleanup(lab.teardown)
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        lab.add_switch()
        lab.add_host(1)
        self.env_path = _write(os.path.join(self.workdir, "subnet.env"), ENV)
        self.cni_bin = os.path.join(self.workdir, "cni-bin")
        os.makedirs(self.cni_bin)
        shim = os.path.join(self.cni_bin, "flannel")
        _write(shim, '#!/bin/sh\nexec %s -m flannel_tw.tools.cli cni "$@"\n' % sys.executable)
        os.chmod(shim, 0o755)

    def plugin(self, command, netns, **extra):
        from flannel_tw.tools.lab.run import repo_root
        conf = {"cniVersion": "1.0.0", "name": "flannel-ds", "type": "flannel",
                "subnetFile": self.env_path, "dataDir": os.path.join(self.workdir, "cni-data"),
                "ipam": {"dataDir": os.path.join(self.workdir, "ipam")}}
        conf.update(extra)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1",
               "CNI_NETNS": "/var/run/netns/" + netns, "CNI_IFNAME": "eth0",
               "CNI_PATH": self.cni_bin + os.pathsep + self.plugins,
               "PYTHONPATH": repo_root()}
        argv = ["env"] + ["%s=%s" % kv for kv in env.items()] + [
            os.path.join(self.cni_bin, "flannel")]
        return self.lab.exec(self.lab.host_ns(1), argv, input=json.dumps(conf), check=False,
                             timeout=60)

    def test_add_gives_both_families(self):
        lab = self.lab
        ns = lab.container_ns(1)
        subprocess.run(["ip", "netns", "add", ns], check=True)   # removed by Lab.teardown
        cp = self.plugin("ADD", ns)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        result = json.loads(cp.stdout)
        addrs = [ip_interface(x["address"]) for x in result["ips"]]
        self.assertEqual([a.version for a in addrs], [4, 6])
        self.assertEqual(addrs[0].network, ip_network("10.44.7.0/24"))
        self.assertEqual(addrs[1].network, ip_network("fd00:44:0:7::/64"))
        gateways = [x.get("gateway") for x in result["ips"]]
        self.assertEqual(gateways, ["10.44.7.1", "fd00:44:0:7::1"])
        # in the container: both addresses, a route to each flannel network
        routes6 = lab.exec(ns, ["ip", "-6", "route", "show", "fd00:44::/48"]).stdout
        self.assertIn("via fd00:44:0:7::1", routes6)
        routes4 = lab.exec(ns, ["ip", "route", "show", "10.44.0.0/16"]).stdout
        self.assertIn("via 10.44.7.1", routes4)
        mtu = lab.exec(ns, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
        self.assertEqual(mtu, "1450")
        # both families reach the bridge (the host side of the container's gateway)
        for gateway in gateways:
            self.assertTrue(any(lab.ping(ns, gateway, timeout=1) for _ in range(10)),
                            "no reply from %s" % gateway)
        cp = self.plugin("CHECK", ns, prevResult=result)
        self.assertEqual((cp.returncode, cp.stdout), (0, ""), cp.stderr)
        cp = self.plugin("DEL", ns)
        self.assertEqual((cp.returncode, cp.stdout), (0, ""), cp.stderr)
        self.assertNotIn("eth0", lab.exec(ns, ["ip", "-o", "link"]).stdout)

    def test_check_refuses_an_address_outside_the_v6_subnet(self):
        ns = self.lab.container_ns(1)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        cp = self.plugin("ADD", ns)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        result = json.loads(cp.stdout)
        # the lease moved: subnet.env now names another v6 subnet
        _write(self.env_path, ENV.replace("fd00:44:0:7::1/64", "fd00:44:0:8::1/64"))
        cp = self.plugin("CHECK", ns, prevResult=result)
        self.assertEqual(cp.returncode, 1)
        self.assertIn("is outside flannel's subnet", json.loads(cp.stdout)["msg"])
        _write(self.env_path, ENV)
        self.assertEqual(self.plugin("DEL", ns).returncode, 0)
