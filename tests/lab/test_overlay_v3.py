"""The three data planes on etcd's v3 keyspace (issue 14), end to end on real kernels:
the config and the leases only in v3 (a real etcd 3.5 in the lab's switch namespace),
one ``twistd flannel --etcd-api=v3`` per host namespace, a container behind each host.

Per backend, one lab runs a sequence of checks: three hosts ping each other; the leases
are in v3 in flanneld v0.20's form byte for byte, each on its own 24 h v3 lease, and
nothing is in v2; a renewal the way flanneld v0.20 does it (a blind put with a new lease,
the old lease revoked) changes nothing on the data path; a host that leaves (its key
deleted) is dropped by the others.

For vxlan and host-gw, a fourth host behaves as flanneld v0.20 does on v3 (there is no
flanneld binary on this machine): its lease is created with v0.20's txn (version == 0,
its own granted lease, v0.20's value) and its kernel state is what v0.20 installs for
its peers (read from etcd), set up by the test with ``ip``. The flannel-tw hosts route
to it and it to them, and its subnet is never taken.

All traffic goes only to addresses inside namespaces the test created; teardown is
registered before anything is made."""

import base64
import os
from ipaddress import IPv4Network

from twisted.trial import unittest

from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.testing.kernel_overlay import KernelOverlay, SETTLE
from flannel_tw.testing.overlay import SKIP, wait_for

SUBNETS = DEFAULT_PREFIX + "/subnets"
FLANNELD = 4                       # the host that behaves as flanneld v0.20
FLANNELD_SUBNET = IPv4Network("10.5.200.0/24")
FLANNELD_MAC = "0a:5e:00:00:02:04"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text or "").decode()


def key_of(subnet):
    return "%s-%d" % (subnet.network_address, subnet.prefixlen)


class _OnV3:
    maxDiff = None
    skip = SKIP
    backend = None

    def v0_20_value(self, ov, i, mac=None):
        """flanneld v0.20.2's value for host i (flanneld-v0.20-v3.md A2)."""
        head = '{"PublicIP":"%s","PublicIPv6":null' % ov.lab.host_ip(i)
        if self.backend == "udp":
            # flannel-tw's udp hosts advertise GSO offload to each other (README, "Where
            # flannel-tw differs"); flanneld ignores BackendData on udp
            return head + ',"BackendData":{"FlannelTW":{"Offload":2}}}'
        if self.backend == "host-gw":
            return head + ',"BackendType":"host-gw"}'
        return head + ',"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}' % (
            mac or ov.mac(i))

    def leases(self, ov):
        """{key name: (value, lease ID)} of the v3 keyspace."""
        answer = ov.v3("/v3/kv/range", {"key": b64(SUBNETS), "range_end": b64(DEFAULT_PREFIX
                                                                              + "/subnett")})
        return {unb64(kv["key"]).rsplit("/", 1)[1]: (unb64(kv.get("value")), kv.get("lease"))
                for kv in answer.get("kvs") or []}

    def ttl(self, ov, lease):
        return int(ov.v3("/v3/lease/timetolive", {"ID": lease})["TTL"])

    def assert_matrix(self, ov, hosts):
        for i in hosts:
            for j in hosts:
                if i != j:
                    ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)

    def test_three_hosts_on_v3(self):
        ov = KernelOverlay(self, self.backend, keyspace="v3")
        ov.start(1, 2, 3)
        self.assert_matrix(ov, (1, 2, 3))

        # the leases: v3 only, v0.20's values, each on its own 24 h lease
        leases = self.leases(ov)
        self.assertEqual({name: value for name, (value, _) in leases.items()},
                         {key_of(ov.subnet(i)): self.v0_20_value(ov, i) for i in (1, 2, 3)})
        ids = [lease for _, lease in leases.values()]
        self.assertEqual(len(set(ids)), 3)
        for lease in ids:
            self.assertTrue(86000 <= self.ttl(ov, lease) <= 86400, lease)
        self.assertEqual(ov.etcd("GET", ""), 404)      # nothing in the v2 keyspace

        self.mixed(ov)

        # h3 leaves: its key deleted in v3; the others drop it
        name3 = key_of(ov.subnet(3))
        ov.stop(3)
        ov.v3("/v3/kv/deleterange", {"key": b64(SUBNETS + "/" + name3)})
        self.assertTrue(wait_for(lambda: not ov.lab.ping(ov.c(1).ns, ov.c(3).addr, count=1,
                                                         timeout=1), SETTLE),
                        "c1 still reaches c3 after h3's lease was deleted\n" + ov.logs())
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        if self.backend != "udp":
            ov.assert_entries(1, [2] + self.mixed_hosts)

    mixed_hosts = []

    def mixed(self, ov):
        """A host that behaves as flanneld v0.20 joins (vxlan and host-gw)."""


