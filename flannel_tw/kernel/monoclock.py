# -*- test-case-name: tests.unit.test_monoclock, tests.integration.test_monoclock -*-
"""
A monotonic C{IReactorTime} for timers that must not follow wall-clock steps.

Twisted's reactors time C{callLater} by C{reactor.seconds()}, which is C{time.time()}:
when the wall clock steps back by 2 h, every pending call fires 2 h late (the poller's
timeout is recomputed from the wall clock on each wake-up), and a forward step fires
them early. L{MonotonicClock} keeps its calls on a monotonic clock (CLOCK_BOOTTIME, which
also counts a suspend, as etcd's TTL does) and wakes the reactor through a Linux timerfd
on that clock: a readable descriptor that the wall clock cannot delay. Without timerfd
(not Linux) it falls back to the reactor's own C{callLater} in steps of at most
C{FALLBACK_STEP} seconds, which corrects forward steps only; that is logged once.
"""
import ctypes
import ctypes.util
import os
import time

from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

CLOCK_ID = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
FALLBACK_STEP = 60.0
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


def monotonic():
    """Seconds on L{CLOCK_ID} (the clock the timerfd counts on)."""
    return time.clock_gettime(CLOCK_ID)


@implementer(IDelayedCall)
class _Call:
    def __init__(self, clock, when, func, args, kw):
        self._clock = clock
        self.time = when
        self.func, self.args, self.kw = func, args, kw
        self.cancelled = self.called = False

    def getTime(self):
        return self.time

    def active(self):
        return not (self.cancelled or self.called)

    def _check(self):
        if self.cancelled:
            raise error.AlreadyCancelled()
        if self.called:
            raise error.AlreadyCalled()

    def cancel(self):
        self._check()
        self.cancelled = True
        self._clock._changed()

    def delay(self, seconds):
        self._check()
        self.time += seconds
        self._clock._changed()

    def reset(self, seconds):
        self._check()
        self.time = self._clock.seconds() + seconds
        self._clock._changed()


@implementer(IReactorTime)
class MonotonicClock:
    """
    C{seconds()} and C{callLater} on a monotonic clock, woken by C{alarm}.

    @param reactor: the real reactor (C{IReactorFDSet} and C{IReactorTime}).
    @param monotonic: the clock, a callable returning seconds.
    @param alarm: an object with C{set(deadline)} (call C{fire} at or after that
        C{monotonic()} time) and C{clear()}; built from the reactor when None.
    """

    log = Logger()

    def __init__(self, reactor, monotonic=monotonic, alarm=None):
        self._monotonic = monotonic
        self._calls = []
        self._armed = None
        self._alarm = alarm if alarm is not None else make_alarm(reactor, self._fire, monotonic)

    def seconds(self):
        return self._monotonic()

    def callLater(self, delay, func, *args, **kw):
        call = _Call(self, self.seconds() + max(0.0, delay), func, args, kw)
        self._calls.append(call)
        self._changed()
        return call

    def close(self):
        """Cancel every call and release the alarm (the timerfd)."""
        for call in self.getDelayedCalls():
            call.cancelled = True
        self._calls = []
        self._armed = None
        self._alarm.close()

    def getDelayedCalls(self):
        return [c for c in self._calls if c.active()]

    def _changed(self):
        self._calls = [c for c in self._calls if c.active()]
        deadline = min((c.time for c in self._calls), default=None)
        if deadline is not None and deadline == self._armed:
            return
        self._armed = deadline
        if deadline is None:
            self._alarm.clear()
        else:
            self._alarm.set(deadline)

    def _fire(self):
        self._armed = None
        now = self.seconds()
        for call in sorted(self._calls, key=lambda c: c.time):
            if call.time > now:
                break
            if not call.active():
                continue
            call.called = True
            try:
                call.func(*call.args, **call.kw)
            except Exception:
                self.log.failure("Unhandled error in a timed call")
        self._changed()


class _TimerFd:
    """A timerfd (one-shot, relative) on L{CLOCK_ID}, read by the reactor."""

    def __init__(self, libc):
        class timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", timespec), ("it_value", timespec)]
        self._itimerspec = itimerspec
        self._settime = libc.timerfd_settime
        self.fd = libc.timerfd_create(CLOCK_ID, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")

    def arm(self, delay):
        """Expire once after C{delay} seconds (at once when not positive); None disarms."""
        spec = self._itimerspec()
        if delay is not None:
            ns = max(1, int(delay * 1e9))   # 0 would disarm
            spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(ns, 1000000000)
        if self._settime(self.fd, 0, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def drain(self):
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass


@implementer(IReadDescriptor)
class _TimerFdAlarm:
    """An alarm on a timerfd; the reactor watches it only while it is armed."""

    def __init__(self, reactor, fire, monotonic, timerfd):
        self._reactor = reactor
        self._fire = fire
        self._monotonic = monotonic
        self._timerfd = timerfd
        self._reading = False

    def set(self, deadline):
        self._timerfd.arm(deadline - self._monotonic())
        if not self._reading:
            self._reading = True
            self._reactor.addReader(self)

    def clear(self):
        self._timerfd.arm(None)
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def close(self):
        self.clear()
        self._timerfd.close()

    def fileno(self):
        return self._timerfd.fd

    def doRead(self):
        self._timerfd.drain()
        self._fire()

    def connectionLost(self, reason):
        self._reading = False

    def logPrefix(self):
        return "MonotonicClock"


class _StepAlarm:
    """The fallback: the reactor's own callLater, re-checked at least every FALLBACK_STEP s."""

    def __init__(self, reactor, fire, monotonic):
        self._reactor = reactor
        self._fire = fire
        self._monotonic = monotonic
        self._call = None
        self._deadline = None

    def set(self, deadline):
        self._deadline = deadline
        self._arm()

    def _arm(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        delay = self._deadline - self._monotonic()
        self._call = self._reactor.callLater(min(max(0.0, delay), FALLBACK_STEP), self._step)

    def _step(self):
        self._call = None
        if self._monotonic() >= self._deadline:
            self._fire()
        else:
            self._arm()

    def clear(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    close = clear


_log = Logger()


def make_alarm(reactor, fire, monotonic):
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        timerfd = _TimerFd(libc)
    except (OSError, AttributeError) as e:
        _log.warn("No timerfd ({error}): lease timers follow wall-clock steps backwards",
                  error=e)
        return _StepAlarm(reactor, fire, monotonic)
    return _TimerFdAlarm(reactor, fire, monotonic, timerfd)
