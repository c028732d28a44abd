"""flanneld's iptables rules: the rule lists (pure), TrafficRules' check-and-restore logic

The integration tests (ProcessRunnerLookupTests); the whole description is in tests/unit/test_iptables.py."""

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from flannel_tw.host.iptables import IptablesError, ProcessRunner, TrafficRules
from flannel_tw.testing.iptables_fixtures import N, S


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
        import flannel_tw.host.iptables as iptables_mod
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
        import flannel_tw.host.iptables as iptables_mod

        def gone(path, args, env=None, reactor=None):
            raise FileNotFoundError(2, "No such file or directory", path)
        self.patch(iptables_mod.utils, "getProcessOutputAndValue", gone)
        f = self.failureResultOf(run(["-S"]), IptablesError)
        self.assertIn("/sbin/iptables", f.getErrorMessage())
        self.failureResultOf(run(["-S"]), IptablesError)
        self.assertEqual(len(self.which_calls), 2)       # looked up again after the failure
