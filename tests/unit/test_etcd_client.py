"""Tests for flannel_tw.etcd.client (StubTreq unit tests and real-etcd integration tests)
and for the flannel_tw.testing.etcd runner."""

import base64
import json

from treq.testing import StubTreq
from twisted.internet import defer, error, task
from twisted.logger import capturedLogs
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from flannel_tw.etcd.client import EtcdV2Client, Node, Response
from flannel_tw.etcd.errors import (
    EtcdError, EtcdMemberError, EtcdProtocolError, EtcdUnavailable, EventIndexCleared,
    KeyNotFound, NodeExist)


EP1 = "http://127.0.0.1:2379"
EP2 = "http://127.0.0.2:2379"
HOLD = object()


def _json(obj):
    return json.dumps(obj).encode()


def _error(code, message, cause, index):
    return _json({"errorCode": code, "message": message, "cause": cause, "index": index})


class FakeEtcd(Resource):
    """A scripted etcd: each request pops the next answer ``(status, headers, body)`` or HOLD."""

    isLeaf = True

    def __init__(self, *answers):
        super().__init__()
        self.answers = list(answers)
        self.requests = []
        self.held = []

    def render(self, request):
        body = request.content.read() if request.content is not None else b""
        self.requests.append({
            "method": request.method,
            "uri": request.uri,
            "host": request.getHeader(b"host"),
            "body": body,
            "content-type": request.getHeader(b"content-type"),
            "authorization": request.getHeader(b"authorization"),
        })
        answer = self.answers.pop(0)
        if answer is HOLD:
            self.held.append(request)
            return NOT_DONE_YET
        status, headers, payload = answer
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        return payload


def ok(node, action="get", index=None, prev=None):
    obj = {"action": action, "node": node}
    if prev is not None:
        obj["prevNode"] = prev
    headers = {b"Content-Type": b"application/json"}
    if index is not None:
        headers[b"X-Etcd-Index"] = str(index).encode()
    return (200, headers, _json(obj))


class FakeHTTP:
    """A treq-like ``request`` whose per-endpoint behaviour is scripted.

    ``behaviour[endpoint]`` is an exception instance (fail at once), ``"hang"`` (a Deferred
    that never fires; its cancellation is recorded) or ``"stub"`` (hand over to StubTreq).
    """

    def __init__(self, behaviour, resource):
        self.behaviour = behaviour
        self.stub = StubTreq(resource)
        self.calls = []
        self.cancelled = []

    def request(self, method, url, **kwargs):
        self.calls.append(url)
        for ep, how in self.behaviour.items():
            if url.startswith(ep + "/"):
                break
        else:
            raise AssertionError("unexpected url %s" % url)
        if isinstance(how, Exception):
            return defer.fail(how)
        if how == "hang":
            return defer.Deferred(lambda d: self.cancelled.append(url))
        return self.stub.request(method, url, **kwargs)


NODE_CONFIG = {"key": "/coreos.com/network/config", "value": '{"Network":"10.5.0.0/16"}',
               "modifiedIndex": 4, "createdIndex": 4}


