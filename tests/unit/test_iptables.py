"""flanneld's iptables rules: the rule lists (pure), TrafficRules' check-and-restore logic
against an in-memory iptables on a task.Clock, and the real ``iptables`` binary inside a
private network namespace (root only)."""

from twisted.internet import defer, task
from twisted.trial import unittest

from flannel_tw.host.iptables import TrafficRules, forward_rules, masq_rules, rule_argv
from flannel_tw.testing.kernel_fixtures import logged
from flannel_tw.testing.iptables_fixtures import FORWARD_S, MASQ_S, N, S


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
