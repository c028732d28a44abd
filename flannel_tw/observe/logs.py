# -*- test-case-name: tests.unit.test_logs -*-
"""
The daemon's log output: ``--log-format text|json`` and a rate limit on repeated
warnings and errors.

- ``text``: twistd's usual lines (L{twisted.logger.textFileLogObserver}).
- ``json``: one compact JSON object per line (L{json_event}): ``time`` (RFC 3339,
  UTC), ``level``, ``logger``, ``msg`` and the event's own fields, e.g.
  ``{"time":"2026-12-01T14:23:44.120001Z","level":"info","logger":"flannel_tw.daemon.FlannelDaemon","msg":"Wrote /run/flannel/subnet.env","path":"/run/flannel/subnet.env"}``.
  Handy for journald/Loki.

Both go through L{RateLimitingObserver}: a warning or error with the same format,
namespace and error text as one emitted less than C{interval} seconds ago is held
back, and a single "repeated K times" summary follows when the window closes (or
with the next one let through). Each retry still logs its cause, but a dead etcd
does not fill the disk. Info and debug events always pass.

With ``-v 0`` (the default) debug events are not written; ``-v=N`` (N > 0, or
FLANNELD_V) writes them too.

Quiet plumbing: the etcd client's connection pool (L{flannel_tw.etcd.transport.quiet_pool}) and the
/healthz and /metrics sites (L{QuietSite}) log no "Starting factory" lines and no
access-log lines at the default level (requests go to debug), and
L{redact_url} keeps etcd credentials out of log lines.

The observer replaces twistd's own (so that the format applies to everything the
process logs), honouring twistd's ``--logfile``/``--nodaemon``; twistd's
``--logger`` and ``--syslog`` still win.
"""
import datetime
import ipaddress as _ipaddress
import json
import os
import sys
import threading
from urllib.parse import urlsplit, urlunsplit

from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogObserver,
                            LogLevel, LogLevelFilterPredicate, Logger, formatEvent,
                            textFileLogObserver)
from twisted.python import threadable
from twisted.python.components import Componentized
from twisted.web import server
from zope.interface import implementer

FORMATS = ("text", "json")
DEFAULT_INTERVAL = 60.0
_LIMITED = (LogLevel.warn, LogLevel.error, LogLevel.critical)


# -- formats ---------------------------------------------------------------------

# the keys of the JSON object that are not the event's own fields
_JSON_KEYS = ("time", "level", "logger", "msg", "traceback", "repeated")
# keys that twisted.python.log (and the legacy observer bridge) put into events
_LEGACY_KEYS = frozenset(("message", "time", "system", "format", "isError", "why", "failure",
                          "printed", "logLevel"))


