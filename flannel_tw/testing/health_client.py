"""Test helpers (formerly in tests/test_health.py), shared by
tests/integration/test_health.py, tests/integration/test_lease_health.py,
tests/lab/test_health.py.
(No test module imports another: what several need lives here.)"""

import json
import socket

import treq
from twisted.internet import defer, reactor
from twisted.web import server as web_server

from flannel_tw.observe.health import health_root


def notify_socket(path_or_name):
    """A bound, non-blocking AF_UNIX datagram socket (a filesystem path or '@abstract')."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + path_or_name[1:] if path_or_name.startswith("@") else path_or_name)
    sock.setblocking(False)
    return sock


def received(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode("utf-8"))
        except BlockingIOError:
            return out


class HealthHTTPClient:
    """Mixin for a TestCase: serve a daemon's health page on loopback and fetch from it."""

    def listen(self, daemon):
        site = web_server.Site(health_root(daemon.status))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = "http://127.0.0.1:%d" % port.getHost().port

    @defer.inlineCallbacks
    def get(self, path):
        """Deferred (status, body bytes) from a fresh connection."""
        resp = yield treq.get(self.base + path, persistent=False)
        body = yield resp.content()
        return resp.code, body

    @defer.inlineCallbacks
    def healthz(self):
        code, body = yield self.get("/healthz")
        return code, json.loads(body)
