"""flannel_tw.tools.cni: delegate config generation, environment checks and error JSON

The lab tests (LabTests); the whole description is in tests/integration/test_cni.py."""

import json
import os
import subprocess
import sys

from twisted.trial import unittest

from flannel_tw.testing.cni_fixtures import _write
from flannel_tw.testing import skips
from flannel_tw.testing.overlay import lab_with_etcd


PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


def _plugin_dir():
    for d in PLUGIN_DIRS:
        if all(os.access(os.path.join(d, p), os.X_OK) for p in ("bridge", "host-local")):
            return d
    return None


class LabTests(unittest.TestCase):
    """Two udp hosts; a container namespace on each attached by the plugin; ping; DEL."""

    def setUp(self):
        skips.require_lab("ping", "iptables")
        self.plugins = _plugin_dir()
        if self.plugins is None:
            raise unittest.SkipTest("needs the bridge and host-local CNI plugins "
                                    "(Debian package containernetworking-plugins)")

    def make_cni_path(self, workdir):
        """A CNI_PATH dir holding the 'flannel' shim (flannel_tw/deploy/cni/flannel, or a copy
        running this interpreter's flannel-tw when the command is not installed)."""
        from flannel_tw.tools.lab.run import repo_root
        d = os.path.join(workdir, "cni-bin")
        os.makedirs(d)
        shim = os.path.join(d, "flannel")
        from flannel_tw.tools.install import InstallError, find_bin_dir, render, shipped
        try:   # the shipped shim, with this install's absolute path (as install-units writes it)
            bin_dir = find_bin_dir()
        except InstallError:
            bin_dir = None
        if bin_dir:
            _write(shim, render(shipped("cni", "flannel"), bin_dir))
        else:
            _write(shim, '#!/bin/sh\nexec %s -m flannel_tw.tools.cli cni "$@"\n' % sys.executable)
        os.chmod(shim, 0o755)
        return d

    def plugin(self, lab, i, command, netns, workdir, cni_path, **extra):
        conf = {"cniVersion": "1.0.0", "name": "flannel-lab", "type": "flannel",
                "subnetFile": os.path.join(workdir, "h%d" % i, "subnet.env"),
                "dataDir": os.path.join(workdir, "cni-data-h%d" % i),
                "ipam": {"dataDir": os.path.join(workdir, "ipam-h%d" % i)}}
        conf.update(extra)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr%d" % i,
               "CNI_NETNS": "/var/run/netns/" + netns, "CNI_IFNAME": "eth0",
               "CNI_PATH": cni_path + os.pathsep + self.plugins}
        argv = ["env"] + ["%s=%s" % kv for kv in env.items()] + [
            os.path.join(cni_path, "flannel")]
        cp = lab.exec(lab.host_ns(i), argv, input=json.dumps(conf), check=False, timeout=60)
        return cp

    def veths(self, lab, i):
        out = lab.exec(lab.host_ns(i), ["ip", "-o", "link", "show", "type", "veth"]).stdout
        names = [l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if l.strip()]
        # the host's own uplink is eth0; the bridge plugin's are veth<8 hex digits>,
        # which may well contain "eth0" (veth0a1b2c3d)
        return [n for n in names if n != "eth0"]

    def test_containers_on_two_hosts_reach_each_other(self):
        from flannel_tw.tools.lab import run as labrun
        lab, workdir, url = lab_with_etcd(
            self, '{"Network": "10.44.0.0/16", "Backend": {"Type": "udp"}}')
        procs = labrun.start_daemons(lab, workdir, url, [1, 2])
        envs = labrun.wait_subnet_files(workdir, procs, timeout=60)
        cni_path = self.make_cni_path(workdir)

        addrs = {}
        for i in (1, 2):
            ns = lab.container_ns(i)
            # a bare container namespace; Lab.teardown removes every <prefix>h<i>c
            subprocess.run(["ip", "netns", "add", ns], check=True)
            cp = self.plugin(lab, i, "ADD", ns, workdir, cni_path)
            self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
            result = json.loads(cp.stdout)
            self.assertEqual(result["cniVersion"], "1.0.0")
            (ip,) = [x["address"] for x in result["ips"]]
            subnet = envs[i]["FLANNEL_SUBNET"]
            self.assertEqual(ip.split("/")[1], subnet.split("/")[1])
            self.assertEqual(ip.rsplit(".", 1)[0], subnet.rsplit(".", 1)[0])
            addrs[i] = ip.split("/")[0]
            mtu = lab.exec(ns, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
            self.assertEqual(mtu, envs[i]["FLANNEL_MTU"])
            self.assertTrue(os.path.exists(os.path.join(workdir, "cni-data-h%d" % i, "ctr%d" % i)))
            self.assertEqual(len(self.veths(lab, i)), 1)
            # CHECK with the ADD result as prevResult agrees
            cp = self.plugin(lab, i, "CHECK", ns, workdir, cni_path, prevResult=result)
            self.assertEqual((cp.returncode, cp.stdout), (0, ""), cp.stderr)

        ok = False
        for _ in range(20):
            if lab.ping(lab.container_ns(1), addrs[2]) and lab.ping(lab.container_ns(2), addrs[1]):
                ok = True
                break
        self.assertTrue(ok, "containers %s and %s cannot reach each other" % (addrs[1], addrs[2]))

        for i in (1, 2):
            cp = self.plugin(lab, i, "DEL", lab.container_ns(i), workdir, cni_path)
            self.assertEqual((cp.returncode, cp.stdout), (0, ""), cp.stderr)
            self.assertEqual(self.veths(lab, i), [])
            links = lab.exec(lab.container_ns(i), ["ip", "-o", "link"]).stdout
            self.assertNotIn("eth0", links)
            self.assertFalse(os.path.exists(os.path.join(workdir, "cni-data-h%d" % i,
                                                         "ctr%d" % i)))
            # DEL again: nothing left, still success
            cp = self.plugin(lab, i, "DEL", lab.container_ns(i), workdir, cni_path)
            self.assertEqual(cp.returncode, 0, cp.stdout)