class ClientWireTests(unittest.TestCase):
    """Requests on the wire are byte-for-byte what flanneld's Go client sends."""

    def client(self, *answers, **kw):
        self.fake = FakeEtcd(*answers)
        self.stub = StubTreq(self.fake)
        return EtcdV2Client(task.Clock(), kw.pop("endpoints", [EP1]), http=self.stub, **kw)

    def test_get_config_query(self):
        c = self.client(ok(NODE_CONFIG, index=17))
        resp = self.successResultOf(c.get("/coreos.com/network/config", quorum=True))
        self.assertEqual(self.fake.requests[0]["method"], b"GET")
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/coreos.com/network/config?quorum=true&recursive=false&sorted=false")
        self.assertIsInstance(resp, Response)
        self.assertEqual(resp.action, "get")
        self.assertEqual(resp.etcd_index, 17)
        self.assertIsNone(resp.prev_node)
        self.assertEqual(resp.node, Node(key="/coreos.com/network/config",
                                         value='{"Network":"10.5.0.0/16"}',
                                         modified_index=4, created_index=4))

    def test_get_list_query_and_nested_nodes(self):
        tree = {"key": "/coreos.com/network/subnets", "dir": True, "modifiedIndex": 5,
                "createdIndex": 5, "nodes": [
                    {"key": "/coreos.com/network/subnets/10.5.34.0-24",
                     "value": '{"PublicIP":"10.0.0.1"}', "ttl": 86399,
                     "expiration": "2026-01-01T00:00:00Z", "modifiedIndex": 9, "createdIndex": 6},
                    {"key": "/coreos.com/network/subnets/deeper", "dir": True,
                     "nodes": [{"key": "/coreos.com/network/subnets/deeper/x", "value": "y"}]},
                ]}
        c = self.client(ok(tree, index=30))
        resp = self.successResultOf(c.get("/coreos.com/network/subnets", recursive=True,
                                          quorum=True, sorted=False))
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/coreos.com/network/subnets?quorum=true&recursive=true&sorted=false")
        self.assertTrue(resp.node.dir)
        self.assertEqual(len(resp.node.nodes), 2)
        lease = resp.node.nodes[0]
        self.assertEqual((lease.ttl, lease.expiration, lease.modified_index, lease.created_index),
                         (86399, "2026-01-01T00:00:00Z", 9, 6))
        self.assertIsInstance(resp.node.nodes, tuple)
        self.assertEqual(resp.node.nodes[1].nodes[0].value, "y")

    def test_get_own_lease_query(self):
        c = self.client(ok({"key": "/a"}))
        self.successResultOf(c.get("/a", quorum=True))
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/a?quorum=true&recursive=false&sorted=false")

    def test_root_node_without_key(self):
        c = self.client(ok({"dir": True}, index=3))
        resp = self.successResultOf(c.get("/"))
        self.assertEqual(resp.node.key, "/")
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/?quorum=false&recursive=false&sorted=false")

    def test_create_sends_prev_exist_false_and_form(self):
        value = '{"PublicIP":"10.0.0.1"}'
        c = self.client(ok({"key": "/s/10.5.34.0-24", "value": value, "ttl": 86400},
                           action="create", index=8))
        resp = self.successResultOf(c.create("/s/10.5.34.0-24", value, ttl=86400))
        req = self.fake.requests[0]
        self.assertEqual(req["method"], b"PUT")
        self.assertEqual(req["uri"], b"/v2/keys/s/10.5.34.0-24?prevExist=false")
        self.assertEqual(req["content-type"], b"application/x-www-form-urlencoded")
        self.assertEqual(req["body"],
                         b"ttl=86400&value=%7B%22PublicIP%22%3A%2210.0.0.1%22%7D")
        self.assertEqual((resp.action, resp.node.ttl), ("create", 86400))

    def test_set_unconditional_without_ttl(self):
        c = self.client(ok({"key": "/k", "value": "v"}, action="set"))
        self.successResultOf(c.set("/k", "v"))
        req = self.fake.requests[0]
        self.assertEqual((req["uri"], req["body"]), (b"/v2/keys/k", b"value=v"))

    def test_set_prev_exist_true(self):
        c = self.client(ok({"key": "/k", "value": "v"}, action="update",
                           prev={"key": "/k", "value": "old"}))
        resp = self.successResultOf(c.set("/k", "v", ttl=5, prev_exist=True))
        self.assertEqual(self.fake.requests[0]["uri"], b"/v2/keys/k?prevExist=true")
        self.assertEqual(self.fake.requests[0]["body"], b"ttl=5&value=v")
        self.assertEqual(resp.prev_node.value, "old")

    def test_delete(self):
        c = self.client(ok({"key": "/k"}, action="delete", prev={"key": "/k", "value": "v"}))
        resp = self.successResultOf(c.delete("/k"))
        self.assertEqual(self.fake.requests[0]["method"], b"DELETE")
        self.assertEqual(self.fake.requests[0]["uri"], b"/v2/keys/k")
        self.assertEqual(resp.action, "delete")

    def test_delete_prev_index(self):
        c = self.client(ok({"key": "/k", "modifiedIndex": 9}, action="compareAndDelete",
                           prev={"key": "/k", "value": "v"}))
        resp = self.successResultOf(c.delete("/k", prev_index=8))
        self.assertEqual(self.fake.requests[0]["uri"], b"/v2/keys/k?prevIndex=8")
        self.assertEqual(resp.action, "compareAndDelete")

    def test_watch_query(self):
        c = self.client(ok({"key": "/s/a", "value": "x", "modifiedIndex": 7}, action="set"))
        resp = self.successResultOf(c.watch("/s", 7, recursive=True))
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/s?recursive=true&wait=true&waitIndex=7")
        self.assertEqual(resp.node.modified_index, 7)

    def test_watch_non_recursive_query(self):
        c = self.client(ok({"key": "/s/a"}, action="expire"))
        self.successResultOf(c.watch("/s/a", 12))
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/s/a?recursive=false&wait=true&waitIndex=12")

    def test_key_is_quoted(self):
        c = self.client(ok({"key": "/a b/c?d"}))
        self.successResultOf(c.get("a b/c?d"))
        self.assertEqual(self.fake.requests[0]["uri"],
                         b"/v2/keys/a%20b/c%3Fd?quorum=false&recursive=false&sorted=false")

    def test_basic_auth(self):
        c = self.client(ok({"key": "/k"}), username="user", password="pa:ss")
        self.successResultOf(c.get("/k"))
        self.assertEqual(self.fake.requests[0]["authorization"],
                         b"Basic " + base64.b64encode(b"user:pa:ss"))

    def test_no_auth_by_default(self):
        c = self.client(ok({"key": "/k"}))
        self.successResultOf(c.get("/k"))
        self.assertIsNone(self.fake.requests[0]["authorization"])

    def test_missing_index_header(self):
        c = self.client(ok({"key": "/k"}))
        self.assertIsNone(self.successResultOf(c.get("/k")).etcd_index)


