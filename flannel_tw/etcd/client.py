# -*- test-case-name: tests.unit.test_etcd_client, tests.integration.test_etcd_client -*-
"""An etcd v2 HTTP API client on treq (over a keepalive, no-compression Agent), speaking to etcd the way flanneld v0.10 does.

Wire format
===========
flanneld uses the Go ``etcd/client`` v2 package, which builds every query string with
Go's ``url.Values.Encode()`` -- parameters **sorted by name** -- and always sends all of a
GET's three flags.  This module sends byte-identical requests:

=================  ==========================================================================
call               request
=================  ==========================================================================
``get``            ``GET /v2/keys<key>?quorum=<b>&recursive=<b>&sorted=<b>``
``watch``          ``GET /v2/keys<key>?recursive=<b>&wait=true&waitIndex=<n>``
``set``            ``PUT /v2/keys<key>[?prevExist=<b>]`` form ``ttl=<n>&value=<v>``
                   (``ttl`` only when given and > 0)
``delete``         ``DELETE /v2/keys<key>``
=================  ==========================================================================

(The fact sheet lists e.g. the list call as ``recursive=true&quorum=true&sorted=false``;
that is the same parameter set, the order on the wire is the sorted one.)

Errors
======
Every method returns a Deferred that fires with a L{Response} or fails with:

- an L{flannel_tw.etcd.errors.EtcdError} subclass (L{KeyNotFound}, L{NodeExist},
  L{EventIndexCleared}, ...) when etcd answered with its JSON error body.  These are
  answers and are never retried on another endpoint;
- L{EtcdProtocolError} when the answer is neither a node response nor an error body;
- L{EtcdUnavailable} when every endpoint failed: at the transport level (refused,
  reset, timed out, TLS failure) or with an answer from a member that cannot serve
  (L{EtcdMemberError}: any HTTP 5xx, as Go's etcd client, or etcd's server-side codes
  300 "Raft Internal Error" / 301 "During Leader Election" whatever the status).  Its
  ``errors`` maps endpoint -> the last failure and its message says, for a TLS failure,
  which side refused and which file to check;
- L{EtcdIndexWentBack} (watch with detect_reset only) when the etcd we reached has a lower index than the
  one we wait for: the cluster was wiped or restored, re-list;
- L{twisted.internet.defer.CancelledError} when the caller cancelled the Deferred.

Why this module is longer than 400 lines: a request's fail-over across endpoints, its
timeout, the idle-watch check and cancellation share one per-call state (L{_Call}) and
one loop (C{_failover} -> C{_attempt_until_answer} -> C{_attempt}); the parts that need
no call state already live apart (L{flannel_tw.etcd.wire}: answers; L{flannel_tw.etcd.transport}:
the HTTP transport; L{flannel_tw.etcd.errors}: the error types).
"""

from urllib.parse import quote, urlencode

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from flannel_tw.etcd.base import EtcdClientBase, TransportFailure
from flannel_tw.etcd.errors import (EtcdError, EtcdIndexWentBack, EtcdMemberError,
                                    EtcdProtocolError, describe_transport_error)
from flannel_tw.etcd.transport import MAX_BODY, discard_body, read_body
from flannel_tw.etcd.wire import (SNIPPET as _SNIPPET, Node, Response,  # Node, Response:
                                  header_index as _header_index,        # re-exported
                                  parse_response as _parse, says_unhealthy as _says_unhealthy)
from flannel_tw.model.backoff import make_backoff

__all__ = ["Node", "Response", "EtcdV2Client"]

_HEALTH_BODY = 64 * 1024     # the most read of a /health answer


def _bool(flag) -> str:
    return "true" if flag else "false"


class _Call:
    """One request of the caller: C{cancelled} is set when the caller cancelled it (see
    L{EtcdV2Client._call}); C{alive_at} is when its member last showed life."""

    cancelled = False

    def __init__(self, now):
        self.alive_at = now


