"""MonotonicClock: calls on a fake clock and alarm, and on a real reactor whose wall clock steps."""
import json
import os
import subprocess
import sys

from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.trial import unittest
from zope.interface.verify import verifyObject

import flannel_tw
from flannel_tw.monoclock import MonotonicClock


class FakeAlarm:
    """Records the deadline the clock asks for; the test fires it."""

    def __init__(self):
        self.deadline = None
        self.closed = False

    def set(self, deadline):
        self.deadline = deadline

    def clear(self):
        self.deadline = None

    def close(self):
        self.closed = True


class FakeClockTests(unittest.TestCase):
    def setUp(self):
        self.now = 1000.0
        self.alarm = FakeAlarm()
        self.clock = MonotonicClock(None, monotonic=lambda: self.now, alarm=self.alarm)
        self.fired = []

    def advance(self, seconds):
        self.now += seconds
        if self.alarm.deadline is not None and self.alarm.deadline <= self.now:
            self.clock._fire()

    def test_interface(self):
        verifyObject(IReactorTime, self.clock)

    def test_calls_fire_in_order_at_their_time(self):
        self.clock.callLater(5, self.fired.append, "b")
        self.clock.callLater(2, self.fired.append, "a")
        self.assertEqual(self.alarm.deadline, 1002.0)
        self.advance(1.9)
        self.assertEqual(self.fired, [])
        self.advance(0.1)
        self.assertEqual((self.fired, self.alarm.deadline), (["a"], 1005.0))
        self.advance(10)
        self.assertEqual((self.fired, self.alarm.deadline), (["a", "b"], None))

    def test_cancel_reset_delay(self):
        a = self.clock.callLater(2, self.fired.append, "a")
        b = self.clock.callLater(3, self.fired.append, "b")
        a.cancel()
        self.assertFalse(a.active())
        self.assertRaises(error.AlreadyCancelled, a.cancel)
        self.assertEqual(self.alarm.deadline, 1003.0)
        b.reset(10)
        self.assertEqual((b.getTime(), self.alarm.deadline), (1010.0, 1010.0))
        b.delay(1)
        self.advance(10.5)
        self.assertEqual(self.fired, [])
        self.advance(0.5)
        self.assertEqual(self.fired, ["b"])
        self.assertRaises(error.AlreadyCalled, b.cancel)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failing_call_does_not_stop_the_others(self):
        self.clock.callLater(1, lambda: 1 / 0)
        self.clock.callLater(1, self.fired.append, "ok")
        self.advance(1)
        self.assertEqual(self.fired, ["ok"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_close(self):
        self.clock.callLater(1, self.fired.append, "a")
        self.clock.close()
        self.assertTrue(self.alarm.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# A fresh epoll reactor whose wall clock (reactor.seconds) steps by argv[1] seconds 0.3 s
# after start. Prints when (in real seconds) a 1 s reactor.callLater and a 1 s
# MonotonicClock.callLater fired.
_STEP_SCRIPT = r"""
import json, sys, time
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from flannel_tw.monoclock import MonotonicClock

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


class StepAlarmTests(unittest.TestCase):
    """The fallback without timerfd: the reactor's callLater in steps, re-checked."""

    def test_forward_step_is_corrected_and_calls_fire_on_time(self):
        from twisted.internet import task
        from flannel_tw import monoclock
        wall, now, fired = task.Clock(), [0.0], []
        clock = MonotonicClock(wall, monotonic=lambda: now[0], alarm=FakeAlarm())
        clock._alarm = monoclock._StepAlarm(wall, clock._fire, lambda: now[0])
        clock.callLater(100, fired.append, "x")
        self.assertLessEqual(wall.getDelayedCalls()[0].getTime(), monoclock.FALLBACK_STEP)
        wall.advance(7200)                  # the wall clock jumps 2 h: the step fires early
        self.assertEqual(fired, [])
        for _ in range(10):
            now[0] += 10
            wall.advance(10)
        self.assertEqual(fired, ["x"])
        self.assertEqual(wall.getDelayedCalls(), [])
