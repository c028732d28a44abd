"""
Hostile leases against real kernels: a host-gw lab (network namespaces, a real etcd,
``twistd flannel`` per host; flannel_tw/testing/kernel_overlay.py's harness). Leases that flanneld
would believe (an alias of a peer's key, 0.0.0.0-1 and 128.0.0.0-1, a loopback or
multicast PublicIP) put no route in the kernel and leave the real peer's route alone.
All traffic stays inside the lab's namespaces.
"""
from ipaddress import IPv4Network

from twisted.trial import unittest

from flannel_tw.testing.kernel_overlay import RECEIVER, SETTLE, KernelOverlay
from flannel_tw.testing.overlay import SKIP, wait_for

HOST_GW = '{"PublicIP":"%s","BackendType":"host-gw"}'


class HostileLeasesHostGwTests(unittest.TestCase):
    skip = SKIP

    def test_hostile_leases_leave_the_kernel_routes_alone(self):
        ov = KernelOverlay(self, "host-gw")
        lab = ov.lab
        ov.start(1, 2)
        ov.assert_entries(1, [2])
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        s2 = ov.subnet(2)
        alias = "x%s-%d" % (s2.network_address, s2.prefixlen)
        hostile = {
            alias: HOST_GW % lab.host_ip(RECEIVER),                 # would replace h2's route
            "0.0.0.0-1": HOST_GW % lab.host_ip(RECEIVER),           # half the internet
            "128.0.0.0-1": HOST_GW % lab.host_ip(RECEIVER),         # the other half
            "10.5.240.0-24": HOST_GW % "127.0.0.1",
            "10.5.241.0-24": HOST_GW % "224.0.0.1",
        }
        for key, value in hostile.items():
            self.assertEqual(ov.etcd("PUT", key, value), 201, key)
        # a good lease written last: once its route is in, the hostile ones were seen
        marker = IPv4Network("10.5.242.0/24")
        self.assertEqual(ov.etcd("PUT", "10.5.242.0-24", HOST_GW % lab.host_ip(RECEIVER)), 201)
        marker_line = "%s via %s dev eth0" % (marker, lab.host_ip(RECEIVER))
        self.assertTrue(wait_for(lambda: marker_line in ov.entries(1), SETTLE), ov.logs())

        routes = ov.sh(1, "ip", "route")
        for bad in ("0.0.0.0/1", "128.0.0.0/1", "10.5.240.0/24", "10.5.241.0/24"):
            self.assertNotIn(bad + " ", routes)
        self.assertEqual(ov.entries(1), sorted(ov.expected(1, [2]) + [marker_line]))
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        self.assertEqual(ov.log(1).count("Ignoring lease"), len(hostile), ov.log(1))

        # deleting the alias does not remove the real peer's route
        self.assertEqual(ov.etcd("DELETE", alias), 200)
        self.assertEqual(ov.etcd("DELETE", "10.5.242.0-24"), 200)
        self.assertTrue(wait_for(lambda: marker_line not in ov.entries(1), SETTLE), ov.logs())
        self.assertEqual(ov.entries(1), ov.expected(1, [2]))
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
