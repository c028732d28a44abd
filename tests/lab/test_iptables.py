"""flanneld's iptables rules: the rule lists (pure), TrafficRules' check-and-restore logic

The lab tests (RealIptablesTests); the whole description is in tests/unit/test_iptables.py."""

import os
import shutil
import subprocess
import uuid

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from flannel_tw.host.iptables import IptablesError, ProcessRunner, TrafficRules
from flannel_tw.testing.iptables_fixtures import FORWARD_S, MASQ_S, N, S
from flannel_tw.testing import skips


class RealIptablesTests(unittest.TestCase):
    """The real iptables binary (nf_tables or legacy) inside a fresh namespace."""

    skip = skips.missing(root=True, tools=("ip", "iptables"))

    def setUp(self):
        self.ns = "flti" + uuid.uuid4().hex[:8]
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "del", self.ns])

    def runner(self, args):
        d = utils.getProcessOutputAndValue(
            shutil.which("ip"), ["netns", "exec", self.ns, "iptables"] + list(args),
            env=dict(os.environ), reactor=reactor)
        return d.addCallback(lambda r: (r[2], r[1].decode()))

    def dump(self, table):
        out = subprocess.run(["ip", "netns", "exec", self.ns, "iptables", "-t", table, "-S"],
                             check=True, capture_output=True, text=True).stdout
        return [l for l in out.splitlines() if l.startswith("-A")]

    @defer.inlineCallbacks
    def test_start_restart_restore(self):
        r = TrafficRules(reactor, N, S, True, runner=self.runner, interval=3600)
        self.addCleanup(r.stop)
        yield r.start()
        self.assertEqual(self.dump("nat"), MASQ_S)
        self.assertEqual(self.dump("filter"), FORWARD_S)
        again = TrafficRules(reactor, N, S, True, runner=self.runner, interval=3600)
        self.addCleanup(again.stop)
        yield again.start()
        self.assertEqual(self.dump("nat"), MASQ_S)
        subprocess.run(["ip", "netns", "exec", self.ns, "iptables", "-D", "FORWARD", "-d", N,
                        "-j", "ACCEPT"], check=True)
        restored = yield again.check()
        self.assertEqual(restored, 1)
        self.assertEqual(self.dump("filter"), FORWARD_S)
        self.assertEqual(self.dump("nat"), MASQ_S)

    @defer.inlineCallbacks
    def test_missing_binary(self):
        run = ProcessRunner(reactor, binary="no-such-iptables-%s" % self.ns)
        yield self.assertFailure(run(["-S"]), IptablesError)
