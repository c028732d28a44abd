"""flannel_tw.etcd.v3client: the request and response JSON of the etcd v3 gateway client,
its fail-over and auth, and the streaming watch split across reads (StubTreq over an
in-memory twisted.web resource)."""

import json

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.logger import capturedLogs
from twisted.trial import unittest
from twisted.web.client import ResponseDone
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flannel_tw.etcd.errors import (EtcdProtocolError, EtcdResponseTooLarge, EtcdUnavailable,
                                    EventIndexCleared)
from flannel_tw.etcd.v3client import (EtcdV3Client, EtcdV3Error, JSONStream, WatchCompacted,
                                      b64, prefix_range_end)

EP1 = "http://127.0.0.1:2379"
EP2 = "http://127.0.0.2:2379"
HEADER = {"cluster_id": "1", "member_id": "2", "revision": "7", "raft_term": "2"}


def _json(obj):
    return json.dumps(obj).encode()


class Gateway(Resource):
    """A scripted gateway: each request pops the next answer: (status, body) or a list of
    body chunks (a stream, written one per flush, held open)."""

    isLeaf = True

    def __init__(self, *answers):
        super().__init__()
        self.answers = list(answers)
        self.requests = []
        self.streams = []

    def render_POST(self, request):
        self.requests.append({"host": request.getHeader(b"host"), "path": request.path,
                              "body": json.loads(request.content.read()),
                              "authorization": request.getHeader(b"authorization")})
        answer = self.answers.pop(0)
        if isinstance(answer, list):
            request.setHeader(b"content-type", b"application/json")
            self.streams.append((request, answer))
            return NOT_DONE_YET
        status, body = answer
        request.setResponseCode(status)
        return body if isinstance(body, bytes) else _json(body)


class Base(unittest.TestCase):
    def make(self, *answers, endpoints=(EP1,), **kwargs):
        self.gateway = Gateway(*answers)
        self.stub = StubTreq(self.gateway)
        self.clock = task.Clock()
        return EtcdV3Client(self.clock, list(endpoints), http=self.stub, **kwargs)


