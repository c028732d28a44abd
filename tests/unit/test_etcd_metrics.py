"""
The etcd error-kind label set (flannel_etcd_errors_total{kind}) is fixed: whatever
error codes or statuses a remote side sends, the client counts them under known kinds
(etcd's own codes, "etcd_other", ...) and the collector emits nothing else.
"""
import collections
import json

from prometheus_client import generate_latest
from treq.testing import StubTreq
from twisted.internet import task
from twisted.trial import unittest
from twisted.web.resource import Resource

from flannel_tw.observe import metrics
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.errors import ERROR_KINDS, KNOWN_CODES, etcd_error_kind

from flannel_tw.observe.status import DaemonStatus
from flannel_tw.testing.metrics_samples import samples


class Hostile(Resource):
    """Answers each request with the next error code in C{codes} (status 400 or 500)."""

    isLeaf = True

    def __init__(self, codes):
        Resource.__init__(self)
        self.codes = list(codes)

    def render(self, request):
        code = self.codes.pop(0)
        request.setResponseCode(500 if code % 2 else 400)
        return json.dumps({"errorCode": code, "message": "x%d" % code, "cause": "",
                           "index": 0}).encode()


class ErrorKindTests(unittest.TestCase):
    def test_kinds_of_codes(self):
        self.assertEqual(etcd_error_kind(100), "etcd_100")
        self.assertEqual(etcd_error_kind(401), "etcd_401")
        self.assertEqual(etcd_error_kind(999), "etcd_other")
        self.assertEqual(etcd_error_kind(-5), "etcd_other")
        for code in KNOWN_CODES:
            self.assertIn(etcd_error_kind(code), ERROR_KINDS)

    def test_remote_error_codes_do_not_grow_the_label_set(self):
        codes = list(range(0, 2000, 7)) + [10 ** 12, -1]
        client = EtcdV2Client(task.Clock(), ["http://127.0.0.1:2379", "http://127.0.0.2:2379"],
                              http=StubTreq(Hostile(codes * 2)))
        for _ in codes:
            client.get("/k").addErrback(lambda _f: None)
        self.assertLessEqual(set(client.error_counts), set(ERROR_KINDS))
        self.assertGreater(client.error_counts["etcd_other"], 200)
        self.assertLess(len(client.error_counts), 40)

    def test_collector_emits_only_known_kinds(self):
        status = DaemonStatus(phase="running", etcd_errors=collections.Counter(
            {"transport": 2, "etcd_100": 1, "etcd_1234": 5, "some remote text": 1}))
        text = generate_latest(metrics.metrics_registry(lambda: status, process=False)).decode()
        found = {dict(labels)["kind"]: value for (name, labels), value in samples(text).items()
                 if name == "flannel_etcd_errors_total"}
        self.assertEqual(found, {"transport": 2, "etcd_100": 1, "other": 6})