class _WithFlanneld(_OnV3):
    mixed_hosts = [FLANNELD]

    def mixed(self, ov):
        lab = ov.lab
        lab.add_host(FLANNELD)
        ns, ip = lab.host_ns(FLANNELD), lab.host_ip(FLANNELD)
        # its kernel first, as flanneld v0.20 sets it up before it writes the lease
        if self.backend == "vxlan":
            ov.sh(ns, "ip", "link", "add", "flannel.1", "address", FLANNELD_MAC, "type",
                  "vxlan", "id", "1", "local", str(ip), "dev", "eth0", "nolearning",
                  "dstport", "8472")
            ov.sh(ns, "ip", "addr", "add", "%s/32" % FLANNELD_SUBNET.network_address, "dev",
                  "flannel.1")
            ov.sh(ns, "ip", "link", "set", "flannel.1", "up")
        # its lease: v0.20's create (txn on version == 0 with a granted 24 h lease)
        lease = ov.v3("/v3/lease/grant", {"TTL": "86400"})["ID"]
        key = b64(SUBNETS + "/" + key_of(FLANNELD_SUBNET))
        value = self.v0_20_value(ov, FLANNELD, mac=FLANNELD_MAC)
        answer = ov.v3("/v3/kv/txn", {
            "compare": [{"key": key, "target": "VERSION", "result": "EQUAL", "version": "0"}],
            "success": [{"request_put": {"key": key, "value": b64(value), "lease": lease}}]})
        self.assertTrue(answer.get("succeeded"), answer)
        # its peers, from etcd, as v0.20 installs them
        for i in (1, 2, 3):
            s = ov.subnet(i)
            if self.backend == "vxlan":
                gw = str(s.network_address)
                ov.sh(ns, "ip", "neigh", "replace", gw, "lladdr", ov.mac(i), "dev",
                      "flannel.1", "nud", "permanent")
                ov.sh(ns, "bridge", "fdb", "replace", ov.mac(i), "dev", "flannel.1", "dst",
                      str(lab.host_ip(i)), "self", "permanent")
                ov.sh(ns, "ip", "route", "replace", str(s), "via", gw, "dev", "flannel.1",
                      "onlink")
            else:
                ov.sh(ns, "ip", "route", "replace", str(s), "via", str(lab.host_ip(i)), "dev",
                      "eth0")
        env = os.path.join(ov.workdir, "flanneld-subnet.env")
        mtu = 1450 if self.backend == "vxlan" else 1500
        with open(env, "w") as f:
            f.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=%s/%d\nFLANNEL_MTU=%d\n"
                    "FLANNEL_IPMASQ=false\n" % (FLANNELD_SUBNET.network_address + 1,
                                                FLANNELD_SUBNET.prefixlen, mtu))
        lab.add_container(FLANNELD, env)
        ov.envs[FLANNELD] = {"FLANNEL_SUBNET": "%s/%d" % (FLANNELD_SUBNET.network_address + 1,
                                                         FLANNELD_SUBNET.prefixlen)}
        for i in (1, 2, 3):
            ov.assert_reaches(ov.c(i).ns, ov.c(FLANNELD).addr)
            ov.assert_reaches(ov.c(FLANNELD).ns, ov.c(i).addr)
        ov.assert_entries(1, [2, 3, FLANNELD])
        # our hosts never took its subnet, and its value is as it wrote it
        self.assertNotIn(FLANNELD_SUBNET, [ov.subnet(i) for i in (1, 2, 3)])
        self.assertEqual(self.leases(ov)[key_of(FLANNELD_SUBNET)], (value, lease))

        # it renews the way flanneld v0.20 renews: a blind put on a new lease; the old
        # lease revoked (or expiring) takes nothing with it, and nothing moves
        new = ov.v3("/v3/lease/grant", {"TTL": "86400"})["ID"]
        ov.v3("/v3/kv/put", {"key": key, "value": b64(value), "lease": new})
        ov.v3("/v3/lease/revoke", {"ID": lease})
        self.assertEqual(self.leases(ov)[key_of(FLANNELD_SUBNET)], (value, new))
        for i in (1, 2, 3):
            ov.assert_reaches(ov.c(i).ns, ov.c(FLANNELD).addr)
        ov.assert_entries(2, [1, 3, FLANNELD])


class UdpOnV3Tests(_OnV3, unittest.TestCase):
    backend = "udp"


class VxlanOnV3Tests(_WithFlanneld, unittest.TestCase):
    backend = "vxlan"


class HostGwOnV3Tests(_WithFlanneld, unittest.TestCase):
    backend = "host-gw"