def json_event(event):
    """
    One compact JSON line for C{event}: C{time} (RFC 3339, UTC), C{level}, C{logger}
    (the namespace; the system for twisted.python.log events), C{msg} (the formatted
    message), the event's own keyword fields, C{traceback} for a failure and
    C{repeated} for a rate-limit summary. Twisted's own keys (C{log_*}, and the
    legacy C{message}, C{system}, C{isError}, ...) are left out; an own field named
    like one of ours becomes C{field_<name>}. Values JSON cannot hold (or holds only
    loosely, like NaN) become their C{repr}, addresses and networks their C{str}.
    """
    legacy = "isError" in event and "message" in event
    out = {}
    t = event.get("log_time")
    if t is not None:
        out["time"] = datetime.datetime.fromtimestamp(
            t, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    level = event.get("log_level")
    out["level"] = level.name if level is not None else "info"
    logger = event.get("log_namespace")
    if logger == "log_legacy" or logger is None:
        logger = event.get("log_system") or event.get("system") or "-"
    out["logger"] = logger
    out["msg"] = _message(event)
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
            continue
        out["field_" + key if key in _JSON_KEYS else key] = _json_safe(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    if "log_repeated" in event:
        out["repeated"] = event["log_repeated"]
    return json.dumps(out, separators=(",", ":"), allow_nan=False) + "\n"


def _message(event):
    try:
        return formatEvent(event)
    except Exception:       # formatEvent reports its own errors; this is a last resort
        return repr(event.get("log_format"))


def _json_safe(value):
    if isinstance(value, (_ipaddress._BaseAddress, _ipaddress._BaseNetwork)):
        return str(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return value


def jsonLinesObserver(out):
    """An ILogObserver writing one JSON object per line (no RFC 7464 separators) to C{out}."""
    return FileLogObserver(out, json_event)


def file_observer(log_format, out):
    """The text or json observer writing to the file object C{out}."""
    if log_format == "json":
        return jsonLinesObserver(out)
    if log_format == "text":
        return textFileLogObserver(out)
    raise ValueError("log format must be one of %s, not %r" % (", ".join(FORMATS), log_format))


# -- rate limit -----------------------------------------------------------------

def _error_text(event):
    failure = event.get("log_failure")
    if failure is not None:
        return "%s: %s" % (failure.type.__name__ if failure.type else "", failure.getErrorMessage())
    error = event.get("error")
    return "" if error is None else str(error)


@implementer(ILogObserver)
class RateLimitingObserver:
    """
    Passes events on to C{observer}, holding back a warning/error that repeats one
    emitted less than C{interval} seconds ago (same C{log_namespace},
    C{log_format} and error text: the C{error} field or the failure's message).

    When a window with held-back repeats ends, one summary event goes out: a copy
    of the last repeat without its traceback, its format prefixed with
    ``[repeated K times in N s]``, and C{log_repeated=K}. The window ends at the
    next repeat after C{interval} or, if the reactor thread logged it, at a timer
    on C{clock} (C{callLater}), whichever comes first.

    @param clock: an IReactorTime (the reactor; L{twisted.internet.task.Clock} in tests).
    """

    def __init__(self, observer, clock, interval=DEFAULT_INTERVAL):
        self._observer = observer
        self._clock = clock
        self.interval = interval
        self._lock = threading.RLock()
        self._windows = {}   # key -> [started_at, repeats, last_event, delayed_call]

    def __call__(self, event):
        if event.get("log_level") not in _LIMITED:
            self._observer(event)
            return
        key = (event.get("log_namespace"), event.get("log_format"), _error_text(event))
        now = self._clock.seconds()
        out = []
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] >= self.interval:
                out.extend(self._close(key))
                window = None
            if window is None:
                self._windows[key] = [now, 0, None, None]
                out.append(event)
            else:
                window[1] += 1
                window[2] = event
                if window[3] is None and _in_reactor_thread():
                    window[3] = self._clock.callLater(
                        max(0.0, window[0] + self.interval - now), self._expire, key)
        for e in out:
            self._observer(e)

    def _close(self, key):
        """Remove the window for C{key}; returns the summary events to emit (0 or 1)."""
        window = self._windows.pop(key, None)
        if window is None:
            return []
        started, repeats, last, delayed = window
        if delayed is not None and delayed.active():
            delayed.cancel()
        if not repeats:
            return []
        summary = dict(last)
        summary.pop("log_failure", None)
        summary["log_repeated"] = repeats
        summary["log_repeat_window"] = self.interval
        summary["log_format"] = ("[repeated {log_repeated} times in {log_repeat_window:g}s] "
                                 + (last.get("log_format") or ""))
        summary["log_time"] = self._clock.seconds()
        return [summary]

    def _expire(self, key):
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                window[3] = None
            out = self._close(key)
        for e in out:
            self._observer(e)

    def flush(self):
        """Emit the summaries of every open window now (e.g. at shutdown)."""
        with self._lock:
            out = []
            for key in list(self._windows):
                out.extend(self._close(key))
        for e in out:
            self._observer(e)


def _in_reactor_thread():
    return threadable.ioThread is None or threadable.isInIOThread()


def make_observer(log_format, out, clock, verbosity=0, interval=DEFAULT_INTERVAL):
    """
    The daemon's observer: level filter (info unless C{verbosity} > 0), then the
    rate limit, then the C{log_format} observer writing to C{out}.
    """
    limited = RateLimitingObserver(file_observer(log_format, out), clock, interval)
    level = LogLevel.debug if verbosity > 0 else LogLevel.info
    observer = FilteringLogObserver(limited, [LogLevelFilterPredicate(defaultLogLevel=level)])
    observer.rate_limiter = limited
    return observer


# -- quiet network plumbing ---------------------------------------------------------

def redact_url(url):
    """C{url} without its userinfo (C{user:password@}), query and fragment: safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_access_log = Logger(namespace="flannel_tw.web")


class QuietSite(server.Site):
    """
    A twisted.web Site for /healthz, /readyz and /metrics: no "Starting factory"
    line, no tracebacks in responses, and each request logged at debug only
    (C{-v=1} and up) rather than as an access-log line at info. Twisted still says
    "C{name} starting on <port>" once when it listens.
    """

    noisy = False
    displayTracebacks = False

    def __init__(self, resource, name="http", **kwargs):
        server.Site.__init__(self, resource, **kwargs)
        self.name = name

    def logPrefix(self):
        """Names the port in Twisted's "<name> starting on <port>" line."""
        return self.name

    def log(self, request):
        client = request.getClientAddress()
        _access_log.debug("{site}: {client} {method} {uri} {code} {length}", site=self.name,
                          client=getattr(client, "host", "-"),
                          method=request.method.decode("ascii", "replace"),
                          uri=request.uri.decode("ascii", "replace"),
                          code=request.code, length=request.sentLength)


# -- twistd wiring ----------------------------------------------------------------

def _twistd_config(options):
    """
    twistd's own options (``--logfile``, ``--nodaemon``, ``--logger``, ``--syslog``):
    the plugin's parent options, or, in a .tac file, sys.argv parsed again. None
    when unknown (then twistd's default observer is left alone).
    """
    parent = getattr(options, "parent", None)
    if parent is not None and "logfile" in parent:
        return parent
    if not os.path.basename(sys.argv[0] or "").startswith("twistd"):
        return None
    try:
        from twisted.scripts.twistd import ServerOptions
        config = ServerOptions()
        config.parseOptions(sys.argv[1:])
    except (Exception, SystemExit):
        return None
    return config


def log_target(config):
    """
    Where twistd would log for C{config}: a file object, or None when twistd's own
    choice must stay (``--logger`` or ``--syslog``, or the config is unknown).
    """
    if config is None or config.get("logger") or config.get("syslog"):
        return None
    name = config.get("logfile") or ""
    if name == "-" or (not name and config.get("nodaemon")):
        return sys.stdout
    from twisted.python.logfile import LogFile
    return LogFile.fromFullPath(name or "twistd.log")


def install(service, options, reactor):
    """
    Arrange for the twistd application that C{service} joins to log with
    L{make_observer}: when C{service.setServiceParent} is given the application
    (a Componentized, as twistd and .tac files do), the observer is set as its
    ILogObserver component before twistd starts logging. Does nothing when an
    observer is already set there or twistd's target is unknown.
    """
    log_format = options["log-format"]
    verbosity = int(options.get("v", 0) or 0)
    original = service.setServiceParent

    def setServiceParent(parent):
        # twistd's application (and a .tac file's) is a Componentized; a plain parent is not
        if (isinstance(parent, Componentized)
                and parent.getComponent(ILogObserver, None) is None):
            target = log_target(_twistd_config(options))
            if target is not None:
                observer = make_observer(log_format, target, reactor, verbosity)
                parent.setComponent(ILogObserver, observer)
                reactor.addSystemEventTrigger("after", "shutdown",
                                              observer.rate_limiter.flush)
        return original(parent)

    service.setServiceParent = setServiceParent
    return service
