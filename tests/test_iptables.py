"""
flanneld's iptables rules: the rule lists (pure), TrafficRules' check-and-restore logic
against an in-memory iptables on a task.Clock, and the real ``iptables`` binary inside a
private network namespace (root only).
"""
import os
import shutil
import subprocess
import uuid

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest

from flannel_tw.iptables import (
    IptablesError, ProcessRunner, TrafficRules, forward_rules, masq_rules, rule_argv)

from tests.test_vxlan import logged

N, S = "10.5.0.0/16", "10.5.34.0/24"
MASQ_S = [
    "-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN",
    "-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
    "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.34.0/24 -j RETURN",
    "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE",
]
FORWARD_S = ["-A FORWARD -s 10.5.0.0/16 -j ACCEPT", "-A FORWARD -d 10.5.0.0/16 -j ACCEPT"]


class FakeIptables:
    """iptables -C/-A/-D on in-memory chains; every call is recorded in ``calls``."""

    def __init__(self):
        self.chains = {}
        self.calls = []
        self.broken = None      # (code, stderr) to answer every call with

    def __call__(self, args):
        self.calls.append(list(args))
        if self.broken is not None:
            return defer.succeed(self.broken)
        assert args[:3] == ["-w", "5", "-t"], args
        table, op, chain, rule = args[3], args[4], args[5], tuple(args[6:])
        rules = self.chains.setdefault((table, chain), [])
        if op == "-C":
            return defer.succeed((0 if rule in rules else 1, ""))
        if op == "-A":
            rules.append(rule)
            return defer.succeed((0, ""))
        if op == "-D":
            if rule in rules:
                rules.remove(rule)
                return defer.succeed((0, ""))
            return defer.succeed((1, "Bad rule"))
        raise AssertionError(op)

    def dump(self, table, chain):
        return ["-A %s %s" % (chain, " ".join(r)) for r in self.chains.get((table, chain), [])]


class RuleListTests(unittest.TestCase):
    def test_masq_rules_in_order(self):
        self.assertEqual(["-A %s %s" % (c, " ".join(a)) for _, c, a in masq_rules(N, S)], MASQ_S)
        self.assertEqual({t for t, _, _ in masq_rules(N, S)}, {"nat"})

    def test_forward_rules(self):
        self.assertEqual(["-A %s %s" % (c, " ".join(a)) for _, c, a in forward_rules(N)],
                         FORWARD_S)
        self.assertEqual({t for t, _, _ in forward_rules(N)}, {"filter"})

    def test_argv(self):
        self.assertEqual(rule_argv("-C", forward_rules(N)[0]),
                         ["-w", "5", "-t", "filter", "-C", "FORWARD", "-s", N, "-j", "ACCEPT"])


class TrafficRulesTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ipt = FakeIptables()

    def rules(self, ip_masq=True, subnet=S, forward=True):
        r = TrafficRules(self.clock, N, subnet, ip_masq, runner=self.ipt, forward=forward)
        self.addCleanup(r.stop)
        return r

    def test_start_appends_in_order(self):
        self.assertIsNone(self.successResultOf(self.rules().start()))
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), MASQ_S)
        self.assertEqual(self.ipt.dump("filter", "FORWARD"), FORWARD_S)

    def test_without_ip_masq_only_forward(self):
        self.successResultOf(self.rules(ip_masq=False).start())
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), [])
        self.assertEqual(self.ipt.dump("filter", "FORWARD"), FORWARD_S)

    def test_forward_rules_off_only_masq(self):
        """--iptables-forward-rules=false: FORWARD is never touched, not even checked."""
        self.successResultOf(self.rules(forward=False).start())
        self.clock.advance(5)
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), MASQ_S)
        self.assertEqual(self.ipt.dump("filter", "FORWARD"), [])
        self.assertFalse([c for c in self.ipt.calls if "FORWARD" in c])

    def test_restart_appends_nothing(self):
        first = self.rules()
        self.successResultOf(first.start())
        first.stop()
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), MASQ_S)   # stop leaves them
        del self.ipt.calls[:]
        self.successResultOf(self.rules().start())
        self.assertEqual({c[4] for c in self.ipt.calls}, {"-C"})
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), MASQ_S)
        self.assertEqual(self.ipt.dump("filter", "FORWARD"), FORWARD_S)

    def test_missing_rule_restored_within_5s_without_duplicates(self):
        r = self.rules()
        log = logged(r)
        self.successResultOf(r.start())
        self.assertEqual(r.restored, 2)     # both sets were appended at start
        nat = self.ipt.chains[("nat", "POSTROUTING")]
        del nat[2]
        nat.append(nat[0])                  # and a stray duplicate of another rule
        self.clock.advance(4.9)
        self.assertEqual(len(self.ipt.dump("nat", "POSTROUTING")), 4)
        self.clock.advance(0.1)
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), MASQ_S)
        self.assertEqual(self.ipt.dump("filter", "FORWARD"), FORWARD_S)
        self.assertEqual(r.restored, 3)
        self.assertTrue(any("Some iptables rules are missing" in m for _, m in log))

    def test_first_start_says_adding_not_missing(self):
        """A fresh host has none of the rules: that is no fault, and the log says so."""
        r = self.rules()
        log = logged(r)
        self.successResultOf(r.start())
        messages = [m for _, m in log]
        self.assertFalse([m for m in messages if "missing" in m], messages)
        adding = [m for m in messages if m.startswith("Adding iptables rules: ")]
        self.assertEqual(len(adding), 2, messages)      # the masq set and the forward set
        self.assertIn("-t filter -A FORWARD -s 10.5.0.0/16 -j ACCEPT", adding[1])

    def test_update_moves_the_subnet_rule(self):
        r = self.rules()
        self.successResultOf(r.start())
        self.successResultOf(r.update("10.5.99.0/24"))
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"),
                         [m.replace("10.5.34.0/24", "10.5.99.0/24") for m in MASQ_S])
        self.assertEqual(self.ipt.dump("filter", "FORWARD"), FORWARD_S)

    def test_errors_logged_once_and_retried(self):
        self.ipt.broken = (4, "iptables: Resource temporarily unavailable.")
        r = self.rules()
        log = logged(r)
        self.assertIsNone(self.successResultOf(r.start()))     # never fails the daemon
        self.clock.advance(5)
        self.clock.advance(5)
        errors = [m for level, m in log if level == "error"]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("Resource temporarily unavailable", errors[0])
        self.ipt.broken = None
        self.clock.advance(5)
        self.assertEqual(self.ipt.dump("nat", "POSTROUTING"), MASQ_S)
        self.assertTrue(any("in place again" in m for _, m in log))

    def test_stop(self):
        r = self.rules()
        self.successResultOf(r.start())
        r.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


