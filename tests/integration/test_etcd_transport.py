"""
flannel_tw.etcd.transport on real loopback sockets: TCP keepalive on every etcd
connection (plain and under TLS), the per-answer size cap, and no gzip (neither asked
for nor inflated), through the client the daemon builds.
"""
import gzip
import json
import socket

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web.client import BrowserLikePolicyForHTTPS, URI
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.errors import EtcdMemberError, EtcdResponseTooLarge, EtcdUnavailable
from flannel_tw.etcd.transport import KEEPALIVE, KeepAliveEndpointFactory
from flannel_tw.testing.etcd import shared_etcd, unique_prefix


def keepalive_options(sock):
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


WANTED = (1, KEEPALIVE["idle"], KEEPALIVE["interval"], KEEPALIVE["count"])


class KeepAliveTests(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(KEEPALIVE, {"idle": 30, "interval": 10, "count": 3})
        verifyObject(IAgentEndpointFactory,
                     KeepAliveEndpointFactory(reactor, BrowserLikePolicyForHTTPS()))

    @defer.inlineCallbacks
    def test_client_connections_to_etcd_keep_alive(self):
        server = shared_etcd()
        client = EtcdV2Client(reactor, server.endpoints, request_timeout=5)
        self.addCleanup(client.close)
        yield client.set(unique_prefix(self) + "/k", "v")
        conns = [p for protos in client._pool._connections.values() for p in protos]
        self.assertEqual(len(conns), 1)
        self.assertEqual(keepalive_options(conns[0].transport.getHandle()), WANTED)

    @defer.inlineCallbacks
    def test_tls_connections_keep_alive_underneath(self):
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory = KeepAliveEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), 5)
        uri = URI.fromBytes(b"https://127.0.0.1:%d/" % port.getHost().port)
        proto = yield factory.endpointForURI(uri).connect(Factory.forProtocol(Protocol))
        tcp = proto.transport.transport   # TLSMemoryBIOProtocol -> the TCP transport
        self.addCleanup(tcp.abortConnection)
        self.assertEqual(keepalive_options(tcp.getHandle()), WANTED)


class Big(Resource):
    """Answers a node response padded to C{size} bytes, optionally gzipped; records the
    request headers."""

    isLeaf = True

    def __init__(self, size, gzipped=False):
        Resource.__init__(self)
        self.size = size
        self.gzipped = gzipped
        self.accept_encoding = []

    def render(self, request):
        self.accept_encoding.append(request.getHeader(b"accept-encoding"))
        body = json.dumps({"action": "get", "node": {"key": "/k", "value": ""}}).encode()
        body = body[:-3] + b" " * (self.size - len(body)) + body[-3:]
        request.setHeader(b"content-type", b"application/json")
        if self.gzipped:
            request.setHeader(b"content-encoding", b"gzip")
            body = gzip.compress(body, 9)
        return body


class SizeTests(unittest.TestCase):
    timeout = 60

    def serve(self, resource):
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return "http://127.0.0.1:%d" % port.getHost().port

    def client(self, endpoints, **kw):
        c = EtcdV2Client(reactor, endpoints, request_timeout=10, **kw)
        self.addCleanup(c.close)
        return c

    @defer.inlineCallbacks
    def test_body_under_the_cap_is_read(self):
        url = self.serve(Big(900 * 1024))
        resp = yield self.client([url], max_body=1024 * 1024).get("/k")
        self.assertEqual(resp.node.key, "/k")

    @defer.inlineCallbacks
    def test_body_over_the_cap_is_cut_and_the_next_member_asked(self):
        big = self.serve(Big(3 * 1024 * 1024))
        err = yield self.assertFailure(self.client([big], max_body=1024 * 1024).get("/k"),
                                       EtcdUnavailable)
        self.assertIsInstance(err.errors[big], EtcdResponseTooLarge)
        self.assertIn("larger than 1048576 bytes", str(err))

        server = shared_etcd()
        c = self.client([big] + server.endpoints, max_body=1024 * 1024)
        key = unique_prefix(self) + "/k"
        resp = yield c.set(key, "v")
        self.assertEqual(resp.node.value, "v")
        self.assertEqual(c.current_endpoint, server.url)
        self.assertEqual(c.error_counts["too_large"], 1)

    def test_default_cap(self):
        c = EtcdV2Client(reactor, ["http://127.0.0.1:1"])
        self.addCleanup(c.close)
        self.assertEqual(c.max_body, 64 * 1024 * 1024)

    def test_requests_go_through_treq(self):
        """The design card's treq-based client: treq's HTTPClient over IdentityAgent."""
        from treq.client import HTTPClient
        from flannel_tw.etcd.transport import IdentityAgent
        c = EtcdV2Client(reactor, ["http://127.0.0.1:1"])
        self.addCleanup(c.close)
        self.assertIsInstance(c._http, HTTPClient)
        self.assertIsInstance(c._http._agent, IdentityAgent)

    @defer.inlineCallbacks
    def test_gzip_bomb_is_neither_asked_for_nor_inflated(self):
        bomb = Big(256 * 1024 * 1024, gzipped=True)   # 256 MiB of JSON in ~250 KiB
        url = self.serve(bomb)
        err = yield self.assertFailure(self.client([url], max_body=1024 * 1024).get("/k"),
                                       EtcdUnavailable)
        self.assertEqual(bomb.accept_encoding, [None])
        self.assertIsInstance(err.errors[url], EtcdMemberError)
        self.assertEqual(err.errors[url].kind, "bad_encoding")
        self.assertIn("Content-Encoding gzip", str(err))
