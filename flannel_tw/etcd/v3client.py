# -*- test-case-name: tests.unit.test_etcd_v3client, tests.integration.test_etcd_v3 -*-
"""
An etcd v3 client on etcd's JSON gRPC gateway (C{POST /v3/...}, checked against etcd
3.5, which serves C{/v3/}), over the same treq transport as the v2 client
(L{flannel_tw.etcd.transport}: keepalive, L{IdentityAgent}, capped L{read_body}).

Wire format (flanneld-v0.20-v3.md, A11): JSON bodies with proto field names; bytes
(keys, values) are standard base64; int64 travels as a decimal string (we send strings
and accept strings or numbers); zero values are omitted by the server (no C{kvs} on an
empty range, no C{succeeded} on a failed txn, no C{lease} on a key without one, no
C{type} on a PUT event).

Fail-over is the v2 client's: a transport failure, a timeout or an HTTP 5xx (etcd's
gateway answers C{Unavailable} with 503) passes the request to the next endpoint;
any other gateway error body (C{{"error","code","message"}}) is an answer,
L{EtcdV3Error} (C{code} the gRPC code), never retried elsewhere. Every endpoint
failing gives L{EtcdUnavailable}.

Auth: with a user name, C{/v3/auth/authenticate} gives a token sent as the
C{Authorization} header; an answer "invalid auth token" (an expired token, or a
restarted member) authenticates again and repeats the request once.

The watch (L{EtcdV3Client.watch_once}) is a streaming POST: the gateway sends a chunked
body of C{{"result": WatchResponse}} objects (one per line); L{JSONStream} splits them
whatever the chunk boundaries. A response with C{compact_revision} (the start
revision was compacted away) fails with L{WatchCompacted}.

Why this module is longer than 400 lines: like the v2 client, one request's fail-over,
timeout, auth-token renewal and cancellation share one loop, and the streaming watch
(its chunk splitter and liveness) belongs to it; answers' parsing that needs no request
state could move to a wire module as v2's did (a later step).
"""
import base64
import json

from twisted.internet import defer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from flannel_tw.etcd.base import EtcdClientBase, TransportFailure
from flannel_tw.etcd.errors import (EtcdError, EtcdIndexWentBack, EtcdMemberError,
                                    EtcdProtocolError, EtcdResponseTooLarge, EventIndexCleared)
from flannel_tw.etcd.transport import MAX_BODY, read_body

__all__ = ["EtcdV3Client", "EtcdV3Error", "WatchCompacted", "JSONStream", "b64", "unb64",
           "prefix_range_end", "as_int"]

_SNIPPET = 200


def b64(data) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def unb64(text) -> bytes:
    if text is None:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise EtcdProtocolError("not base64: %r (%s)" % (str(text)[:_SNIPPET], e))