def _root_skip():
    if os.geteuid() != 0:
        return "needs root (a private network namespace)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return "needs %s" % tool
    return None


class ProcessRunnerLookupTests(unittest.TestCase):
    """The iptables binary is looked up with shutil.which once, not on every call (which
    stats each PATH entry on the reactor thread), and again only when it was missing."""

    def setUp(self):
        self.which_calls = []
        self.where = "/sbin/iptables"
        self.spawned = []
        self.exit_code = 0

        def which(name):
            self.which_calls.append(name)
            return self.where

        def spawn(path, args, env=None, reactor=None):
            self.spawned.append((path, list(args)))
            return defer.succeed((b"", b"", self.exit_code))
        import flannel_tw.iptables as iptables_mod
        self.patch(iptables_mod.shutil, "which", which)
        self.patch(iptables_mod.utils, "getProcessOutputAndValue", spawn)

    def test_which_once_across_many_periods(self):
        clock = task.Clock()
        rules = TrafficRules(clock, N, S, True, runner=ProcessRunner(clock))
        rules.start()
        for _ in range(20):
            clock.advance(rules.interval)
        rules.stop()
        self.assertEqual(len(self.spawned), 21 * 6)      # 6 rules checked each period
        self.assertEqual(self.which_calls, ["iptables"])
        self.assertEqual({path for path, _ in self.spawned}, {"/sbin/iptables"})

    def test_missing_binary_is_looked_up_again(self):
        run = ProcessRunner(task.Clock())
        self.where = None
        self.failureResultOf(run(["-S"]), IptablesError)
        self.failureResultOf(run(["-S"]), IptablesError)
        self.where = "/usr/sbin/iptables"
        self.assertEqual(self.successResultOf(run(["-S"])), (0, ""))
        self.assertEqual(self.successResultOf(run(["-S"])), (0, ""))
        self.assertEqual(len(self.which_calls), 3)
        self.assertEqual([p for p, _ in self.spawned], ["/usr/sbin/iptables"] * 2)

    def test_binary_that_vanished_is_looked_up_again(self):
        """A failing run whose cached binary is gone fails clearly; the next run looks
        the binary up again."""
        binary = os.path.abspath(self.mktemp())
        with open(binary, "w"):
            pass
        os.chmod(binary, 0o755)
        self.where = binary
        run = ProcessRunner(task.Clock())
        self.assertEqual(self.successResultOf(run(["-S"])), (0, ""))
        self.exit_code = 1                     # e.g. exec failed in the child
        self.assertEqual(self.successResultOf(run(["-C"])), (1, ""))   # still there
        os.unlink(binary)
        f = self.failureResultOf(run(["-C"]), IptablesError)
        self.assertIn(binary, f.getErrorMessage())
        self.where = "/usr/sbin/iptables"
        self.exit_code = 0
        self.assertEqual(self.successResultOf(run(["-S"])), (0, ""))
        self.assertEqual(len(self.which_calls), 2)

    def test_spawn_error_is_looked_up_again(self):
        """posix_spawn raises at once when the cached binary is gone."""
        run = ProcessRunner(task.Clock())
        self.assertEqual(self.successResultOf(run(["-S"])), (0, ""))
        import flannel_tw.iptables as iptables_mod

        def gone(path, args, env=None, reactor=None):
            raise FileNotFoundError(2, "No such file or directory", path)
        self.patch(iptables_mod.utils, "getProcessOutputAndValue", gone)
        f = self.failureResultOf(run(["-S"]), IptablesError)
        self.assertIn("/sbin/iptables", f.getErrorMessage())
        self.failureResultOf(run(["-S"]), IptablesError)
        self.assertEqual(len(self.which_calls), 2)       # looked up again after the failure


class RealIptablesTests(unittest.TestCase):
    """The real iptables binary (nf_tables or legacy) inside a fresh namespace."""

    skip = _root_skip()

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
