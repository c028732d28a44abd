"""bench.preflight: the benchmark refuses to start, with a clear message, on a machine

The lab tests (CommandTests); the whole description is in tests/unit/test_bench_preflight.py."""

import os
import subprocess
import sys

from twisted.trial import unittest

from bench import preflight
from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing import skips


class CommandTests(unittest.TestCase):
    def test_bare_python_gets_a_message_not_a_traceback(self):
        """
        ``python -S`` without PYTHONPATH has no site-packages: no Twisted, no flannel-tw.
        (trial -j hands its workers a PYTHONPATH with every site directory, which would
        let the real benchmark start; and should the check ever pass here, the unknown
        scenario stops it before any lab is built.)
        """
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        cp = subprocess.run([sys.executable, "-S", "-m", "bench", "--no-scale",
                             "--only", "no-such-scenario"],
                            cwd=repo_root(), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("not set up for the benchmark", cp.stderr)
        self.assertIn("twisted.internet", cp.stderr)
        self.assertIn("bash .ci/setup", cp.stderr)
        self.assertNotIn("Traceback", cp.stderr)

    def test_set_up_machine_passes(self):
        skips.require_root()   # the benchmark needs root; so does this check
        self.assertEqual(preflight.problems(), [])
