"""MonotonicClock: calls on a fake clock and alarm, and on a real reactor whose wall clock steps.

The integration tests (RealReactorStepTests); the whole description is in tests/unit/test_monoclock.py."""

import json
import os
import subprocess
import sys

from twisted.trial import unittest

import flannel_tw


# A fresh epoll reactor whose wall clock (reactor.seconds) steps by argv[1] seconds 0.3 s
# after start. Prints when (in real seconds) a 1 s reactor.callLater and a 1 s
# MonotonicClock.callLater fired.
_STEP_SCRIPT = r"""
import json, sys, time
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from flannel_tw.kernel.monoclock import MonotonicClock

offset = [0.0]
reactor.seconds = lambda: time.time() + offset[0]
t0 = time.monotonic()
out = {}
def mark(name):
    out.setdefault(name, round(time.monotonic() - t0, 2))
def step():
    offset[0] = float(sys.argv[1])
clock = MonotonicClock(reactor)
reactor.callLater(0.3, step)
reactor.callLater(1.0, mark, "wall")
clock.callLater(1.0, mark, "mono")
clock.callLater(2.5, reactor.stop)
reactor.run()
clock.close()
print(json.dumps(out))
"""


class RealReactorStepTests(unittest.TestCase):
    """The reactor's own timers follow the wall clock; MonotonicClock's do not."""

    def run_step(self, step):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(flannel_tw.__file__))
        out = subprocess.run([sys.executable, "-c", _STEP_SCRIPT, str(step)],
                             capture_output=True, text=True, timeout=30, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        return json.loads(out.stdout)

    def test_wall_clock_steps_back_two_hours(self):
        fired = self.run_step(-7200)
        self.assertNotIn("wall", fired)        # the reactor's call is now 2 h away
        self.assertGreaterEqual(fired["mono"], 0.99)
        self.assertLess(fired["mono"], 1.5)

    def test_wall_clock_steps_forward_two_hours(self):
        fired = self.run_step(7200)
        self.assertLess(fired["wall"], 0.5)    # the reactor's call fired at the step
        self.assertGreaterEqual(fired["mono"], 0.99)
        self.assertLess(fired["mono"], 1.5)
