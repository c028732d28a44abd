"""flannel_tw.logs: text/json observers, the rate limit on repeated errors (task.Clock), twistd wiring."""
import io
import json
import sys

from twisted.application import service
from twisted.internet import task
from twisted.logger import (ILogObserver, LogLevel, Logger, eventFromJSON, formatEvent)
from twisted.python.failure import Failure
from twisted.trial import unittest

from flannel_tw import logs
from flannel_tw.tap import Options


def collect():
    events = []
    return events, events.append


class RateLimitTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.events, sink = collect()
        self.limiter = logs.RateLimitingObserver(sink, self.clock, interval=60)
        self.log = Logger(namespace="flannel.test", observer=self.limiter)

    def texts(self):
        return [formatEvent(e) for e in self.events]

    def test_first_error_passes_repeats_are_summarised_when_the_window_ends(self):
        for _ in range(5):
            self.log.error("etcd failed: {error}", error="connection refused")
            self.clock.advance(1)
        self.assertEqual(self.texts(), ["etcd failed: connection refused"])
        self.clock.advance(60)
        self.assertEqual(self.texts(), [
            "etcd failed: connection refused",
            "[repeated 4 times in 60s] etcd failed: connection refused"])
        self.assertEqual(self.events[1]["log_repeated"], 4)
        self.assertEqual(self.events[1]["log_level"], LogLevel.error)
        # a new window: the next one passes at once
        self.log.error("etcd failed: {error}", error="connection refused")
        self.assertEqual(len(self.events), 3)

    def test_timer_closes_the_window(self):
        limiter = logs.RateLimitingObserver(self.events.append, self.clock, interval=10)
        log = Logger(namespace="x", observer=limiter)
        log.warn("w {error}", error="e")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(5)
        log.warn("w {error}", error="e")
        self.clock.advance(4.9)
        self.assertEqual(len(self.events), 1)
        self.clock.advance(0.1)
        self.assertEqual([formatEvent(e) for e in self.events],
                         ["w e", "[repeated 1 times in 10s] w e"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_repeat_after_the_window_flushes_summary_first_without_timer(self):
        """Events logged off the reactor thread set no timer: the next one closes the window."""
        self.patch(logs, "_in_reactor_thread", lambda: False)
        self.log.error("x {error}", error="e")
        self.log.error("x {error}", error="e")
        self.log.error("x {error}", error="e")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(61)
        self.log.error("x {error}", error="e")
        self.assertEqual(self.texts(), ["x e", "[repeated 2 times in 60s] x e", "x e"])

    def test_different_errors_and_formats_are_separate(self):
        self.log.error("etcd failed: {error}", error="refused")
        self.log.error("etcd failed: {error}", error="timeout")
        self.log.error("config bad: {error}", error="refused")
        self.log.error("etcd failed: {error}", error="refused")
        self.assertEqual(self.texts(), ["etcd failed: refused", "etcd failed: timeout",
                                        "config bad: refused"])

    def test_info_and_debug_are_never_limited(self):
        for _ in range(3):
            self.log.info("wrote {path}", path="/run/flannel/subnet.env")
            self.log.debug("packet")
        self.assertEqual(len(self.events), 6)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failures_keyed_by_message_and_summary_drops_traceback(self):
        def fail(msg):
            try:
                raise ValueError(msg)
            except ValueError:
                self.log.failure("renewal failed", Failure())
        fail("a")
        fail("a")
        fail("b")
        self.assertEqual(len(self.events), 2)
        self.clock.advance(60)
        self.assertEqual(len(self.events), 3)
        self.assertNotIn("log_failure", self.events[2])
        self.assertEqual(formatEvent(self.events[2]), "[repeated 1 times in 60s] renewal failed")

    def test_flush_emits_open_windows(self):
        self.log.critical("down {error}", error="x")
        self.log.critical("down {error}", error="x")
        self.limiter.flush()
        self.assertEqual(self.texts()[-1], "[repeated 1 times in 60s] down x")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class FormatTests(unittest.TestCase):
    def test_json_one_object_per_line_readable_by_twisted(self):
        out = io.StringIO()
        log = Logger(namespace="flannel.test", observer=logs.file_observer("json", out))
        log.info("Wrote {path}", path="/run/flannel/subnet.env")
        log.error("lease {subnet} lost", subnet="10.1.74.0/24")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual(first["text"], "Wrote /run/flannel/subnet.env")
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["path"], "/run/flannel/subnet.env")
        self.assertEqual(first["log_namespace"], "flannel.test")
        self.assertTrue(first["time"].endswith("+00:00"))
        second = eventFromJSON(lines[1])
        self.assertEqual(second["log_level"], LogLevel.error)
        self.assertEqual(formatEvent(second), "lease 10.1.74.0/24 lost")

    def test_json_includes_traceback_text(self):
        out = io.StringIO()
        log = Logger(observer=logs.file_observer("json", out))
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("boom")
        event = json.loads(out.getvalue())
        self.assertIn("ZeroDivisionError", event["text"])

    def test_text(self):
        out = io.StringIO()
        Logger(namespace="n", observer=logs.file_observer("text", out)).warn("hello {x}", x=1)
        self.assertIn("[n#warn] hello 1", out.getvalue())

    def test_unknown_format(self):
        self.assertRaises(ValueError, logs.file_observer, "xml", io.StringIO())

    def test_make_observer_filters_debug_unless_verbose(self):
        for verbosity, expected in ((0, 1), (1, 2)):
            out = io.StringIO()
            log = Logger(observer=logs.make_observer("text", out, task.Clock(), verbosity))
            log.debug("d")
            log.info("i")
            self.assertEqual(len(out.getvalue().splitlines()), expected)


class FakeServerOptions(dict):
    pass


class InstallTests(unittest.TestCase):
    def options(self, *argv, parent=None):
        o = Options(environ={})
        o.parseOptions(list(argv))
        if parent is not None:
            o.parent = parent
        return o

    def test_sets_application_observer_for_twistd_nodaemon(self):
        clock = task.Clock()
        clock.addSystemEventTrigger = lambda *a: None
        svc = service.MultiService()
        opts = self.options("--log-format=json",
                            parent=FakeServerOptions(logfile=None, nodaemon=True, logger=None,
                                                     syslog=False))
        logs.install(svc, opts, clock)
        app = service.Application("flannel")
        svc.setServiceParent(app)
        observer = app.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        self.assertIn(svc, list(service.IServiceCollection(app)))
        # it writes JSON to stdout
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        target = logs.log_target(opts.parent)
        self.assertIs(target, out)

    def test_logfile_and_logger_and_syslog(self):
        path = self.mktemp()
        target = logs.log_target(FakeServerOptions(logfile=path, nodaemon=True))
        self.addCleanup(target.close)
        self.assertEqual(target.path, __import__("os").path.abspath(path))
        self.assertIsNone(logs.log_target(FakeServerOptions(logger="x.y", logfile="")))
        self.assertIsNone(logs.log_target(FakeServerOptions(syslog=True, logfile="")))
        self.assertIsNone(logs.log_target(None))

    def test_existing_observer_is_kept(self):
        clock = task.Clock()
        svc = service.MultiService()
        logs.install(svc, self.options(parent=FakeServerOptions(logfile="-", nodaemon=True)),
                     clock)
        app = service.Application("flannel")
        mine = object()
        app.setComponent(ILogObserver, mine)
        svc.setServiceParent(app)
        self.assertIs(app.getComponent(ILogObserver), mine)

    def test_plain_parent_is_untouched(self):
        svc = service.MultiService()
        logs.install(svc, self.options(), task.Clock())
        parent = service.MultiService()
        svc.setServiceParent(parent)
        self.assertIs(svc.parent, parent)