class RequestTests(Base):
    def test_range_request_and_answer(self):
        kv = {"key": b64("/p/subnets/10.5.1.0-24"), "value": b64("{}"), "mod_revision": "5",
              "lease": "99"}
        c = self.make((200, {"header": HEADER, "kvs": [kv], "count": "1"}))
        answer = self.successResultOf(c.range("/p/subnets", "/p/subnett"))
        self.assertEqual(answer["kvs"], [kv])
        (req,) = self.gateway.requests
        self.assertEqual(req["path"], b"/v3/kv/range")
        self.assertEqual(req["body"], {"key": b64("/p/subnets"), "range_end": b64("/p/subnett")})

    def test_put_grant_txn_bodies(self):
        c = self.make((200, {"header": HEADER, "ID": "123", "TTL": "86400"}),
                      (200, {"header": HEADER}), (200, {"header": HEADER}),
                      (200, {"header": HEADER, "deleted": "1"}))
        self.successResultOf(c.lease_grant(86400))
        self.successResultOf(c.put("/k", "v", 123))
        cmp = {"key": b64("/k"), "target": "VERSION", "result": "EQUAL", "version": "0"}
        self.successResultOf(c.txn([cmp], [{"request_put": {"key": b64("/k")}}]))
        self.successResultOf(c.delete_range("/k"))
        self.assertEqual([(r["path"], r["body"]) for r in self.gateway.requests], [
            (b"/v3/lease/grant", {"TTL": "86400"}),
            (b"/v3/kv/put", {"key": b64("/k"), "value": b64("v"), "lease": "123"}),
            (b"/v3/kv/txn", {"compare": [cmp], "success": [{"request_put": {"key": b64("/k")}}]}),
            (b"/v3/kv/deleterange", {"key": b64("/k")})])

    def test_error_body_is_an_answer_not_failed_over(self):
        c = self.make((404, {"error": "etcdserver: requested lease not found", "code": 5,
                             "message": "etcdserver: requested lease not found"}),
                      endpoints=(EP1, EP2))
        f = self.failureResultOf(c.put("/k", "v", 777), EtcdV3Error)
        self.assertEqual((f.value.error_code, f.value.status), (5, 404))
        self.assertEqual(len(self.gateway.requests), 1)

    def test_5xx_fails_over_to_next_endpoint(self):
        c = self.make((503, {"error": "etcdserver: no leader", "code": 14,
                             "message": "etcdserver: no leader"}),
                      (200, {"header": HEADER}), endpoints=(EP1, EP2))
        self.successResultOf(c.range("/k"))
        self.assertEqual([r["host"] for r in self.gateway.requests],
                         [b"127.0.0.1:2379", b"127.0.0.2:2379"])
        self.assertEqual(c.current_endpoint, EP2)

    def test_all_endpoints_failing_is_unavailable(self):
        c = self.make((500, b"boom"), (502, b"bad gateway"), endpoints=(EP1, EP2))
        f = self.failureResultOf(c.range("/k"), EtcdUnavailable)
        self.assertEqual(set(f.value.errors), {EP1, EP2})

    def test_a_failing_endpoint_is_warned_about_once_per_cause(self):
        """The same cause again goes to debug; a recovery is said once (the shared
        fail-over of etcd/base.py: the v3 client warned at every failure before)."""
        busy = {"error": "etcdserver: no leader", "code": 14, "message": "etcdserver: no leader"}
        c = self.make((503, busy), (200, {"header": HEADER}), (503, busy),
                      (200, {"header": HEADER}), (200, {"header": HEADER}),
                      endpoints=(EP1, EP2))
        with capturedLogs() as events:
            self.successResultOf(c.range("/k"))      # EP1 fails, EP2 answers
            c._current = 0
            self.successResultOf(c.range("/k"))      # EP1 fails again, same cause
            c._current = 0
            self.successResultOf(c.range("/k"))      # EP1 answers again
        levels = [(e["log_level"].name, e["log_format"].split(":")[0]) for e in events
                  if "endpoint" in e.get("log_format", "")]
        self.assertEqual(levels, [
            ("warn", "etcd endpoint {endpoint} failed"),
            ("debug", "etcd endpoint {endpoint} failed"),
            ("info", "etcd endpoint {endpoint} answers again")])

    def test_non_json_answer_is_protocol_error(self):
        c = self.make((200, b"<html>"))
        self.failureResultOf(c.range("/k"), EtcdProtocolError)

    def test_auth_token_sent_and_renewed_on_invalid_token(self):
        invalid = {"error": "etcdserver: invalid auth token", "code": 3,
                   "message": "etcdserver: invalid auth token"}
        c = self.make((200, {"header": HEADER, "token": "T1"}), (200, {"header": HEADER}),
                      (401, invalid), (200, {"header": HEADER, "token": "T2"}),
                      (200, {"header": HEADER}), username="root", password="pw")
        self.successResultOf(c.range("/a"))
        self.successResultOf(c.range("/b"))
        reqs = self.gateway.requests
        self.assertEqual([(r["path"], r["authorization"]) for r in reqs], [
            (b"/v3/auth/authenticate", None), (b"/v3/kv/range", b"T1"),
            (b"/v3/kv/range", b"T1"), (b"/v3/auth/authenticate", None),
            (b"/v3/kv/range", b"T2")])
        self.assertEqual(reqs[0]["body"], {"name": "root", "password": "pw"})

    def test_user_given_but_auth_not_enabled_goes_on_without_token(self):
        # as etcd's clientv3: "authentication is not enabled" is not an error; requests
        # go without a token (a cluster with v2 auth only, read by --etcd-api=auto)
        off = {"error": "etcdserver: authentication is not enabled", "code": 9,
               "message": "etcdserver: authentication is not enabled"}
        c = self.make((400, off), (200, {"header": HEADER}), (200, {"header": HEADER}),
                      username="root", password="pw")
        self.successResultOf(c.range("/a"))
        self.successResultOf(c.range("/b"))
        self.assertEqual([(r["path"], r["authorization"]) for r in self.gateway.requests], [
            (b"/v3/auth/authenticate", None), (b"/v3/kv/range", None),
            (b"/v3/kv/range", None)])

    def test_prefix_range_end(self):
        self.assertEqual(prefix_range_end("/p/subnets"), b"/p/subnett")
        self.assertEqual(prefix_range_end(b"a\xff"), b"b")
        self.assertEqual(prefix_range_end(b"\xff\xff"), b"\0")


def _line(result):
    return _json({"result": dict({"header": HEADER}, **result)}) + b"\n"


class WatchTests(Base):
    def test_watch_request_and_events_split_across_chunks(self):
        created = _line({"created": True})
        events = _line({"events": [
            {"kv": {"key": b64("/p/subnets/a"), "mod_revision": "8", "value": b64("x")}},
            {"type": "DELETE", "kv": {"key": b64("/p/subnets/b"), "mod_revision": "8"}}]})
        data = created + events
        chunks = [data[:5], data[5:len(created) + 3], data[len(created) + 3:-10], data[-10:]]
        c = self.make(chunks)
        revisions = []
        d = c.watch_once("/p/subnets", "/p/subnett", 8, revisions.append)
        self.stub.flush()
        (request, parts) = self.gateway.streams[0]
        for i, part in enumerate(parts):
            self.assertNoResult(d)
            request.write(part)
            self.stub.flush()
        result = self.successResultOf(d)
        self.assertEqual([e.get("type") for e in result["events"]], [None, "DELETE"])
        self.assertEqual(revisions, [7])
        (req,) = self.gateway.requests
        self.assertEqual((req["path"], req["body"]), (b"/v3/watch", {"create_request": {
            "key": b64("/p/subnets"), "range_end": b64("/p/subnett"), "start_revision": "8",
            "prev_kv": True}}))

    def _stream(self, *lines):
        c = self.make(list(lines))
        d = c.watch_once("/p/subnets", "/p/subnett", 3)
        self.stub.flush()
        request, parts = self.gateway.streams[0]
        for part in parts:
            request.write(part)
        self.stub.flush()
        return d

    def test_compacted_watch_is_typed_error(self):
        d = self._stream(_line({"created": True}),
                         _line({"compact_revision": "5", "canceled": True}))
        f = self.failureResultOf(d, WatchCompacted)
        self.assertIsInstance(f.value, EventIndexCleared)
        self.assertEqual((f.value.start_revision, f.value.compact_revision), (3, 5))

    def test_error_in_stream_is_v3_error(self):
        d = self._stream(_json({"error": {"grpc_code": 7, "http_code": 403,
                                          "message": "permission denied"}}) + b"\n")
        f = self.failureResultOf(d, EtcdV3Error)
        self.assertEqual(f.value.error_code, 7)

    def test_idle_watch_is_opened_again_after_watch_timeout(self):
        c = self.make([_line({"created": True})], [_line({"created": True}),
                                                   _line({"events": [{"kv": {}}]})],
                      watch_timeout=60)
        d = c.watch_once("/p/subnets", "/p/subnett", 3)
        self.stub.flush()
        request, parts = self.gateway.streams[0]
        request.write(parts[0])
        self.stub.flush()
        self.clock.advance(61)
        self.stub.flush()
        request, parts = self.gateway.streams[1]
        for part in parts:
            request.write(part)
        self.stub.flush()
        self.assertEqual(self.successResultOf(d)["events"], [{"kv": {}}])
        self.assertEqual(len(self.gateway.requests), 2)


