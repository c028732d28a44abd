"""flanneld v0.20's ip6tables rules (dual-stack, issue 15): the rule lists (pure) and
TrafficRules' ip6tables sets (chains FLANNEL-POSTRTG/FLANNEL-FWD, their jumps, the
--random-fully probe, check-and-restore, a moved v6 subnet) against in-memory iptables on
a task.Clock. The real ip6tables: tests/lab/test_ip6tables.py."""

from twisted.internet import defer, task
from twisted.trial import unittest

from flannel_tw.host.iptables import TrafficRules, forward6_rules, masq6_rules
from flannel_tw.testing.kernel_fixtures import logged
from flannel_tw.testing.iptables_fixtures import (FORWARD6_S, FORWARD_S, MASQ6_S, MASQ_S, N,
                                                N6, S, S6)



def _text(args):
    return " ".join('"%s"' % a if " " in a else a for a in args)


class FakeTables:
    """iptables -C/-A/-I/-D/-N on in-memory chains (built-in chains exist; others after
    -N); every call recorded in ``calls``. ``random_fully=False``: that option is
    unknown (exit 2)."""

    BUILTIN = {("nat", "POSTROUTING"), ("filter", "FORWARD")}

    def __init__(self, random_fully=True):
        self.chains = {k: [] for k in self.BUILTIN}
        self.calls = []
        self.random_fully = random_fully
        self.broken = None

    def __call__(self, args):
        self.calls.append(list(args))
        if self.broken is not None:
            return defer.succeed(self.broken)
        assert args[:3] == ["-w", "5", "-t"], args
        table, op, chain, rule = args[3], args[4], args[5], tuple(args[6:])
        if "--random-fully" in rule and not self.random_fully:
            return defer.succeed((2, 'unknown option "--random-fully"'))
        if op == "-N":
            if (table, chain) in self.chains:
                return defer.succeed((1, "ip6tables: Chain already exists."))
            self.chains[(table, chain)] = []
            return defer.succeed((0, ""))
        rules = self.chains.get((table, chain))
        if rules is None:
            return defer.succeed((1, "No chain/target/match by that name"))
        if op == "-C":
            return defer.succeed((0 if rule in rules else 1, ""))
        if op == "-A":
            rules.append(rule)
        elif op == "-I":
            rules.insert(0, rule)
        elif op == "-D":
            if rule not in rules:
                return defer.succeed((1, "Bad rule"))
            rules.remove(rule)
        else:
            raise AssertionError(op)
        return defer.succeed((0, ""))

    def dump(self, table):
        """Like ``-S`` of C{table}: built-in chains first, then ours."""
        out = []
        for (t, chain), rules in sorted(self.chains.items(),
                                        key=lambda kv: (kv[0] not in self.BUILTIN, kv[0])):
            if t == table:
                out += ["-A %s %s" % (chain, _text(r)) for r in rules]
        return out


class RuleListTests(unittest.TestCase):
    def test_masq6_rules(self):
        rules = masq6_rules(N6, S6)
        lines = ["-A %s %s" % (c, _text(a)) for _, c, a in rules]
        # the chain's rules in flanneld's order, then the jump
        self.assertEqual(lines, MASQ6_S[1:] + MASQ6_S[:1])
        self.assertEqual({t for t, _, _ in rules}, {"nat"})
        plain = ["-A %s %s" % (c, _text(a)) for _, c, a in masq6_rules(N6, S6, False)]
        self.assertEqual(plain, [l.replace(" --random-fully", "") for l in lines])

    def test_forward6_rules(self):
        rules = forward6_rules(N6)
        self.assertEqual(["-A %s %s" % (c, _text(a)) for _, c, a in rules],
                         FORWARD6_S[1:] + FORWARD6_S[:1])
        self.assertEqual({t for t, _, _ in rules}, {"filter"})

    def test_hostile_networks_refused(self):
        for bad in ["fd00::1/48", "10.5.0.0/16", "fd00::/48; -j ACCEPT", "fd00::/48 -j DROP"]:
            self.assertRaises(ValueError, masq6_rules, bad, S6)
            self.assertRaises(ValueError, forward6_rules, bad)