class EtcdV2Client(EtcdClientBase):
    """etcd v2 keys API client with endpoint fail-over.

    @param reactor: the reactor (used for timeouts and, when C{http} is None, for the Agent).
    @param endpoints: list of base URLs such as C{"http://127.0.0.1:2379"}.
    @param http: an object with treq's C{request(method, url, **kwargs)} API
        (C{treq.testing.StubTreq} in tests); when None, an
        treq's C{HTTPClient} from L{flannel_tw.etcd.transport.build_http} on its own
        Agent and pool.
    @param username: basic-auth user name (auth is sent only when this is given).
    @param password: basic-auth password.
    @param tls: None or an C{IPolicyForHTTPS} (an object with C{creatorForNetloc}) for https.
    @param request_timeout: seconds (request and whole body) before a non-watch request
        counts as a transport failure and the next endpoint is tried; None disables it.
    @param connect_timeout: TCP connect timeout of the built Agent (defaults to request_timeout).
    @param watch_timeout: seconds a watch may go without an event before its member is
        asked for C{/health} (within request_timeout): a member that answers gets the
        watch again from the same index, any other is passed over like a dead one. etcd
        v2 sends nothing on an idle long poll, so this is how a member that vanished
        without a reset (power loss, partition) is noticed. 60 s, so that a silent
        member is left (60 s + request_timeout) within /healthz's 90 s stale window; None
        waits for ever.
    @param max_body: the most bytes read of one answer (default 64 MiB); past it the
        connection is dropped and the member passed over (L{EtcdResponseTooLarge}).
    @raise ValueError: no endpoints, or an endpoint is not an http(s) URL with a host.

    The built transport (L{flannel_tw.etcd.transport}) keeps TCP connections alive (30 s
    idle, as flanneld) and neither asks for nor inflates compressed bodies.
    """

    log = Logger()

    def __init__(self, reactor, endpoints, http=None, username=None, password=None,
                 tls=None, request_timeout=10.0, connect_timeout=None, watch_timeout=60.0,
                 max_body=MAX_BODY):
        super().__init__(reactor, endpoints, http=http, tls=tls,
                         request_timeout=request_timeout, connect_timeout=connect_timeout,
                         watch_timeout=watch_timeout, max_body=max_body)
        self._auth = None if username is None else (username, password or "")
        self._empty_backoff = make_backoff()

    # -- public API -------------------------------------------------------------------

    def get(self, key, recursive=False, quorum=False, sorted=None):
        """GET a key or directory: C{?quorum=..&recursive=..&sorted=..} (all three, as Go sends).

        Fires with a L{Response}; fails with L{KeyNotFound} (100) and the other errors
        described in the module docstring.
        """
        query = [("quorum", _bool(quorum)), ("recursive", _bool(recursive)),
                 ("sorted", _bool(sorted))]
        return self._call(b"GET", key, query)

    def set(self, key, value, ttl=None, prev_exist=None, prev_value=None, prev_index=None):
        """PUT a value; form C{ttl=N&value=V}, query C{prevExist=true|false} unless None.

        A ttl of None or 0 sets no TTL (as Go's client does).  Fires with a L{Response}
        (action "set", "create", "update" or "compareAndSwap"); fails with L{NodeExist} (105,
        prev_exist=False), L{KeyNotFound} (100, prev_exist=True or prev_value on a missing
        key) or L{TestFailed} (101, prev_value or prev_index differs), among others.
        C{prev_index} sends C{prevIndex=N}: the write happens only if the key's
        modifiedIndex is still N.
        """
        query = []
        if prev_exist is not None:
            query.append(("prevExist", _bool(prev_exist)))
        if prev_value is not None:
            query.append(("prevValue", prev_value))
        if prev_index is not None:
            query.append(("prevIndex", str(int(prev_index))))
        form = []
        if ttl is not None and int(ttl) > 0:
            form.append(("ttl", str(int(ttl))))
        form.append(("value", value))
        return self._call(b"PUT", key, query, form=form)

    def create(self, key, value, ttl=None):
        """C{set(key, value, ttl, prev_exist=False)}: fails with L{NodeExist} if the key exists."""
        return self.set(key, value, ttl=ttl, prev_exist=False)

    def delete(self, key, prev_index=None):
        """DELETE a key.  Fires with a L{Response} (action "delete", prev_node set);
        fails with L{KeyNotFound} if it is missing. C{prev_index} sends C{prevIndex=N}
        (action "compareAndDelete"): fails with L{TestFailed} if the key's modifiedIndex
        is no longer N."""
        query = [] if prev_index is None else [("prevIndex", str(int(prev_index)))]
        return self._call(b"DELETE", key, query)

    def watch(self, key, wait_index, recursive=False, detect_reset=False):
        """Long-poll C{?recursive=..&wait=true&waitIndex=N} with no timeout.

        Fires with the L{Response} of the first event with modifiedIndex >= wait_index.
        A 200 with an empty body is retried transparently, after a capped, jittered
        backoff (1 s growing to 30 s: a member that ends every poll at once is not asked
        in a tight loop). With no event for C{watch_timeout} seconds the member is checked
        (see the class docstring) and the watch issued again from the same index, or on
        the next member.  Fails with L{EventIndexCleared}
        (401) when wait_index fell out of etcd's 1000-event history, and with the errors in
        the module docstring.  Cancelling the Deferred aborts the HTTP request (the
        connection is closed) and fails it with CancelledError.

        With C{detect_reset}, a watch that reaches an etcd whose X-Etcd-Index (sent with
        the headers, before any event) is below C{wait_index - 1} fails at once with
        L{EtcdIndexWentBack}: for a caller whose C{wait_index} is always one past an
        index it saw, that means the cluster was wiped or restored.
        """
        query = [("recursive", _bool(recursive)), ("wait", "true"),
                 ("waitIndex", str(int(wait_index)))]
        return self._call(b"GET", key, query, watch=True,
                          wait_index=int(wait_index) if detect_reset else None)

    # -- machinery --------------------------------------------------------------------

    def _url(self, endpoint, key, query):
        if not isinstance(key, str):
            raise TypeError("etcd key must be str, got %r" % (key,))
        if not key.startswith("/"):
            key = "/" + key
        url = endpoint + "/v2/keys" + quote(key, safe="/")
        if query:
            url += "?" + urlencode(query)
        return url

    def _call(self, method, key, query, form=None, watch=False, wait_index=None):
        try:
            for ep in self.endpoints:
                self._url(ep, key, query)
        except Exception:
            return defer.fail()
        token = _Call(self._reactor.seconds())
        if watch:
            self._watches.add(token)
        inner = defer.ensureDeferred(self._failover(method, key, query, form, watch,
                                                    wait_index, token))

        def cancel(_outer):
            # A cancelled request can surface as another error (e.g. a TLS handshake cut
            # short); the token makes sure it neither fails over nor answers late.
            token.cancelled = True
            inner.cancel()

        outer = defer.Deferred(cancel)

        def relay(result):
            self._watches.discard(token)
            if outer.called:
                return None  # cancelled meanwhile: outer already failed with CancelledError
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
            return None

        inner.addBoth(relay)
        return self._counted(outer)

    def _failover(self, method, key, query, form, watch, wait_index=None, token=None):
        def attempt(endpoint):
            return self._attempt_until_answer(method, self._url(endpoint, key, query), form,
                                              watch, wait_index, endpoint, token)
        return self._over_endpoints(attempt, lambda: token is not None and token.cancelled,
                                    method=method.decode("ascii"), key=key)

    async def _attempt_until_answer(self, method, url, form, watch, wait_index=None,
                                    endpoint=None, call=None):
        empties = 0
        while True:
            d = defer.ensureDeferred(self._attempt(method, url, form, wait_index, call))
            timeout = self.watch_timeout if watch else self.request_timeout
            if timeout is not None:
                d.addTimeout(timeout, self._reactor)
            try:
                status, headers, body = await d
            except defer.CancelledError:
                # Cancelled by our caller (a timeout arrives as TimeoutError instead).
                raise
            except (EtcdError, EtcdProtocolError, EtcdIndexWentBack):
                raise
            except defer.TimeoutError as e:
                if not watch:
                    raise TransportFailure(e) from None
                # No event for watch_timeout: an idle cluster, or a member gone silent.
                await self._check_member(endpoint, call)
                continue
            except Exception as e:  # transport failures and EtcdMemberError: next endpoint
                raise TransportFailure(e) from None
            if watch and status == 200 and not body.strip():
                # etcd (or a proxy) ended the long poll without an event: ask again, but
                # not in a tight loop.
                delay = self._empty_backoff(empties)
                empties += 1
                emit = self.log.warn if empties == 10 else self.log.debug
                emit("etcd endpoint {endpoint} ended a watch without an event ({n} in a row); "
                     "asking again in {delay:.1f}s", endpoint=endpoint, n=empties, delay=delay)
                await task.deferLater(self._reactor, delay, lambda: None)
                continue
            try:
                return _parse(status, headers, body)
            except EtcdMemberError as e:
                raise TransportFailure(e) from None

    async def _check_member(self, endpoint, call):
        """
        After C{watch_timeout} without an event: GET C{<endpoint>/health} within
        C{request_timeout}. Returns when the member answers (a 404 from an etcd without
        /health counts); raises L{TransportFailure} with an L{EtcdMemberError} (kind "silent")
        when it does not answer, answers 5xx or says C{"health": "false"}.
        """
        d = defer.ensureDeferred(self._health(endpoint + "/health"))
        limit = self.request_timeout if self.request_timeout is not None else self.watch_timeout
        d.addTimeout(limit, self._reactor)
        why = None
        try:
            status, body = await d
        except defer.CancelledError:
            raise
        except Exception as e:
            why = "did not answer: %s" % (describe_transport_error(e, self.tls_files),)
        else:
            if status >= 500 or _says_unhealthy(body):
                why = "answered HTTP %d %r" % (status, body[:_SNIPPET])
        if why is not None:
            raise TransportFailure(EtcdMemberError(
                "no event for %gs and %s/health %s" % (self.watch_timeout, endpoint, why),
                kind="silent"))
        if call is not None:
            call.alive_at = self._reactor.seconds()
        self.log.debug("No event for {timeout}s from etcd endpoint {endpoint}, which answers "
                       "/health: watching again", timeout=self.watch_timeout, endpoint=endpoint)

    async def _health(self, url):
        kwargs = {"unbuffered": True, "allow_redirects": False}
        if self._auth is not None:
            kwargs["auth"] = self._auth
        response = await self._http.request("GET", url, **kwargs)
        body = await read_body(getattr(response, "original", response), _HEALTH_BODY)
        return response.code, body

    async def _attempt(self, method, url, form, wait_index=None, call=None):
        kwargs = {"unbuffered": True, "allow_redirects": False}
        headers = {}
        if form is not None:
            kwargs["data"] = urlencode(form).encode("utf-8")
            headers[b"Content-Type"] = [b"application/x-www-form-urlencoded"]
        if headers:
            kwargs["headers"] = headers
        if self._auth is not None:
            kwargs["auth"] = self._auth
        try:
            response = await self._http.request(method.decode("ascii"), url, **kwargs)
        except Exception as e:
            # Agent reports a cancelled request as ResponseNeverReceived([CancelledError]);
            # unwrap it so that timeouts and caller cancellations are recognised.
            reasons = getattr(e, "reasons", None)
            if reasons and all(r.check(defer.CancelledError) for r in reasons):
                raise defer.CancelledError() from None
            raise
        if call is not None:
            call.alive_at = self._reactor.seconds()   # the member is there
        raw = getattr(response, "original", response)
        if wait_index is not None and response.code == 200:
            # etcd flushes a watch's headers at once, with X-Etcd-Index = its current
            # index. Below our cursor (wait_index - 1) means a wiped or restored cluster:
            # the body would not come until the index catches up, so give up now.
            current = _header_index(response.headers)
            if current is not None and current < wait_index - 1:
                discard_body(raw)
                raise EtcdIndexWentBack(wait_index, current)
        body = await read_body(raw, self.max_body)
        if call is not None:
            call.alive_at = self._reactor.seconds()
        return response.code, response.headers, body