class JSONStreamTests(unittest.TestCase):
    def feed(self, data, sizes, limit=1 << 20):
        seen = []
        stream = JSONStream(lambda obj: seen.append(obj) or obj.get("last"), limit)
        i = 0
        for size in sizes:
            stream.dataReceived(data[i:i + size])
            i += size
        stream.dataReceived(data[i:])
        return stream, seen

    def test_any_split_gives_the_same_objects(self):
        data = (_json({"a": "\u00e9t\u00e9"}) + b"\n" + _json({"b": [1, {"c": "}"}]})
                + b"\n" + _json({"last": True}) + b"\n")
        for n in range(1, 8):
            stream, seen = self.feed(data, [n] * (len(data) // n))
            self.assertEqual(seen, [{"a": "\u00e9t\u00e9"}, {"b": [1, {"c": "}"}]},
                                    {"last": True}])
            self.assertEqual(self.successResultOf(stream.deferred), {"last": True})

    def test_incomplete_tail_over_limit_fails(self):
        stream, seen = self.feed(b'{"a":"' + b"x" * 100, [10], limit=50)
        self.failureResultOf(stream.deferred, EtcdResponseTooLarge)

    def test_end_of_body_before_an_event_fails(self):
        stream, _ = self.feed(_json({"x": 1}), [])
        stream.connectionLost(Failure(ResponseDone()))
        self.assertIsNotNone(self.failureResultOf(stream.deferred))




class CancelTests(Base):
    def test_cancelled_watch_fails_with_cancelled_and_drops_the_stream(self):
        c = self.make([_line({"created": True})])
        d = c.watch_once("/p/subnets", "/p/subnett", 3)
        self.stub.flush()
        request, parts = self.gateway.streams[0]
        request.write(parts[0])
        self.stub.flush()
        lost = []
        request.notifyFinish().addErrback(lost.append)
        d.cancel()
        self.stub.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(lost), 1)

    def test_cancelled_request_fails_with_cancelled(self):
        c = self.make([b""])
        d = c.range("/k")
        self.stub.flush()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(self.gateway.requests), 1)


class StatusTests(Base):
    """What the daemon's /healthz and /metrics read of any etcd client."""

    def test_error_counts_by_kind(self):
        c = self.make((503, b"x"), (404, {"error": "e", "code": 5, "message": "e"}),
                      (200, b"nope"), endpoints=(EP1,))
        self.failureResultOf(c.range("/k"), EtcdUnavailable)
        self.failureResultOf(c.range("/k"), EtcdV3Error)
        self.failureResultOf(c.range("/k"), EtcdProtocolError)
        self.assertEqual(dict(c.error_counts), {"server_error": 1, "unavailable": 1,
                                                "etcd_other": 1, "protocol": 1})

    def test_watch_silence_follows_the_stream(self):
        c = self.make([_line({"created": True}), _line({}), _line({"events": [{"kv": {}}]})],
                      watch_timeout=None)
        self.assertIsNone(c.watch_silence())
        d = c.watch_once("/p/subnets", "/p/subnett", 3)
        self.stub.flush()
        self.clock.advance(5)
        self.assertEqual(c.watch_silence(), 5)
        request, parts = self.gateway.streams[0]
        request.write(parts[0])                   # headers and the created ack
        self.stub.flush()
        self.assertEqual(c.watch_silence(), 0)
        self.clock.advance(7)
        self.assertEqual(c.watch_silence(), 7)
        request.write(parts[1])                   # a response without events (progress)
        self.stub.flush()
        self.assertEqual(c.watch_silence(), 0)
        request.write(parts[2])
        self.stub.flush()
        self.successResultOf(d)
        self.assertIsNone(c.watch_silence())