class ClientErrorTests(unittest.TestCase):
    def client(self, *answers, endpoints=(EP1,)):
        self.fake = FakeEtcd(*answers)
        return EtcdV2Client(task.Clock(), list(endpoints), http=StubTreq(self.fake))

    def test_key_not_found(self):
        c = self.client((404, {b"X-Etcd-Index": b"41"},
                         _error(100, "Key not found", "/coreos.com/network/config", 41)))
        f = self.failureResultOf(c.get("/coreos.com/network/config"), KeyNotFound)
        self.assertEqual(f.value.index, 41)
        self.assertEqual(str(f.value), "100: Key not found (/coreos.com/network/config) [41]")

    def test_node_exist(self):
        c = self.client((412, {}, _error(105, "Key already exists", "/k", 9)))
        f = self.failureResultOf(c.create("/k", "v"), NodeExist)
        self.assertEqual(f.value.error_code, 105)

    def test_event_index_cleared(self):
        c = self.client((400, {}, _error(401, "The event in requested index is outdated and cleared",
                                         "the requested history has been cleared [1008/7]", 2008)))
        f = self.failureResultOf(c.watch("/s", 7, recursive=True), EventIndexCleared)
        self.assertEqual(f.value.index, 2008)

    def test_other_etcd_error_is_generic(self):
        # (300 "Raft Internal Error" was the example here: it now means "next member",
        # see FailoverTests.test_raft_internal_error_fails_over)
        c = self.client((400, {}, _error(209, "Invalid field", "invalid value for ttl", 3)))
        f = self.failureResultOf(c.get("/k"), EtcdError)
        self.assertEqual(type(f.value), EtcdError)
        self.assertEqual(f.value.error_code, 209)

    def test_api_errors_do_not_fail_over(self):
        c = self.client((404, {}, _error(100, "Key not found", "/k", 1)), endpoints=(EP1, EP2))
        self.failureResultOf(c.get("/k"), KeyNotFound)
        self.assertEqual(len(self.fake.requests), 1)
        self.assertEqual(self.fake.requests[0]["host"], b"127.0.0.1:2379")

    def test_bad_json(self):
        c = self.client((200, {}, b"<html>oops</html>"))
        f = self.failureResultOf(c.get("/k"), EtcdProtocolError)
        self.assertEqual(f.value.status, 200)
        self.assertEqual(f.value.body, b"<html>oops</html>")
        self.assertIn("oops", str(f.value))

    def test_json_that_is_not_a_node_response(self):
        c = self.client((200, {}, b'{"hello": 1}'))
        self.failureResultOf(c.get("/k"), EtcdProtocolError)

    def test_malformed_node(self):
        c = self.client((200, {}, b'{"action": "get", "node": {"key": "/k", "nodes": 5}}'))
        self.failureResultOf(c.get("/k"), EtcdProtocolError)

    def test_non_2xx_without_error_body(self):
        c = self.client((401, {}, b'{"message":"Insufficient credentials"}'))
        f = self.failureResultOf(c.get("/k"), EtcdProtocolError)
        self.assertEqual(f.value.status, 401)

    def test_snippet_is_short(self):
        c = self.client((404, {}, b"x" * 5000))
        f = self.failureResultOf(c.get("/k"), EtcdProtocolError)
        self.assertEqual(f.value.status, 404)
        self.assertLessEqual(len(f.value.body), 200)
        c = self.client((502, {}, b"x" * 5000))
        f = self.failureResultOf(c.get("/k"), EtcdUnavailable)
        self.assertEqual(f.value.errors[EP1].status, 502)
        self.assertLess(len(str(f.value)), 400)

    def test_empty_200_on_get_is_a_protocol_error(self):
        c = self.client((200, {}, b""))
        self.failureResultOf(c.get("/k"), EtcdProtocolError)

    def test_watch_retries_empty_200(self):
        clock = task.Clock()
        self.fake = FakeEtcd((200, {}, b""), (200, {}, b"\n"),
                             ok({"key": "/s/a", "modifiedIndex": 9}, action="set", index=9))
        c = EtcdV2Client(clock, [EP1], http=StubTreq(self.fake))
        d = c.watch("/s", 8, recursive=True)
        clock.advance(2)
        clock.advance(3)
        resp = self.successResultOf(d)
        self.assertEqual(resp.node.modified_index, 9)
        self.assertEqual([r["uri"] for r in self.fake.requests],
                         [b"/v2/keys/s?recursive=true&wait=true&waitIndex=8"] * 3)

    def test_empty_200s_on_a_watch_back_off(self):
        """A member that ends every long poll at once with an empty 200 is asked again
        after a growing delay, never twice at one clock instant."""
        clock = task.Clock()
        self.fake = FakeEtcd(*([(200, {}, b"")] * 40
                               + [ok({"key": "/s/a", "modifiedIndex": 9}, action="set")]))
        c = EtcdV2Client(clock, [EP1], http=StubTreq(self.fake))
        d = c.watch("/s", 8, recursive=True)
        seen = [len(self.fake.requests)]
        while not d.called and clock.seconds() < 3600:
            clock.advance(0.5)
            seen.append(len(self.fake.requests))
        self.assertEqual(self.successResultOf(d).node.modified_index, 9)
        self.assertEqual(seen[0], 1)
        self.assertLessEqual(max(b - a for a, b in zip(seen, seen[1:])), 1)
        self.assertLessEqual(seen[20], 5)      # 10 s: 0, >=1, >=2.5, >=4.75, >=8.1 (+jitter)
        self.assertEqual(len(self.fake.requests), 41)
        self.assertGreater(clock.seconds(), 600)  # the delay grew to the 30 s cap

    def test_watch_long_poll_answered_later_and_cancel(self):
        fake = FakeEtcd(HOLD, HOLD)
        stub = StubTreq(fake)
        c = EtcdV2Client(task.Clock(), [EP1], http=stub)
        d = c.watch("/s", 3, recursive=True)
        self.assertNoResult(d)
        held = fake.held.pop()
        held.setResponseCode(200)
        held.write(_json({"action": "set", "node": {"key": "/s/x", "modifiedIndex": 3}}))
        held.finish()
        stub.flush()
        self.assertEqual(self.successResultOf(d).node.key, "/s/x")

        d2 = c.watch("/s", 4, recursive=True)
        self.assertNoResult(d2)
        d2.cancel()
        self.failureResultOf(d2, defer.CancelledError)

    def test_watch_cancel_after_headers_drops_connection(self):
        fake = FakeEtcd(HOLD)
        stub = StubTreq(fake)
        c = EtcdV2Client(task.Clock(), [EP1], http=stub)
        d = c.watch("/s", 4, recursive=True)
        held = fake.held.pop()
        lost = []
        held.notifyFinish().addErrback(lost.append)
        held.setResponseCode(200)
        held.write(b" ")  # headers (and a byte of body) are out, the event is not
        stub.flush()
        self.assertNoResult(d)
        d.cancel()
        stub.flush()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(lost), 1)  # the server saw the connection go away


