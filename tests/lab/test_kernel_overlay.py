"""The vxlan and host-gw data planes end to end on real kernels: a real etcd in the lab's
switch namespace, one ``twistd flannel --ip-masq`` per host namespace, a docker-like
container behind each host, and a "receiver" namespace on the lab bridge outside the
overlay (host 9, no daemon).

One lab per backend is shared by a sequence of checks (kept in one test method so the
whole file stays well under a minute): two hosts (ping, 4 MB TCP with sha256, ip-masq
to the receiver, no masquerading inside the overlay), a third host joining (ping matrix,
TCP), exact kernel entries and iptables rules on every host, a daemon restart (same
subnet, entries left from the earlier run for a vanished lease removed, one copy of
everything), a vxlan peer coming back with a new VtepMAC, a host-gw route deleted by
hand coming back, a host leaving, leases of other types ignored, an unreachable host-gw
peer logged by name, and host-gw refusing a NAT'ed PublicIP.

All traffic goes only to addresses inside namespaces the test created; teardown is
registered before anything is made."""

import json
import os
import time

from twisted.trial import unittest

from flannel_tw.tools.lab.run import _child_env, daemon_argv, subnet_file
from flannel_tw.testing.overlay import SKIP, UDP_LISTENER, read_text, say, wait_for
from flannel_tw.testing.kernel_overlay import KernelOverlay, RECEIVER, SETTLE


UDP_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"""


class _Lifecycle:
    skip = SKIP
    backend = None

    def test_lifecycle(self):
        t0 = time.monotonic()
        ov = KernelOverlay(self, self.backend)
        lab = ov.lab

        # two hosts
        ov.start(1, 2)
        self.assertEqual(ov.envs[1]["FLANNEL_MTU"], "1450" if self.backend == "vxlan" else "1500")
        self.assertEqual(ov.envs[1]["FLANNEL_IPMASQ"], "true")
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        ov.assert_reaches(ov.c(2).ns, ov.c(1).addr)
        ov.tcp(1, 2, 5001)

        # ip-masq: to the receiver outside the overlay the container is the host
        _, rx = ov.spawn_py(lab.host_ns(RECEIVER), "receiver", UDP_LISTENER, 9999,
                            ready="ready")
        ov.py(ov.c(1).ns, UDP_SEND, lab.host_ip(RECEIVER), 9999, "from-c1")
        got = wait_for(lambda: [json.loads(l) for l in read_text(rx).splitlines()[1:]], 5)
        self.assertTrue(got, read_text(rx))
        self.assertEqual({m["src"] for m in got}, {str(lab.host_ip(1))})

        # a third host joins
        ov.start(3)
        for i in (1, 2, 3):
            for j in (1, 2, 3):
                if i != j:
                    ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        ov.tcp(3, 1, 5002)
        for i in (1, 2, 3):
            ov.assert_entries(i, [j for j in (1, 2, 3) if j != i])
            ov.assert_iptables(i)

        # a lease of another type: ignored, logged once
        self.assertEqual(ov.etcd("PUT", "10.5.250.0-24", '{"PublicIP":"192.168.250.77"}'), 201)
        line = "Ignoring non-%s subnet 10.5.250.0/24" % self.backend
        self.assertTrue(wait_for(lambda: line in ov.log(1), SETTLE), ov.log(1))
        self.assertEqual(ov.etcd("DELETE", "10.5.250.0-24"), 200)
        self.assertEqual(ov.log(1).count(line), 1)

        # restart h1: same subnet, leftovers of a vanished lease removed, one copy of all
        subnet1 = ov.subnet(1)
        ov.stop(1)
        ov.add_stale(1)
        ov.start(1)
        self.assertEqual(ov.subnet(1), subnet1)
        ov.assert_entries(1, [2, 3])
        ov.assert_iptables(1)
        self.assertIn("left from an earlier run", ov.log(1))
        ov.assert_reaches(ov.c(1).ns, ov.c(3).addr)
        ov.assert_reaches(ov.c(2).ns, ov.c(1).addr)

        self.backend_specific(ov)

        # h3 leaves: its lease is deleted; h1 and h2 drop its entries
        ov.stop(3)
        self.assertEqual(ov.etcd("DELETE", "%s-%d" % (ov.subnet(3).network_address,
                                                     ov.subnet(3).prefixlen)), 200)
        ov.assert_entries(1, [2])
        ov.assert_entries(2, [1])
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        say("%s lifecycle: %.1fs", self.backend, time.monotonic() - t0)


class VxlanLifecycleTests(_Lifecycle, unittest.TestCase):
    backend = "vxlan"

    def backend_specific(self, ov):
        # h2 comes back with a new device, so a new VtepMAC: h1 follows
        old = ov.mac(2)
        ov.stop(2)
        ov.sh(2, "ip", "link", "del", "flannel.1")
        ov.start(2)
        new = ov.mac(2)
        self.assertNotEqual(new, old)
        ov.assert_entries(1, [2, 3])
        ov.assert_entries(3, [1, 2])
        self.assertNotIn(old, "\n".join(ov.entries(1)))
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        ov.assert_reaches(ov.c(2).ns, ov.c(3).addr)
        self.assertIn('"VtepMAC":"%s"' % new, self.lease_value(ov, 2))

    def lease_value(self, ov, i):
        s = ov.subnet(i)
        url = "http://%s:2379/v2/keys/coreos.com/network/subnets/%s-%d" % (
            ov.lab.gateway, s.network_address, s.prefixlen)
        script = ("import json, urllib.request as u; o = u.build_opener(u.ProxyHandler({}));"
                  "print(json.load(o.open(%r))['node']['value'])" % url)
        return ov.py(ov.lab.switch_ns, script).stdout


class HostGwLifecycleTests(_Lifecycle, unittest.TestCase):
    backend = "host-gw"

    def backend_specific(self, ov):
        lab = ov.lab
        # a route deleted by hand comes back within the 10 s check
        s2 = ov.subnet(2)
        ov.sh(1, "ip", "route", "del", str(s2))
        self.assertTrue(wait_for(lambda: "Route recovered: %s" % s2 in ov.log(1), 15),
                        ov.log(1))
        ov.assert_entries(1, [2, 3])
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)

        # a peer that is not on our link: an error naming it, nothing installed
        self.assertEqual(ov.etcd("PUT", "10.5.251.0-24",
                                 '{"PublicIP":"10.77.0.1","BackendType":"host-gw"}'), 201)
        self.assertTrue(wait_for(lambda: "cannot add peer 10.5.251.0/24 (PublicIP 10.77.0.1)"
                                 in ov.log(1), SETTLE), ov.log(1))
        ov.assert_entries(1, [2, 3])
        self.assertEqual(ov.etcd("DELETE", "10.5.251.0-24"), 200)

        # behind NAT (PublicIP != interface address): refused, exit status 1, no lease
        log = os.path.join(ov.workdir, "nat.out")
        argv = daemon_argv(ov.workdir, RECEIVER, ov.etcd_url, lab.host_ip(RECEIVER))
        argv.append("--public-ip=192.168.250.99")
        proc = lab.spawn(lab.host_ns(RECEIVER), argv, log, env=_child_env(), cwd=ov.workdir)
        self.assertEqual(proc.wait(timeout=30), 1)
        self.assertIn("probably you're on a NAT", read_text(
            os.path.join(ov.workdir, "h%d.log" % RECEIVER)))
        self.assertFalse(os.path.exists(subnet_file(ov.workdir, RECEIVER)))
