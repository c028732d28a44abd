"""
Dual-stack overlays of the routed backends on real kernels (issue 15): a real etcd, one
``twistd flannel`` per host namespace with a config that has EnableIPv6, and a
dual-stack container behind each host (flannel_tw.testing.dualstack); every container
pings every other over IPv4 and IPv6.

The mixed-stack case: beside two dual-stack flannel-tw hosts, a host that holds an
IPv4-only lease written as an older flanneld (v0.10 vxlan) writes it, with that
flanneld's kernel entries made by hand: IPv4 works everywhere, IPv6 between the
dual-stack hosts, and no daemon crashes (flanneld v0.20 dereferences nil there).

All traffic stays inside the namespaces each test makes; every lab is torn down in a
cleanup, and the cleanup checks that no namespace is left.
"""
import json
import os
import re
from ipaddress import IPv4Address, IPv4Network

from twisted.trial import unittest

from flannel_tw.backend.vxlan.device import VxlanPeer, VxlanSpec
from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.testing import skips
from flannel_tw.testing.dualstack import dualstack_config, etcd_get, make_dualstack, no_crash
from flannel_tw.testing.kernel_fixtures import LabKernel
from flannel_tw.testing.kernel_overlay import ETCD
from flannel_tw.testing.overlay import say, wait_for

SKIP = skips.missing(root=True, tools=("ip", "ping", "bridge"), etcd=True)
HOSTS = [1, 2, 3]


class VxlanDualStackTests(unittest.TestCase):
    skip = SKIP

    def test_three_hosts_both_families(self):
        ds = make_dualstack(self, HOSTS, backend="vxlan")
        results = ds.assert_matrix(families=(4, 6))
        self.assertEqual(len(results), 12)
        for i in HOSTS:                 # the hosts reach the remote containers too
            for j in HOSTS:
                if i != j:
                    ds.assert_reaches(ds.lab.host_ns(i), ds.c(j).addr6)
        # flannel-v6.1 as flanneld v0.20 makes it, and the lease that publishes it
        h1 = ds.lab.host_ns(1)
        details = ds.sh(h1, "ip", "-d", "link", "show", "flannel-v6.1")
        self.assertIn("vxlan id 1 local %s dev eth0" % ds.lab.host_ip6(1), details)
        self.assertIn("nolearning", details)
        mac6 = re.search(r"link/ether ([0-9a-f:]{17})", details).group(1)
        self.assertEqual(int(mac6[:2], 16) & 3, 2, mac6)       # locally administered
        self.assertEqual(ds.sh(h1, "cat", "/proc/sys/net/ipv6/conf/flannel-v6.1/accept_ra")
                         .strip(), "0")
        global6 = ds.sh(h1, "ip", "-6", "addr", "show", "dev", "flannel-v6.1", "scope", "global")
        self.assertEqual(re.findall(r"inet6 (\S+)", global6),
                         ["%s/128" % ds.subnet6(1).network_address])
        leases = etcd_get(ds, None)
        key1 = "%s-%d&%s-%d" % (ds.subnet(1).network_address, ds.subnet(1).prefixlen,
                                ds.subnet6(1).network_address, ds.subnet6(1).prefixlen)
        self.assertIn(key1, leases, sorted(leases))
        value = leases[key1]
        self.assertEqual(value["PublicIPv6"], str(ds.lab.host_ip6(1)))
        self.assertEqual(value["BackendV6Data"], {"VNI": 1, "VtepMAC": mac6})
        # h1's entries for h2: neighbour, FDB to h2's PublicIPv6, onlink route
        s2 = ds.subnet6(2)
        mac62 = leases[[k for k in leases if k.startswith(str(ds.subnet(2).network_address))][0]
                       ]["BackendV6Data"]["VtepMAC"]
        self.assertIn("%s via %s dev flannel-v6.1" % (s2, s2.network_address),
                      ds.sh(h1, "ip", "-6", "route", "show", str(s2)))
        self.assertIn("onlink", ds.sh(h1, "ip", "-6", "route", "show", str(s2)))
        self.assertIn("%s lladdr %s PERMANENT" % (s2.network_address, mac62),
                      ds.sh(h1, "ip", "-6", "neigh", "show", "dev", "flannel-v6.1"))
        self.assertIn("%s dst %s self permanent" % (mac62, ds.lab.host_ip6(2)),
                      ds.sh(h1, "bridge", "fdb", "show", "dev", "flannel-v6.1"))
        no_crash(self, ds, HOSTS)

    def test_direct_routing_both_families(self):
        """DirectRouting: the hosts share the switch, so both families go unencapsulated."""
        ds = make_dualstack(self, [1, 2], config=dualstack_config(
            "vxlan", backend_options={"DirectRouting": True}))
        ds.assert_matrix(families=(4, 6))
        h1 = ds.lab.host_ns(1)
        self.assertIn("via %s dev eth0" % ds.lab.host_ip6(2),
                      ds.sh(h1, "ip", "-6", "route", "show", str(ds.subnet6(2))))
        self.assertIn("via %s dev eth0" % ds.lab.host_ip(2),
                      ds.sh(h1, "ip", "route", "show", str(ds.subnet(2))))
        no_crash(self, ds, [1, 2])

    def test_restart_removes_v6_leftovers(self):
        """A lease deleted while a daemon was down: its IPv6 entries go at the restart."""
        ds = make_dualstack(self, HOSTS, backend="vxlan")
        ds.assert_matrix(families=(6,))
        s3, s3v6 = ds.subnet(3), ds.subnet6(3)
        ds.stop(1)
        ds.stop(3)
        key3 = "%s-%d&%s-%d" % (s3.network_address, s3.prefixlen, s3v6.network_address,
                                s3v6.prefixlen)
        url = "http://%s:2379/v2/keys%s/subnets/%s" % (ds.lab.gateway, DEFAULT_PREFIX, key3)
        self.assertEqual(ds.py(ds.lab.switch_ns, ETCD, "DELETE", url).stdout.strip(), "200")
        h1 = ds.lab.host_ns(1)
        self.assertIn(str(s3v6), ds.sh(h1, "ip", "-6", "route"))     # left by the stop
        ds.start([1])
        gone = wait_for(lambda: str(s3v6) not in ds.sh(h1, "ip", "-6", "route")
                        and str(s3v6.network_address) + " " not in
                        ds.sh(h1, "ip", "-6", "neigh", "show", "dev", "flannel-v6.1"), 20)
        self.assertTrue(gone, ds.sh(h1, "ip", "-6", "route") + ds.logs(1))
        self.assertIn("left from an earlier run", ds.log(1))
        ds.assert_matrix(families=(4, 6), hosts=[1, 2])
        no_crash(self, ds, [1, 2])


