# -*- test-case-name: tests.unit.test_etcd_client, tests.unit.test_v3client -*-
"""
What the v2 client (L{flannel_tw.etcd.client.EtcdV2Client}) and the v3 client
(L{flannel_tw.etcd.v3client.EtcdV3Client}) share: the endpoint list, the HTTP stack
(L{flannel_tw.etcd.transport}), the fail-over over the endpoints, and the counters the
metrics and /healthz read. Each client adds its API and what one attempt on one
endpoint is.

Fail-over: a request starts with the endpoint that answered last and moves on to the
next one on a failure below etcd's API (L{TransportFailure}: no connection, a timeout,
a 5xx, a member that is not serving); an answer from etcd, even an error, ends it. Each
distinct cause is logged once per endpoint (repeats go to debug) and its recovery once.
"""
import collections

from twisted.internet import defer
from twisted.logger import Logger

from flannel_tw.etcd.errors import EtcdUnavailable, describe_transport_error, failure_kind
from flannel_tw.etcd.transport import MAX_BODY, build_http, quiet_pool
from flannel_tw.etcd.wire import validate_endpoint


class TransportFailure(Exception):
    """One attempt on one endpoint failed below etcd's API: try the next endpoint."""

    def __init__(self, error):
        self.error = error
        super().__init__(error)


class EtcdClientBase:
    log = Logger()

    def __init__(self, reactor, endpoints, http=None, tls=None, request_timeout=10.0,
                 connect_timeout=None, watch_timeout=60.0, max_body=MAX_BODY):
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        endpoints = [validate_endpoint(e) for e in endpoints]
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        if tls is not None and not hasattr(tls, "creatorForNetloc"):
            raise ValueError("tls must provide creatorForNetloc (IPolicyForHTTPS), got %r"
                             % (tls,))
        self._reactor = reactor
        self.endpoints = endpoints
        self.error_counts = collections.Counter()   # kind -> count, for metrics
        self.last_answer_at = None                   # reactor time of the last answer
        self._current = 0
        self._failing = {}                           # endpoint -> last logged failure text
        self.tls_files = getattr(tls, "files", None)  # {ca, cert, key} paths for messages
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout
        self.max_body = max_body
        self._watches = set()                        # each watch in flight (has alive_at)
        self._pool = None
        if http is None:
            from twisted.web.client import BrowserLikePolicyForHTTPS

            self._pool = quiet_pool(reactor, persistent=True)  # no factory lines per connection
            http = build_http(
                reactor, tls if tls is not None else BrowserLikePolicyForHTTPS(),
                connect_timeout if connect_timeout is not None else request_timeout,
                self._pool)
        self._http = http

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next request starts with (the last one that answered)."""
        return self.endpoints[self._current]

    def watch_silence(self):
        """
        Seconds since the least recently heard-from watch in flight last showed life
        (etcd sent its headers or an answer, or its member passed the check after
        C{watch_timeout}); None when no watch is in flight. A live watch shows life at
        least every C{watch_timeout} seconds.
        """
        if not self._watches:
            return None
        return self._reactor.seconds() - min(w.alive_at for w in self._watches)

    def close(self):
        """Drop cached persistent connections. Returns a Deferred that fires with None."""
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return defer.succeed(None)

    def _counted(self, d):
        """Count C{d}'s outcome for the metrics: an answer (an etcd API error is one too)
        sets C{last_answer_at}; a failure counts by kind."""
        def answered(result):
            self.last_answer_at = self._reactor.seconds()
            return result

        def failed(failure):
            counted = failure_kind(failure)
            if counted is not None:
                kind, etcd_answered = counted
                if etcd_answered:
                    self.last_answer_at = self._reactor.seconds()
                self.error_counts[kind] += 1
            return failure
        return d.addCallbacks(answered, failed)

    async def _over_endpoints(self, attempt, cancelled=lambda: False, **fields):
        """
        Await C{attempt(endpoint)} on each endpoint in turn, from the current one, until
        one does not raise L{TransportFailure}; C{fields} go into the failure log lines.

        @raise EtcdUnavailable: every endpoint failed (each one's error in it).
        """
        errors = {}
        n = len(self.endpoints)
        start = self._current
        for i in range(n):
            idx = (start + i) % n
            endpoint = self.endpoints[idx]
            try:
                result = await attempt(endpoint)
            except TransportFailure as t:
                if cancelled():
                    raise defer.CancelledError() from None
                errors[endpoint] = t.error
                self.error_counts[getattr(t.error, "kind", "transport")] += 1
                self._endpoint_failed(endpoint)
                nxt = self.endpoints[(idx + 1) % n] if i + 1 < n else None
                text = describe_transport_error(t.error, self.tls_files)
                emit = self.log.debug if self._failing.get(endpoint) == text else self.log.warn
                self._failing[endpoint] = text
                emit("etcd endpoint {endpoint} failed: {error}"
                     + ("; trying {next_endpoint}" if nxt else "; no endpoint left"),
                     endpoint=endpoint, error=text, next_endpoint=nxt, **fields)
                continue
            if self._failing.pop(endpoint, None) is not None:
                self.log.info("etcd endpoint {endpoint} answers again", endpoint=endpoint)
            self._current = idx
            return result
        raise EtcdUnavailable(errors, self.tls_files)

    def _endpoint_failed(self, endpoint):
        """Hook: what a client forgets about an endpoint that failed (v3: its token)."""