class EndpointTests(unittest.TestCase):
    def test_bad_endpoints(self):
        for bad in ["127.0.0.1:2379", "ftp://127.0.0.1:2379", "http://", "http://h:notaport",
                    "http://h:1/?q=1"]:
            e = self.assertRaises(ValueError, EtcdV2Client, task.Clock(), [EP1, bad],
                                  http=object())
            self.assertIn(repr(bad), str(e))
        self.assertRaises(ValueError, EtcdV2Client, task.Clock(), [], http=object())

    def test_endpoints_normalised(self):
        c = EtcdV2Client(task.Clock(), ["http://127.0.0.1:2379/", "https://[::1]:2379"],
                         http=object())
        self.assertEqual(c.endpoints, ["http://127.0.0.1:2379", "https://[::1]:2379"])
        c = EtcdV2Client(task.Clock(), "http://a:1,http://b:2", http=object())
        self.assertEqual(c.endpoints, ["http://a:1", "http://b:2"])

    def test_tls_must_be_a_policy(self):
        self.assertRaises(ValueError, EtcdV2Client, task.Clock(), [EP1], tls=object())

    def test_builds_its_own_agent(self):
        from twisted.web.client import BrowserLikePolicyForHTTPS

        c = EtcdV2Client(task.Clock(), ["https://127.0.0.1:2379"],
                         tls=BrowserLikePolicyForHTTPS(), username="u")
        self.assertIsNotNone(c._http)
        self.successResultOf(c.close())