class HostGwDualStackTests(unittest.TestCase):
    skip = SKIP

    def test_three_hosts_both_families(self):
        ds = make_dualstack(self, HOSTS, backend="host-gw")
        ds.assert_matrix(families=(4, 6))
        h1 = ds.lab.host_ns(1)
        for j in (2, 3):
            self.assertIn("%s via %s dev eth0" % (ds.subnet6(j), ds.lab.host_ip6(j)),
                          ds.sh(h1, "ip", "-6", "route", "show", str(ds.subnet6(j))))
        # a deleted IPv6 route is put back by the 10 s route check
        ds.sh(h1, "ip", "-6", "route", "del", str(ds.subnet6(2)))
        back = wait_for(lambda: str(ds.subnet6(2)) in ds.sh(h1, "ip", "-6", "route"), 15)
        self.assertTrue(back, ds.logs(1))
        self.assertIn("Route recovered: %s" % ds.subnet6(2), ds.log(1))
        ds.assert_matrix(families=(6,))
        no_crash(self, ds, HOSTS)


class MixedStackTests(unittest.TestCase):
    """
    Hosts 1 and 2 run flannel-tw, dual-stack vxlan. Host 3 stands in for an older
    flanneld: its IPv4-only lease and its flannel.1 entries are written as flanneld
    v0.10 would (the lease value without PublicIPv6/BackendV6Data, no "&" in the key).
    """
    skip = SKIP

    @staticmethod
    def free_subnet(leases):
        """10.5.77.0/24, or the next /24 up whose v4 part no lease in C{leases} holds: the
        dual-stack daemons chose theirs at random before the old host writes its lease,
        and one of them holds 10.5.77.0/24 once in about 50 runs."""
        held = {IPv4Network(key.split("&")[0].replace("-", "/")) for key in leases}
        return next(s for s in (IPv4Network("10.5.%d.0/24" % n) for n in range(77, 256))
                    if s not in held)

    def old_flanneld_host(self, ds, i):
        """Host C{i}'s flannel.1, lease (on C{self.old_subnet}, a subnet no lease holds),
        entries for the others, and a container."""
        self.old_subnet = self.free_subnet(etcd_get(ds, None))
        kernel = LabKernel(netns=ds.lab.host_ns(i))
        self.addCleanup(kernel.close)
        eth0 = kernel.link_index("eth0")
        index, mac, _ = kernel.ensure_vxlan(VxlanSpec(vni=1, link_index=eth0,
                                                      local=ds.lab.host_ip(i)))
        kernel.configure_vxlan(index, self.old_subnet.network_address)
        value = json.dumps({"PublicIP": str(ds.lab.host_ip(i)), "BackendType": "vxlan",
                            "BackendData": {"VtepMAC": mac}}, separators=(",", ":"))
        url = "http://%s:2379/v2/keys%s/subnets/%s-%d" % (
            ds.lab.gateway, DEFAULT_PREFIX, self.old_subnet.network_address,
            self.old_subnet.prefixlen)
        self.assertIn(ds.py(ds.lab.switch_ns, ETCD, "PUT", url, value).stdout.strip(),
                      ("200", "201"))
        leases = etcd_get(ds, None)
        peers = []
        for key, v in leases.items():
            if v.get("PublicIP") == str(ds.lab.host_ip(i)):
                continue
            net = IPv4Network(key.split("&")[0].replace("-", "/"))
            peers.append(VxlanPeer(net, IPv4Address(v["PublicIP"]),
                                   v["BackendData"]["VtepMAC"]))
        results = kernel.apply_vxlan_peers(index, eth0, [(None, p) for p in peers])
        self.assertEqual(results, peers)
        env = os.path.join(ds.workdir, "h%d" % i, "subnet.env")
        os.makedirs(os.path.dirname(env), exist_ok=True)
        with open(env, "w") as f:
            f.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1450\n"
                    "FLANNEL_IPMASQ=false\n" % (self.old_subnet.network_address + 1))
        return ds.lab.add_container(i, env), leases

    def test_ipv4_only_lease_beside_dual_stack_hosts(self):
        ds = make_dualstack(self, HOSTS, backend="vxlan", start=[1, 2])
        ds.assert_matrix(families=(4, 6), hosts=[1, 2])
        c3, leases = self.old_flanneld_host(ds, 3)
        self.assertEqual(len(leases), 3, leases)
        self.assertIsNone(c3.addr6)
        for i in (1, 2):
            ds.assert_reaches(ds.c(i).ns, c3.addr)
            ds.assert_reaches(c3.ns, ds.c(i).addr)
        ds.assert_matrix(families=(4, 6), hosts=[1, 2])
        for i in (1, 2):
            h = ds.lab.host_ns(i)
            self.assertIn("%s via %s dev flannel.1 onlink" % (self.old_subnet,
                                                              self.old_subnet.network_address),
                          ds.sh(h, "ip", "route", "show", str(self.old_subnet)))
            routes6 = ds.sh(h, "ip", "-6", "route", "show", "dev", "flannel-v6.1")
            self.assertEqual(len([l for l in routes6.splitlines() if " via " in l]), 1, routes6)
            self.assertNotIn("skipping the IPv6 part", ds.log(i))     # not a bad lease
        no_crash(self, ds, [1, 2])
        say("mixed stacks: c3 %s (IPv4-only lease) <-> c1/c2 over IPv4; c1 <-> c2 over v4+v6",
            c3.addr)

    def test_host_without_ipv6_address(self):
        """
        Host 3 runs flannel-tw with the dual-stack config but no IPv6 address chosen (an
        IPv4 --iface without --public-ipv6): it routes IPv4 only (one warning), its lease
        has no PublicIPv6 nor BackendV6Data, and the dual-stack hosts route its IPv4 part
        and skip its IPv6 part with one warning each.
        """
        from flannel_tw.tools.lab.run import _child_env, daemon_argv
        ds = make_dualstack(self, HOSTS, backend="vxlan", start=[1, 2])
        os.makedirs(os.path.join(ds.workdir, "h3"), exist_ok=True)
        ds.procs[3] = ds.lab.spawn(ds.lab.host_ns(3), daemon_argv(ds.workdir, 3, ds.etcd_url,
                                                                   ds.lab.host_ip(3)),
                                   os.path.join(ds.workdir, "h3.out"), env=_child_env(),
                                   cwd=ds.workdir)
        ok = wait_for(lambda: "Running with lease" in ds.log(3) or ds.procs[3].poll(), 30)
        self.assertTrue(ok, ds.logs(3))
        from flannel_tw.tools.lab.run import wait_subnet_files
        ds.envs.update(wait_subnet_files(ds.workdir, {3: ds.procs[3]}, 30))
        c3 = ds.lab.add_container(3, os.path.join(ds.workdir, "h3", "subnet.env"))
        self.assertIn("no IPv6 address chosen", ds.log(3))
        self.assertNotIn("flannel-v6.1", ds.sh(ds.lab.host_ns(3), "ip", "link"))
        for i in (1, 2):
            ds.assert_reaches(ds.c(i).ns, c3.addr)
            ds.assert_reaches(c3.ns, ds.c(i).addr)
        ds.assert_matrix(families=(4, 6), hosts=[1, 2])
        for i in (1, 2):
            skipped = [l for l in ds.log(i).splitlines() if "skipping the IPv6 part" in l]
            if ds.subnet6(3) is not None:        # the lease took a v6 subnet: said once
                self.assertEqual(len(skipped), 1, ds.log(i))
                self.assertIn("no PublicIPv6", skipped[0])
            else:
                self.assertEqual(skipped, [])
        say("host without IPv6: lease v6 part %s; v4 everywhere, v6 between h1 and h2",
            ds.subnet6(3))
        no_crash(self, ds, HOSTS)

    def test_lease_with_bad_backend_v6_data(self):
        """
        A dual-stack lease whose BackendV6Data is bad: flanneld v0.20 skips the whole
        event; the daemons route its IPv4 part and skip the IPv6 part with one warning.
        """
        ds = make_dualstack(self, HOSTS, backend="vxlan")
        ds.assert_matrix(families=(4, 6))
        ds.stop(3)
        s3, s3v6 = ds.subnet(3), ds.subnet6(3)
        key3 = "%s-%d&%s-%d" % (s3.network_address, s3.prefixlen, s3v6.network_address,
                                s3v6.prefixlen)
        value = etcd_get(ds, None)[key3]
        value["BackendV6Data"] = {"VNI": 1, "VtepMAC": "not-a-mac"}
        url = "http://%s:2379/v2/keys%s/subnets/%s" % (ds.lab.gateway, DEFAULT_PREFIX, key3)
        self.assertEqual(ds.py(ds.lab.switch_ns, ETCD, "PUT", url,
                               json.dumps(value, separators=(",", ":"))).stdout.strip(), "200")
        for i in (1, 2):
            h = ds.lab.host_ns(i)
            ok = wait_for(lambda: "skipping the IPv6 part %s" % s3v6 in ds.log(i), 20)
            self.assertTrue(ok, ds.logs(i))
            self.assertEqual(ds.log(i).count("skipping the IPv6 part %s" % s3v6), 1)
            self.assertNotIn(str(s3v6), ds.sh(h, "ip", "-6", "route"))
            self.assertIn(str(s3), ds.sh(h, "ip", "route"))            # IPv4 part kept
        ds.assert_matrix(families=(4, 6), hosts=[1, 2])
        no_crash(self, ds, [1, 2])


