"""flanneld v0.20's ip6tables rules with the real ip6tables (nf_tables or legacy) inside a
fresh network namespace: what ``ip6tables -S`` shows after a start, a restart, a deleted
rule, a flushed chain and a moved v6 subnet; then masquerading at work on v6 traffic
between two namespaces (the source rewritten to the host's address)."""

import os
import shutil
import subprocess
import uuid

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from flannel_tw.host.iptables import TrafficRules
from flannel_tw.testing import skips
from flannel_tw.testing.iptables_fixtures import (FORWARD6_S, FORWARD_S, MASQ6_S, MASQ_S, N,
                                                N6, S, S6)



class RealIp6tablesTests(unittest.TestCase):
    skip = skips.missing(root=True, tools=("ip", "iptables", "ip6tables"))

    def setUp(self):
        self.ns = "flt6" + uuid.uuid4().hex[:8]
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns])

    def runner(self, binary, ns=None):
        def run(args):
            d = utils.getProcessOutputAndValue(
                shutil.which("ip"), ["netns", "exec", ns or self.ns, binary] + list(args),
                env=dict(os.environ), reactor=reactor)
            return d.addCallback(lambda r: (r[2], r[1].decode()))
        return run

    def rules(self, ns=None, subnet6=S6, **kw):
        r = TrafficRules(reactor, N, S, True, runner=self.runner("iptables", ns),
                         runner6=self.runner("ip6tables", ns), network6=N6, subnet6=subnet6,
                         interval=3600, **kw)
        self.addCleanup(r.stop)
        return r

    def dump(self, table, binary="ip6tables", ns=None):
        out = subprocess.run(["ip", "netns", "exec", ns or self.ns, binary, "-t", table, "-S"],
                             check=True, capture_output=True, text=True).stdout
        return [l for l in out.splitlines() if l.startswith("-A")]

    def ip6t(self, *args):
        subprocess.run(["ip", "netns", "exec", self.ns, "ip6tables"] + list(args), check=True)

    @defer.inlineCallbacks
    def test_start_restart_restore(self):
        r = self.rules()
        yield r.start()
        self.assertTrue(r.random_fully6)       # iptables >= 1.6.2 here
        self.assertEqual(self.dump("nat"), MASQ6_S)
        self.assertEqual(self.dump("filter"), FORWARD6_S)
        self.assertEqual(self.dump("nat", "iptables"), MASQ_S)
        self.assertEqual(self.dump("filter", "iptables"), FORWARD_S)
        again = self.rules()
        restored = yield again.check()
        self.assertEqual(restored, 0)
        self.assertEqual(self.dump("nat"), MASQ6_S)
        # one rule deleted, then the whole FORWARD jump and chain flushed
        self.ip6t("-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", N6, "!", "-d", "ff00::/8",
                  "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE",
                  "--random-fully")
        self.ip6t("-F", "FORWARD")
        self.ip6t("-F", "FLANNEL-FWD")
        restored = yield again.check()
        self.assertEqual(restored, 2)
        self.assertEqual(self.dump("nat"), MASQ6_S)
        self.assertEqual(self.dump("filter"), FORWARD6_S)

    @defer.inlineCallbacks
    def test_chains_deleted_are_recreated(self):
        r = self.rules()
        yield r.start()
        self.ip6t("-t", "nat", "-F")
        self.ip6t("-t", "nat", "-X", "FLANNEL-POSTRTG")
        self.assertEqual(self.dump("nat"), [])
        restored = yield r.check()
        self.assertEqual(restored, 1)
        self.assertEqual(self.dump("nat"), MASQ6_S)

    @defer.inlineCallbacks
    def test_update_moves_the_v6_subnet(self):
        r = self.rules()
        yield r.start()
        yield r.update(S, "fd00:10:5:99::/64")
        self.assertEqual(self.dump("nat"), [l.replace(S6, "fd00:10:5:99::/64") for l in MASQ6_S])
        self.assertEqual(self.dump("nat", "iptables"), MASQ_S)

    @defer.inlineCallbacks
    def test_masquerade_rewrites_v6_sources(self):
        """A 'container' fd00:10:5:22::2 behind this namespace pings an outside host
        2001:db8:1::2: the outside host sees the router's address, not the container's
        (FLANNEL-POSTRTG's ``-s N6 ! -d ff00::/8 -j MASQUERADE``)."""
        router, inside, outside = self.ns, self.ns + "i", self.ns + "o"
        for ns in (inside, outside):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.addCleanup(subprocess.run, ["ip", "netns", "del", ns])

        def sh(ns, *args):
            subprocess.run(["ip", "-n", ns] + list(args), check=True, capture_output=True)
        for ns in (router, inside, outside):
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                            "net.ipv6.conf.all.accept_dad=0",
                            "net.ipv6.conf.default.accept_dad=0"], check=True)
        sh(router, "link", "add", "in0", "type", "veth", "peer", "name", "eth0", "netns", inside)
        sh(router, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns",
           outside)
        sh(router, "addr", "add", "fd00:10:5:22::1/64", "dev", "in0", "nodad")
        sh(router, "addr", "add", "2001:db8:1::1/64", "dev", "out0", "nodad")
        sh(inside, "addr", "add", "fd00:10:5:22::2/64", "dev", "eth0", "nodad")
        sh(outside, "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad")
        for ns, dev in ((router, "in0"), (router, "out0"), (inside, "eth0"), (outside, "eth0")):
            sh(ns, "link", "set", dev, "up")
        sh(inside, "-6", "route", "add", "default", "via", "fd00:10:5:22::1")
        subprocess.run(["ip", "netns", "exec", router, "sysctl", "-q", "-w",
                        "net.ipv6.conf.all.forwarding=1"], check=True)
        # no route back to the container's network from outside: only a masqueraded
        # packet can be answered
        def ping():
            return subprocess.run(["ip", "netns", "exec", inside, "ping", "-n", "-c", "1",
                                   "-W", "2", "2001:db8:1::2"], capture_output=True).returncode
        self.assertNotEqual(ping(), 0)
        yield self.rules().start()
        self.assertEqual(ping(), 0)
        self.assertIn(MASQ6_S[3], self.dump("nat"))     # and that rule counted the packet
        out = subprocess.run(["ip", "netns", "exec", router, "ip6tables", "-t", "nat", "-L",
                              "FLANNEL-POSTRTG", "-v", "-n", "-x"], check=True,
                             capture_output=True, text=True).stdout
        masq = [l for l in out.splitlines() if "MASQUERADE" in l and "ff00::/8" in l]
        self.assertEqual(len(masq), 1, out)
        self.assertGreaterEqual(int(masq[0].split()[0]), 1, out)