class TrafficRules6Tests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.ipt = FakeTables()
        self.ip6t = FakeTables()

    def rules(self, ip_masq=True, forward=True, network6=N6, subnet6=S6):
        r = TrafficRules(self.clock, N, S, ip_masq, runner=self.ipt, forward=forward,
                         network6=network6, subnet6=subnet6, runner6=self.ip6t)
        self.addCleanup(r.stop)
        return r

    def test_start_adds_both_families(self):
        r = self.rules()
        self.assertIsNone(self.successResultOf(r.start()))
        self.assertEqual(self.ipt.dump("nat"), MASQ_S)
        self.assertEqual(self.ipt.dump("filter"), FORWARD_S)
        self.assertEqual(self.ip6t.dump("nat"), MASQ6_S)
        self.assertEqual(self.ip6t.dump("filter"), FORWARD6_S)
        self.assertTrue(r.random_fully6)
        # jumps go first in the built-in chain, after the chain's own rules exist
        ops = [c[4] for c in self.ip6t.calls if c[4] in ("-N", "-A", "-I")]
        self.assertEqual(ops, ["-N"] + ["-A"] * 5 + ["-I", "-N", "-A", "-A", "-I"])

    def test_jump_inserted_before_existing_rules(self):
        self.ip6t.chains[("nat", "POSTROUTING")].append(("-j", "SOMEONE-ELSES"))
        self.successResultOf(self.rules().start())
        self.assertEqual(self.ip6t.dump("nat")[:2],
                         [MASQ6_S[0], "-A POSTROUTING -j SOMEONE-ELSES"])

    def test_without_network6_ip6tables_untouched(self):
        self.successResultOf(self.rules(network6=None, subnet6=None).start())
        self.assertEqual(self.ip6t.calls, [])
        self.assertEqual(self.ipt.dump("nat"), MASQ_S)

    def test_ip_masq_covers_both_families(self):
        self.successResultOf(self.rules(ip_masq=False).start())
        self.assertEqual((self.ipt.dump("nat"), self.ip6t.dump("nat")), ([], []))
        self.assertEqual(self.ip6t.dump("filter"), FORWARD6_S)

    def test_forward_rules_off(self):
        self.successResultOf(self.rules(forward=False).start())
        self.assertEqual((self.ipt.dump("filter"), self.ip6t.dump("filter")), ([], []))
        self.assertEqual(self.ip6t.dump("nat"), MASQ6_S)

    def test_no_random_fully_probed_once(self):
        self.ip6t.random_fully = False
        r = self.rules()
        self.successResultOf(r.start())
        self.assertIs(r.random_fully6, False)
        self.assertEqual(self.ip6t.dump("nat"),
                         [l.replace(" --random-fully", "") for l in MASQ6_S])
        self.clock.advance(5)
        self.clock.advance(5)
        probes = [c for c in self.ip6t.calls if c[5:] == ["POSTROUTING", "-j", "MASQUERADE", "--random-fully"]]
        self.assertEqual(len(probes), 1)

    def test_restart_adds_nothing(self):
        self.successResultOf(self.rules().start())
        before = len(self.ip6t.calls)
        again = self.rules()
        self.assertIsNone(self.successResultOf(again.start()))
        new = self.ip6t.calls[before:]
        self.assertEqual({c[4] for c in new}, {"-C"})
        self.assertEqual(self.ip6t.dump("nat"), MASQ6_S)
        self.assertEqual(self.ip6t.dump("filter"), FORWARD6_S)

    def test_missing_rule_restored_within_5s_without_duplicates(self):
        r = self.rules()
        self.successResultOf(r.start())
        self.ip6t.chains[("nat", "FLANNEL-POSTRTG")].pop(2)
        logs = logged(r)
        self.clock.advance(5)
        self.assertEqual(self.ip6t.dump("nat"), MASQ6_S)
        self.assertEqual(self.ip6t.dump("filter"), FORWARD6_S)
        self.assertEqual(r.restored, 5)        # 4 first adds + 1
        self.assertTrue([m for _, m in logs if "Some ip6tables rules are missing" in m], logs)

    def test_jump_missing_restored(self):
        self.successResultOf(self.rules().start())
        self.ip6t.chains[("filter", "FORWARD")].clear()
        self.clock.advance(5)
        self.assertEqual(self.ip6t.dump("filter"), FORWARD6_S)

    def test_update_moves_the_v6_subnet_rule(self):
        r = self.rules()
        self.successResultOf(r.start())
        self.successResultOf(r.update(S, "fd00:10:5:99::/64"))
        self.assertEqual(self.ip6t.dump("nat"),
                         [l.replace(S6, "fd00:10:5:99::/64") for l in MASQ6_S])
        self.assertEqual(self.ipt.dump("nat"), MASQ_S)      # v4 subnet unchanged
        # the v4 subnet moves, the v6 one stays (None keeps it)
        self.successResultOf(r.update("10.5.35.0/24"))
        self.assertEqual(self.ipt.dump("nat"), [l.replace(S, "10.5.35.0/24") for l in MASQ_S])
        self.assertEqual(self.ip6t.dump("nat"),
                         [l.replace(S6, "fd00:10:5:99::/64") for l in MASQ6_S])

    def test_ip6tables_errors_logged_once_and_retried(self):
        r = self.rules()
        self.ip6t.broken = (3, "can't initialize ip6tables table `nat'")
        logs = logged(r)
        self.assertEqual(self.successResultOf(r.check()), 0)
        self.successResultOf(r.start())
        self.clock.advance(5)
        errors = [m for _, m in logs if "Failed to ensure iptables rules" in m]
        self.assertEqual(len(errors), 1, logs)
        self.assertIn("ip6tables", errors[0])
        self.assertEqual(self.ipt.dump("nat"), MASQ_S)     # v4 done before v6 failed
        self.ip6t.broken = None
        self.clock.advance(5)
        self.assertEqual(self.ip6t.dump("nat"), MASQ6_S)
        self.assertTrue([m for _, m in logs if "iptables rules in place again" in m])