def as_int(value, default=0) -> int:
    """An int64 of a gateway answer (a string or a number); absent -> C{default}."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EtcdProtocolError("not an integer: %r" % (value,))
    try:
        return int(value)
    except ValueError:
        raise EtcdProtocolError("not an integer: %r" % (value,))


def prefix_range_end(key) -> bytes:
    """etcd's prefix range end: the last byte below 0xff incremented, the rest dropped;
    all 0xff (or empty) -> C{b"\\0"} (every key from C{key} on)."""
    data = bytearray(key.encode("utf-8") if isinstance(key, str) else key)
    while data:
        if data[-1] < 0xff:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return b"\0"


class EtcdV3Error(EtcdError):
    """An error body of the gateway: C{error_code} the gRPC code (e.g. 5 NotFound, 3
    InvalidArgument, 16 Unauthenticated), C{status} the HTTP status."""

    def __init__(self, code, message, status=None):
        super().__init__(code, message)
        self.status = status

    def __str__(self):
        return "etcd v3 error %d: %s" % (self.error_code, self.message)


class WatchCompacted(EventIndexCleared):
    """The watch's start revision was compacted away: list again. C{compact_revision} is
    the oldest revision still kept."""

    def __init__(self, start_revision, compact_revision):
        super().__init__(401, "the requested revision %d has been compacted (oldest kept: %d)"
                         % (start_revision, compact_revision), "", compact_revision)
        self.start_revision = start_revision
        self.compact_revision = compact_revision


class JSONStream(Protocol):
    """
    A streaming body of concatenated JSON objects (the gateway puts a newline after
    each, but a chunk may end anywhere): C{on_object(obj)} is called for each complete
    object; when it returns true the transfer is stopped and C{deferred} fires with that
    object. The buffered, incomplete tail is capped at C{limit} bytes
    (L{EtcdResponseTooLarge}). The body ending first fails with L{EtcdProtocolError};
    cancelling C{deferred} drops the connection.
    """

    def __init__(self, on_object, limit=MAX_BODY):
        self._on_object = on_object
        self._limit = limit
        self._buffer = ""
        self._pending = b""
        self._decoder = json.JSONDecoder()
        self.deferred = defer.Deferred(lambda _d: self._stop())

    def _stop(self):
        if self.transport is not None:
            try:
                self.transport.stopProducing()
            except Exception:
                pass

    def _fail(self, error):
        self._stop()
        if not self.deferred.called:
            self.deferred.errback(error)

    def dataReceived(self, data):
        if self.deferred.called:
            return
        data = self._pending + data
        try:
            text = data.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as e:
            if e.start < len(data) - 3:
                self._fail(EtcdProtocolError("watch stream is not UTF-8"))
                return
            text, self._pending = data[:e.start].decode("utf-8"), data[e.start:]
        self._buffer += text
        while not self.deferred.called:
            stripped = self._buffer.lstrip()
            if not stripped:
                self._buffer = ""
                break
            try:
                obj, end = self._decoder.raw_decode(stripped)
            except ValueError:
                if len(stripped) > self._limit:
                    self._fail(EtcdResponseTooLarge(self._limit))
                    return
                self._buffer = stripped
                break  # incomplete: wait for more
            self._buffer = stripped[end:]
            try:
                done = self._on_object(obj)
            except Exception:
                self._fail(Failure())
                return
            if done:
                self._stop()
                self.deferred.callback(obj)

    def connectionLost(self, reason=connectionDone):
        if self.deferred.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.deferred.errback(EtcdMemberError("the watch stream ended", kind="server_error"))
        else:
            self.deferred.errback(reason)


class _Watch:
    """One watch in flight: C{alive_at} is when its member last showed life (answered the
    request's headers, or sent a stream object)."""

    def __init__(self, start_revision, on_created, now):
        self.start_revision = start_revision
        self.on_created = on_created
        self.alive_at = now


def _error_from(status, body):
    """An answer that is not a 200 -> the exception to raise (TransportFailure for 5xx)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except ValueError:
        doc = None
    message = doc.get("message") or doc.get("error") if isinstance(doc, dict) else None
    code = doc.get("code") if isinstance(doc, dict) else None
    if status >= 500:
        return TransportFailure(EtcdMemberError("HTTP %d %s" % (status, message or body[:_SNIPPET]),
                                          status=status, code=code))
    if not isinstance(message, str) or isinstance(code, bool) or not isinstance(code, int):
        return EtcdProtocolError("HTTP %d without an etcd error body" % (status,), status, body)
    return EtcdV3Error(code, message, status)


def _is_invalid_token(error):
    return isinstance(error, EtcdV3Error) and "invalid auth token" in error.message


class EtcdV3Client(EtcdClientBase):
    """
    etcd v3 over the JSON gateway, with endpoint fail-over.

    @param endpoints: base URLs (a list, or a comma-separated text).
    @param http: treq's C{request} API (C{StubTreq} in tests); None builds the transport
        of L{flannel_tw.etcd.transport.build_http}.
    @param username, password: v3 auth (authenticate only when a user is given).
    @param request_timeout: seconds per request and endpoint (None: none).
    @param watch_timeout: seconds a watch may wait without a response before it is
        opened again (on the same endpoint first: a silent member is noticed; None: wait).
    """

    log = Logger()

    def __init__(self, reactor, endpoints, http=None, username=None, password=None, tls=None,
                 request_timeout=10.0, connect_timeout=None, watch_timeout=60.0,
                 max_body=MAX_BODY):
        super().__init__(reactor, endpoints, http=http, tls=tls,
                         request_timeout=request_timeout, connect_timeout=connect_timeout,
                         watch_timeout=watch_timeout, max_body=max_body)
        self._username = username
        self._password = password or ""
        self._token = None

    # -- the API ------------------------------------------------------------------------

    def range(self, key, range_end=None, revision=None):
        """Fires with the answer dict (C{header}, C{kvs} possibly absent)."""
        body = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision is not None:
            body["revision"] = str(int(revision))
        return self.call("/v3/kv/range", body)

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(int(lease))
        return self.call("/v3/kv/put", body)

    def txn(self, compare, success, failure=()):
        body = {"compare": list(compare), "success": list(success)}
        if failure:
            body["failure"] = list(failure)
        return self.call("/v3/kv/txn", body)

    def delete_range(self, key, range_end=None, prev_kv=False):
        body = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if prev_kv:
            body["prev_kv"] = True
        return self.call("/v3/kv/deleterange", body)

    def lease_grant(self, ttl):
        return self.call("/v3/lease/grant", {"TTL": str(int(ttl))})

    def lease_revoke(self, lease_id):
        return self.call("/v3/lease/revoke", {"ID": str(int(lease_id))})

    def lease_time_to_live(self, lease_id):
        return self.call("/v3/lease/timetolive", {"ID": str(int(lease_id))})

    def compact(self, revision):
        return self.call("/v3/kv/compaction", {"revision": str(int(revision))})

    def call(self, path, body):
        """POST C{body} to C{path} with fail-over; fires with the decoded answer dict."""
        return self._counted(defer.ensureDeferred(self._failover(path, body, None)))

    def watch_once(self, key, range_end, start_revision, on_created=None):
        """
        Open a watch at C{start_revision} and fire with the first C{WatchResponse} (a
        dict) holding events; the stream is then closed. C{on_created(header_revision)}
        is called with the created ack's store revision (it may raise to give up, e.g.
        L{flannel_tw.etcd.errors.EtcdIndexWentBack}). Fails with L{WatchCompacted},
        L{EtcdV3Error} (an error object in the stream, or a cancel without compaction),
        whatever C{on_created} raised,
        L{EtcdUnavailable}. No response for C{watch_timeout} seconds: the watch is
        opened again. Cancellable.
        """
        body = {"create_request": {"key": b64(key), "range_end": b64(range_end),
                                   "start_revision": str(int(start_revision)),
                                   "prev_kv": True}}
        watch = _Watch(int(start_revision), on_created, self._reactor.seconds())
        self._watches.add(watch)
        d = self._counted(defer.ensureDeferred(self._failover("/v3/watch", body, watch)))

        def done(result):
            self._watches.discard(watch)
            return result
        return d.addBoth(done)

    # -- machinery ----------------------------------------------------------------------

    def _failover(self, path, body, watch):
        return self._over_endpoints(
            lambda endpoint: self._with_auth(endpoint, path, body, watch), path=path)

    def _endpoint_failed(self, endpoint):
        self._token = None          # a token is per member: authenticate again on the next

    async def _with_auth(self, endpoint, path, body, watch):
        for attempt in (0, 1):
            if self._username is not None and self._token is None:
                try:
                    answer = await self._attempt(endpoint, "/v3/auth/authenticate",
                                                 {"name": self._username,
                                                  "password": self._password}, None, False)
                except EtcdV3Error as e:
                    if "authentication is not enabled" not in e.message:
                        raise
                    # as clientv3: no v3 auth on this cluster, so no token ("" = none)
                    self.log.info("etcd v3 auth is not enabled: requests go without a "
                                  "token (user {user} unused)", user=self._username)
                    self._token = ""
                    answer = None
                if answer is None:
                    return await self._attempt(endpoint, path, body, watch, True)
                token = answer.get("token")
                if not isinstance(token, str) or not token:
                    raise EtcdProtocolError("authenticate gave no token")
                self._token = token
            try:
                return await self._attempt(endpoint, path, body, watch, True)
            except EtcdV3Error as e:
                if attempt == 0 and self._username is not None and _is_invalid_token(e):
                    self.log.info("etcd said our auth token is invalid; authenticating again")
                    self._token = None
                    continue
                raise

    async def _attempt(self, endpoint, path, body, watch, auth):
        while True:
            d = defer.ensureDeferred(self._request(endpoint, path, body, watch, auth))
            timeout = self.request_timeout if watch is None else self.watch_timeout
            if timeout is not None:
                d.addTimeout(timeout, self._reactor)
            try:
                return await d
            except (EtcdError, EtcdProtocolError, EtcdIndexWentBack, TransportFailure):
                raise
            except defer.TimeoutError:
                if watch is None:
                    raise TransportFailure(defer.TimeoutError("no answer in %gs" % timeout)) from None
                self.log.debug("No watch response for {timeout}s from {endpoint}; watching "
                               "again", timeout=timeout, endpoint=endpoint)
                continue
            except defer.CancelledError:
                raise
            except Exception as e:
                raise TransportFailure(e) from None

    async def _request(self, endpoint, path, body, watch, auth):
        headers = {b"Content-Type": [b"application/json"]}
        if auth and self._token:
            headers[b"Authorization"] = [self._token.encode("utf-8")]
        try:
            response = await self._http.request(
                "POST", endpoint + path, data=json.dumps(body).encode("utf-8"),
                headers=headers, unbuffered=True, allow_redirects=False)
        except Exception as e:
            reasons = getattr(e, "reasons", None)
            if reasons and all(r.check(defer.CancelledError) for r in reasons):
                raise defer.CancelledError() from None
            raise
        raw = getattr(response, "original", response)
        if watch is not None:
            watch.alive_at = self._reactor.seconds()
        if response.code != 200 or watch is None:
            data = await read_body(raw, self.max_body)
            if response.code != 200:
                raise _error_from(response.code, data)
            try:
                doc = json.loads(data.decode("utf-8"))
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                raise EtcdProtocolError("the answer is not a JSON object", response.code, data)
            return doc
        return await self._stream(raw, watch)

    async def _stream(self, raw, watch):
        start_revision, on_created = watch.start_revision, watch.on_created

        def on_object(obj):
            watch.alive_at = self._reactor.seconds()
            if not isinstance(obj, dict):
                raise EtcdProtocolError("watch stream object is not a JSON object")
            if "error" in obj:
                err = obj["error"]
                if isinstance(err, dict):
                    code, message = err.get("grpc_code", err.get("code")), err.get("message")
                else:
                    code, message = obj.get("code"), obj.get("message") or err
                code = code if isinstance(code, int) and not isinstance(code, bool) else 2
                if code in (14, 4):  # Unavailable, DeadlineExceeded: the member's trouble
                    raise TransportFailure(EtcdMemberError(str(message), code=code))
                raise EtcdV3Error(code, str(message))
            result = obj.get("result")
            if not isinstance(result, dict):
                raise EtcdProtocolError("watch stream object without result: %r"
                                        % (str(obj)[:_SNIPPET],))
            compact = as_int(result.get("compact_revision"))
            if compact:
                raise WatchCompacted(start_revision, compact)
            if result.get("created") and on_created is not None:
                on_created(as_int((result.get("header") or {}).get("revision")))
            if result.get("events"):
                return True
            if result.get("canceled"):
                raise EtcdV3Error(1, "watch canceled: %s" % (result.get("cancel_reason") or "",))
            return False

        reader = JSONStream(on_object, self.max_body)
        raw.deliverBody(reader)
        try:
            obj = await reader.deferred
        except EtcdMemberError as e:
            raise TransportFailure(e) from None
        return obj["result"]

