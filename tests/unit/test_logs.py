"""flannel_tw.observe.logs: text/json observers, the rate limit on repeated errors (task.Clock), twistd wiring."""
import io
import json
import sys

from twisted.application import service
from twisted.internet import task
from twisted.logger import ILogObserver, LogLevel, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from flannel_tw.observe import logs
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
    def json_lines(self, emit, namespace="flannel.test"):
        out = io.StringIO()
        emit(Logger(namespace=namespace, observer=logs.file_observer("json", out)))
        text = out.getvalue()
        self.assertTrue(text.endswith("\n"))
        return [json.loads(line) for line in text.splitlines()], text

    def test_json_compact_object_with_the_event_fields_only(self):
        from ipaddress import IPv4Network
        events, text = self.json_lines(lambda log: (
            log.info("Wrote {path}", path="/run/flannel/subnet.env"),
            log.error("lease {subnet} lost after {n} tries", subnet=IPv4Network("10.1.74.0/24"),
                      n=3, peers=["a", 1], extra={"k": None}, obj=object(), nan=float("nan"))))
        self.assertEqual(len(events), 2)
        self.assertNotIn(": ", text)              # compact separators
        first, second = events
        self.assertEqual(list(first), ["time", "level", "logger", "msg", "path"])
        self.assertEqual((first["level"], first["logger"], first["msg"], first["path"]),
                         ("info", "flannel.test", "Wrote /run/flannel/subnet.env",
                          "/run/flannel/subnet.env"))
        self.assertRegex(first["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertEqual(set(second), {"time", "level", "logger", "msg", "subnet", "n", "peers",
                                       "extra", "obj", "nan"})
        self.assertEqual((second["level"], second["msg"], second["n"], second["peers"],
                          second["extra"], second["subnet"]),
                         ("error", "lease 10.1.74.0/24 lost after 3 tries", 3, ["a", 1],
                          {"k": None}, "10.1.74.0/24"))
        self.assertTrue(second["obj"].startswith("<object object at "))   # repr
        self.assertEqual(second["nan"], "nan")

    def test_json_time_is_rfc3339_utc(self):
        out = io.StringIO()
        logs.file_observer("json", out)({"log_time": 0.25, "log_level": LogLevel.warn,
                                         "log_namespace": "n", "log_format": "x"})
        self.assertEqual(json.loads(out.getvalue()),
                         {"time": "1970-01-01T00:00:00.250000Z", "level": "warn",
                          "logger": "n", "msg": "x"})

    def test_json_failure_traceback_is_a_field(self):
        def emit(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("boom {what}", what="x")
        (event,), _ = self.json_lines(emit)
        self.assertEqual(set(event), {"time", "level", "logger", "msg", "what", "traceback"})
        self.assertEqual((event["msg"], event["level"]), ("boom x", "critical"))
        self.assertIn("ZeroDivisionError", event["traceback"])
        self.assertIn("Traceback", event["traceback"])

    def test_json_drops_twisted_internals_and_keeps_colliding_fields(self):
        (event,), _ = self.json_lines(lambda log: log.info(
            "{msg} at {time}", msg="hello", time="noon", traceback=5, log_extra="x"))
        self.assertEqual(event["msg"], "hello at noon")
        self.assertEqual((event["field_msg"], event["field_time"], event["field_traceback"]),
                         ("hello", "noon", 5))
        for key in event:
            self.assertFalse(key.startswith("log_"), key)

    def test_json_legacy_events(self):
        """twisted.python.log.msg (Twisted's own modules): system as logger, no internals."""
        from twisted.python import log as legacy
        out = io.StringIO()
        observer = logs.file_observer("json", out)
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(observer)
        try:
            legacy.msg("Starting protocol {x}", system="UDP,client", port=8285)
        finally:
            globalLogPublisher.removeObserver(observer)
        event = json.loads(out.getvalue().splitlines()[-1])
        self.assertEqual(event, {"time": event["time"], "level": "info",
                                 "logger": "UDP,client", "msg": "Starting protocol {x}",
                                 "port": 8285})

    def test_json_rate_limit_summary_says_how_many(self):
        out = io.StringIO()
        clock = task.Clock()
        log = Logger(namespace="n", observer=logs.make_observer("json", out, clock))
        for _ in range(3):
            log.warn("w {error}", error="e")
        clock.advance(60)
        last = json.loads(out.getvalue().splitlines()[-1])
        self.assertEqual((last["msg"], last["repeated"], last["error"]),
                         ("[repeated 2 times in 60s] w e", 2, "e"))

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

    def test_v_flag_lets_debug_events_through(self):
        """-v=N (N > 0) from the command line or FLANNELD_V reaches the installed observer."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        for argv, env, debug_shown in (([], {}, False), (["-v=10"], {}, True),
                                       (["--v", "2"], {}, True), ([], {"FLANNELD_V": "1"}, True)):
            out.seek(0)
            out.truncate()
            clock = task.Clock()
            clock.addSystemEventTrigger = lambda *a: None
            opts = Options(environ=env)
            opts.parseOptions(argv)
            opts.parent = FakeServerOptions(logfile="-", nodaemon=True)
            svc = service.MultiService()
            logs.install(svc, opts, clock)
            app = service.Application("flannel")
            svc.setServiceParent(app)
            log = Logger(namespace="n", observer=app.getComponent(ILogObserver))
            log.debug("a debug line")
            log.info("an info line")
            self.assertIn("an info line", out.getvalue())
            self.assertEqual("a debug line" in out.getvalue(), debug_shown, (argv, env))

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


class QuietPlumbingTests(unittest.TestCase):
    def test_redact_url_drops_userinfo_query_and_fragment(self):
        for url, want in (("http://127.0.0.1:2379", "http://127.0.0.1:2379"),
                          ("https://root:s3cret@etcd1:2379/", "https://etcd1:2379/"),
                          ("https://a@b:c@[::1]:2379", "https://[::1]:2379"),
                          ("http://u:p@h:1/x?token=t#f", "http://h:1/x")):
            self.assertEqual(logs.redact_url(url), want)

    def test_quiet_pool_factories_are_not_noisy(self):
        from flannel_tw.etcd.transport import quiet_pool
        pool = quiet_pool(task.Clock())
        self.assertFalse(pool._factory.noisy)
        self.assertTrue(pool.persistent)
        from twisted.web.resource import Resource
        site = logs.QuietSite(Resource(), name="healthz")
        self.assertEqual((site.noisy, site.displayTracebacks, site.logPrefix()),
                         (False, False, "healthz"))