class FailoverTests(unittest.TestCase):
    def make(self, behaviour, *answers, timeout=10.0):
        self.clock = task.Clock()
        self.fake = FakeEtcd(*answers)
        self.http = FakeHTTP(behaviour, self.fake)
        return EtcdV2Client(self.clock, list(behaviour), http=self.http,
                            request_timeout=timeout)

    def test_fail_over_and_remember(self):
        c = self.make({EP1: error.ConnectionRefusedError(), EP2: "stub"},
                      ok({"key": "/k", "value": "1"}), ok({"key": "/k", "value": "2"}))
        with capturedLogs() as events:
            resp = self.successResultOf(c.get("/k"))
        self.assertEqual(resp.node.value, "1")
        self.assertEqual(self.http.calls[0].split("/v2/")[0], EP1)
        self.assertEqual(self.http.calls[1].split("/v2/")[0], EP2)
        self.assertEqual(c.current_endpoint, EP2)
        warn = [e for e in events if e.get("endpoint") == EP1]
        self.assertEqual(len(warn), 1)
        self.assertEqual(warn[0]["next_endpoint"], EP2)
        # The next call starts at the endpoint that answered last time.
        self.successResultOf(c.get("/k"))
        self.assertEqual(len(self.http.calls), 3)
        self.assertTrue(self.http.calls[2].startswith(EP2))

    def test_all_fail(self):
        c = self.make({EP1: error.ConnectionRefusedError(), EP2: error.TimeoutError()})
        f = self.failureResultOf(c.set("/k", "v"), EtcdUnavailable)
        self.assertEqual(set(f.value.errors), {EP1, EP2})
        self.assertIsInstance(f.value.errors[EP1], error.ConnectionRefusedError)
        self.assertIn("etcd cluster is unavailable or misconfigured", str(f.value))

    def test_request_timeout_fails_over(self):
        c = self.make({EP1: "hang", EP2: "stub"}, ok({"key": "/k", "value": "b"}), timeout=3)
        d = c.get("/k")
        self.assertNoResult(d)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d).node.value, "b")
        self.assertEqual(len(self.http.cancelled), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_all_time_out(self):
        c = self.make({EP1: "hang", EP2: "hang"}, timeout=1)
        d = c.delete("/k")
        self.clock.advance(1)
        self.assertNoResult(d)
        self.clock.advance(1)
        f = self.failureResultOf(d, EtcdUnavailable)
        self.assertIsInstance(f.value.errors[EP2], defer.TimeoutError)

    def test_timeout_covers_slow_body(self):
        # Headers never come from the held request: the timeout still fires.
        fake = FakeEtcd(HOLD)
        clock = task.Clock()
        c = EtcdV2Client(clock, [EP1], http=StubTreq(fake), request_timeout=5)
        d = c.get("/k")
        clock.advance(5)
        f = self.failureResultOf(d, EtcdUnavailable)
        self.assertIsInstance(f.value.errors[EP1], defer.TimeoutError)

    def test_request_timeout_does_not_cut_a_watch(self):
        c = self.make({EP1: "hang", EP2: "stub"}, timeout=1)
        d = c.watch("/s", 5, recursive=True)
        self.clock.advance(59)   # the watch timeout (60 s) is another matter: WatchTimeoutTests
        self.assertNoResult(d)
        self.assertEqual(len(self.http.calls), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(self.http.cancelled), 1)
        self.assertEqual(len(self.http.calls), 1)  # a cancel is not a fail-over

    def test_http_503_fails_over(self):
        c = self.make({EP1: "stub", EP2: "stub"},
                      (503, {}, b"etcdserver: no leader"), ok({"key": "/k", "value": "b"}))
        with capturedLogs() as events:
            resp = self.successResultOf(c.get("/k"))
        self.assertEqual(resp.node.value, "b")
        self.assertEqual([u.split("/v2/")[0] for u in self.http.calls], [EP1, EP2])
        self.assertEqual(c.current_endpoint, EP2)
        warned = [e for e in events if e.get("endpoint") == EP1]
        self.assertEqual(len(warned), 1)
        self.assertIn("503", warned[0]["error"])
        self.assertEqual(c.error_counts["server_error"], 1)

    def test_every_5xx_fails_over(self):
        for status in (500, 502, 504):
            c = self.make({EP1: "stub", EP2: "stub"},
                          (status, {}, b"<html>bad gateway</html>"), ok({"key": "/k"}))
            self.successResultOf(c.get("/k"))
            self.assertEqual(c.current_endpoint, EP2, status)

    def test_raft_internal_error_fails_over(self):
        c = self.make({EP1: "stub", EP2: "stub"},
                      (500, {}, _error(300, "Raft Internal Error", "etcdserver: no leader", 0)),
                      ok({"key": "/k", "value": "b"}))
        self.assertEqual(self.successResultOf(c.set("/k", "b")).node.value, "b")
        self.assertEqual(c.current_endpoint, EP2)

    def test_leader_election_code_fails_over_whatever_the_status(self):
        # 301 "During Leader Election", even if a proxy rewrote the status
        c = self.make({EP1: "stub", EP2: "stub"},
                      (400, {}, _error(301, "During Leader Election", "", 0)),
                      ok({"key": "/k"}))
        self.successResultOf(c.get("/k"))
        self.assertEqual(c.current_endpoint, EP2)

    def test_watch_fails_over_on_a_member_without_leader(self):
        c = self.make({EP1: "stub", EP2: "stub"},
                      (500, {}, _error(300, "Raft Internal Error", "", 0)),
                      ok({"key": "/s/a", "modifiedIndex": 6}, action="set"))
        resp = self.successResultOf(c.watch("/s", 6, recursive=True))
        self.assertEqual(resp.node.key, "/s/a")
        self.assertEqual([u.split("/v2/")[0] for u in self.http.calls], [EP1, EP2])

    def test_no_member_with_a_leader_is_unavailable(self):
        c = self.make({EP1: "stub", EP2: "stub"},
                      (500, {}, _error(300, "Raft Internal Error", "", 0)),
                      (503, {}, b""))
        f = self.failureResultOf(c.get("/k"), EtcdUnavailable)
        self.assertIsInstance(f.value.errors[EP1], EtcdMemberError)
        self.assertEqual(f.value.errors[EP1].code, 300)
        self.assertEqual(f.value.errors[EP2].status, 503)
        self.assertIn("300: Raft Internal Error", str(f.value))
        self.assertIn("HTTP 503", str(f.value))

    def test_cancel_non_watch(self):
        c = self.make({EP1: "hang", EP2: "stub"}, timeout=1)
        d = c.get("/k")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(self.http.calls), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


W9 = b"/v2/keys/s?recursive=true&wait=true&waitIndex=9"
HEALTHY = (200, {}, b'{"health":"true","reason":""}')


class WatchTimeoutTests(unittest.TestCase):
    """No event within watch_timeout: the member is asked for /health (request_timeout);
    a live one gets the watch again from the same index, any other is passed over."""

    def make(self, behaviour, *answers, watch_timeout=60.0, timeout=3.0):
        self.clock = task.Clock()
        self.fake = FakeEtcd(*answers)
        self.http = FakeHTTP(behaviour, self.fake)
        return EtcdV2Client(self.clock, list(behaviour), http=self.http,
                            request_timeout=timeout, watch_timeout=watch_timeout)

    def answer_held(self, node):
        held = self.fake.held[-1]
        held.setResponseCode(200)
        held.write(_json({"action": "set", "node": node}))
        held.finish()
        self.http.stub.flush()

    def test_silent_member_is_checked_then_passed_over(self):
        c = self.make({EP1: "hang", EP2: "stub"},
                      ok({"key": "/s/a", "modifiedIndex": 9}, action="set"))
        with capturedLogs() as events:
            d = c.watch("/s", 9, recursive=True)
            self.clock.advance(59.9)
            self.assertNoResult(d)
            self.assertEqual(len(self.http.calls), 1)
            self.clock.advance(0.1)
            self.assertEqual(self.http.calls[1:], [EP1 + "/health"])
            self.assertEqual(len(self.http.cancelled), 1)   # the silent watch is dropped
            self.clock.advance(2.9)
            self.assertNoResult(d)
            self.clock.advance(0.1)
            resp = self.successResultOf(d)
        self.assertEqual(resp.node.key, "/s/a")
        self.assertEqual(self.http.calls[2], EP2 + W9.decode())
        self.assertEqual(c.current_endpoint, EP2)
        warned = [e for e in events if e.get("endpoint") == EP1]
        self.assertEqual(len(warned), 1)
        self.assertIn("no event for 60s", warned[0]["error"])
        self.assertIn("/health", warned[0]["error"])
        self.assertEqual(c.error_counts["silent"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_watch_on_a_live_member_is_reissued_from_the_same_index(self):
        c = self.make({EP1: "stub", EP2: "stub"}, HOLD, HEALTHY, HOLD,
                      (404, {}, b"404 page not found"), HOLD)
        with capturedLogs() as events:
            d = c.watch("/s", 9, recursive=True)
            self.clock.advance(60)
            self.clock.advance(60)   # a member without /health (404) still answers
        self.assertNoResult(d)
        self.assertEqual([r["uri"] for r in self.fake.requests],
                         [W9, b"/health", W9, b"/health", W9])
        self.assertEqual({r["host"] for r in self.fake.requests}, {b"127.0.0.1:2379"})
        self.assertEqual([e for e in events if e.get("log_level") is not None
                          and e["log_level"].name in ("warn", "error")], [])
        self.answer_held({"key": "/s/a", "modifiedIndex": 9})
        self.assertEqual(self.successResultOf(d).node.key, "/s/a")
        self.assertEqual(dict(c.error_counts), {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_member_whose_health_fails_is_passed_over(self):
        for answer in [(503, {}, b'{"health":"false","reason":"RAFT NO LEADER"}'),
                       (200, {}, b'{"health":"false"}')]:
            c = self.make({EP1: "stub", EP2: "stub"}, HOLD, answer,
                          ok({"key": "/s/a", "modifiedIndex": 9}, action="set"))
            d = c.watch("/s", 9, recursive=True)
            self.clock.advance(60)
            self.assertEqual(self.successResultOf(d).node.key, "/s/a")
            self.assertEqual([r["host"] for r in self.fake.requests],
                             [b"127.0.0.1:2379", b"127.0.0.1:2379", b"127.0.0.2:2379"])

    def test_watch_timeout_none_waits_for_ever(self):
        c = self.make({EP1: "hang", EP2: "stub"}, watch_timeout=None)
        d = c.watch("/s", 9, recursive=True)
        self.clock.advance(100000)
        self.assertNoResult(d)
        self.assertEqual(len(self.http.calls), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_cancel_during_the_member_check(self):
        c = self.make({EP1: "hang", EP2: "stub"})
        d = c.watch("/s", 9, recursive=True)
        self.clock.advance(60)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(self.http.calls), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_check_is_bounded_without_a_request_timeout(self):
        c = self.make({EP1: "hang", EP2: "stub"},
                      ok({"key": "/s/a", "modifiedIndex": 9}, action="set"), timeout=None)
        d = c.watch("/s", 9, recursive=True)
        self.clock.advance(60)
        self.assertNoResult(d)
        self.clock.advance(60)   # the check gets watch_timeout instead
        self.assertEqual(self.successResultOf(d).node.key, "/s/a")

    def test_cancel_while_backing_off_after_an_empty_answer(self):
        c = self.make({EP1: "stub"}, (200, {}, b""))
        d = c.watch("/s", 9, recursive=True)
        self.assertEqual(len(self.fake.requests), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)   # the backoff
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(c.watch_silence())

    def test_watch_silence(self):
        """Seconds since the in-flight watch last showed life (headers, an event, a passed
        member check), for /healthz; None when no watch is in flight."""
        c = self.make({EP1: "stub"}, HOLD, HEALTHY, HOLD)
        self.assertIsNone(c.watch_silence())
        d = c.watch("/s", 9, recursive=True)
        self.clock.advance(20)
        self.assertEqual(c.watch_silence(), 20)   # no headers yet
        held = self.fake.held[-1]
        held.setResponseCode(200)
        held.write(b" ")                           # etcd sends a watch's headers at once
        self.http.stub.flush()
        self.assertEqual(c.watch_silence(), 0)
        self.clock.advance(39)
        self.assertEqual(c.watch_silence(), 39)
        self.clock.advance(1)                      # the member check passes
        self.assertEqual(c.watch_silence(), 0)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertIsNone(c.watch_silence())