V3_REQUEST = r"""
import base64, json, sys, urllib.request
o = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST")
print(o.open(req, timeout=5).read().decode())
"""


def b64(text):
    import base64
    return base64.b64encode(text.encode()).decode()


class V3DualStackTests(unittest.TestCase):
    """The vxlan dual-stack overlay with the config and leases in etcd's v3 keyspace."""
    skip = SKIP

    def v3(self, ds, path, body):
        url = "http://%s:2379%s" % (ds.lab.gateway, path)
        return json.loads(ds.py(ds.lab.switch_ns, V3_REQUEST, url, json.dumps(body)).stdout)

    def test_three_hosts_on_v3(self):
        from flannel_tw.testing.dualstack import DualStackLab
        import base64
        config = dualstack_config("vxlan")
        ds = DualStackLab(self, HOSTS, config)
        self.v3(ds, "/v3/kv/put", {"key": b64(DEFAULT_PREFIX + "/config"), "value": b64(config)})
        url = "http://%s:2379/v2/keys%s/config" % (ds.lab.gateway, DEFAULT_PREFIX)
        self.assertEqual(ds.py(ds.lab.switch_ns, ETCD, "DELETE", url).stdout.strip(), "200")
        ds.start(HOSTS, extra=["--etcd-api=v3"])
        ds.assert_matrix(families=(4, 6))
        prefix = DEFAULT_PREFIX + "/subnets/"
        answer = self.v3(ds, "/v3/kv/range", {"key": b64(prefix),
                                              "range_end": b64(prefix[:-1] + "0")})
        kvs = {base64.b64decode(kv["key"]).decode()[len(prefix):]:
               json.loads(base64.b64decode(kv["value"]).decode()) for kv in answer["kvs"]}
        self.assertEqual(len(kvs), 3, kvs)
        for i in HOSTS:
            key = "%s-%d&%s-%d" % (ds.subnet(i).network_address, ds.subnet(i).prefixlen,
                                   ds.subnet6(i).network_address, ds.subnet6(i).prefixlen)
            value = kvs[key]
            self.assertEqual(value["PublicIPv6"], str(ds.lab.host_ip6(i)))
            self.assertEqual(set(value["BackendV6Data"]), {"VNI", "VtepMAC"})
            self.assertIn("Using etcd's v3 keyspace", ds.log(i))
        no_crash(self, ds, HOSTS)
