"""MonotonicClock: calls on a fake clock and alarm, and on a real reactor whose wall clock steps."""

from twisted.internet import error
from twisted.internet.interfaces import IReactorTime
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.kernel.monoclock import MonotonicClock


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


class StepAlarmTests(unittest.TestCase):
    """The fallback without timerfd: the reactor's callLater in steps, re-checked."""

    def test_forward_step_is_corrected_and_calls_fire_on_time(self):
        from twisted.internet import task
        from flannel_tw.kernel import monoclock
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
