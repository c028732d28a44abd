"""The CNI plugin with a dual-stack subnet.env (issue 15): host-local gets both ranges
(ranges [[v4], [v6]]) and routes to both networks, as flannel's CNI plugin does; hostile
IPv6 values in subnet.env are refused with CNI error 7 before anything is delegated. The
real bridge and host-local plugins: tests/lab/test_cni_dualstack.py."""

import json
import os

from twisted.trial import unittest

from flannel_tw.tools import cni
from flannel_tw.testing.cni_fixtures import SUBNET_ENV, _write

V6 = "FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s\n"


class DualStackConfigTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env_path = os.path.join(self.dir, "subnet.env")

    def load(self, text):
        _write(self.env_path, text)
        return cni.load_subnet_env(self.env_path)

    def delegate(self, text, **extra):
        conf = {"cniVersion": "1.0.0", "name": "flnet", "type": "flannel",
                "subnetFile": self.env_path}
        conf.update(extra)
        conf = cni.parse_netconf(json.dumps(conf))
        return cni.delegate_config(conf, self.load(text))

    def test_both_ranges_and_routes(self):
        d = self.delegate(SUBNET_ENV + V6 % ("fd00:10:5::/48", "fd00:10:5:22::1/64"))
        self.assertEqual(d["ipam"], {
            "type": "host-local",
            "ranges": [[{"subnet": "10.1.74.0/24"}], [{"subnet": "fd00:10:5:22::/64"}]],
            "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fd00:10:5::/48"}]})
        self.assertEqual((d["type"], d["isGateway"], d["mtu"]), ("bridge", True, 1472))

    def test_user_routes_kept_before_ours(self):
        d = self.delegate(SUBNET_ENV + V6 % ("fd00:10:5::/48", "fd00:10:5:22::1/64"),
                          ipam={"routes": [{"dst": "::/0"}]})
        self.assertEqual(d["ipam"]["routes"],
                         [{"dst": "::/0"}, {"dst": "10.1.0.0/16"}, {"dst": "fd00:10:5::/48"}])

    def test_empty_v6_values_are_absent(self):
        env = self.load(SUBNET_ENV + "FLANNEL_IPV6_NETWORK=\nFLANNEL_IPV6_SUBNET=\n")
        self.assertEqual((env["ipv6_network"], env["ipv6_subnet"]), (None, None))
        self.assertEqual(cni.delegate_ipam({}, env)["ranges"], [[{"subnet": "10.1.74.0/24"}]])

    def assertRefused(self, text, *needles):
        with self.assertRaises(cni.CNIError) as cm:
            self.load(text)
        self.assertEqual(cm.exception.code, 7, cm.exception.msg)
        words = cm.exception.msg + " " + cm.exception.details
        for needle in needles:
            self.assertIn(needle, words)

    def test_hostile_v6_values(self):
        for net, sub in [("fd00:10:5::/48", "fe80::1%eth0/64"),
                         ("fd00:10:5::/48%eth0", "fd00:10:5:22::1/64"),
                         ("fd00:10:5::/48", "fd00:10:5:22::1"),
                         ("fd00:10:5::/48", "fd00:10:5:22::1/129"),
                         ("fd00:10:5::/48", "10.1.74.1/24"),
                         ("fd00:10:5::/48", 'fd00:10:5:22::1/64", "x": "'),
                         ("fd00:10:5::/48", "fd00:10:5:22::1/64 fd00::/8"),
                         ("fd00:10:5::/48", "::ffff:10.1.74.1/120x")]:
            self.assertRefused(SUBNET_ENV + V6 % (net, sub), "malformed value",
                               "is not an IPv6 address with a /prefix")

    def test_half_a_pair(self):
        self.assertRefused(SUBNET_ENV + "FLANNEL_IPV6_SUBNET=fd00:10:5:22::1/64\n",
                           "FLANNEL_IPV6_SUBNET without FLANNEL_IPV6_NETWORK")
        self.assertRefused(SUBNET_ENV + "FLANNEL_IPV6_NETWORK=fd00:10:5::/48\n",
                           "FLANNEL_IPV6_NETWORK without FLANNEL_IPV6_SUBNET")

    def test_subnet_outside_its_network(self):
        self.assertRefused(SUBNET_ENV + V6 % ("fd00:10:5::/48", "fd00:99::1/64"),
                           "subnet fd00:99::/64 is not inside network fd00:10:5::/48")
        self.assertRefused(SUBNET_ENV + V6 % ("fd00:10:5::/48", "fd00::1/16"),
                           "is not inside network")
        self.assertRefused(SUBNET_ENV.replace("10.1.74.1/24", "10.2.74.1/24"),
                           "subnet 10.2.74.0/24 is not inside network 10.1.0.0/16")

    def test_add_never_delegates_a_hostile_file(self):
        _write(self.env_path, SUBNET_ENV + V6 % ("fd00:10:5::/48", "fd00:10:5:22::1/64;x"))
        ran = []
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x",
               "CNI_IFNAME": "eth0", "CNI_PATH": self.dir}
        conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "flannel",
                           "subnetFile": self.env_path,
                           "dataDir": os.path.join(self.dir, "data")})
        code, out = cni.run(env, conf.encode(), runner=lambda *a, **k: ran.append(a))
        self.assertEqual((code, out["code"], ran), (1, 7, []))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "data", "c1")))
