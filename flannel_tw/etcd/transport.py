# -*- test-case-name: tests.integration.test_etcd_transport -*-
"""
The HTTP transport under L{flannel_tw.etcd.client.EtcdV2Client}: treq's C{HTTPClient}
over an Agent whose TCP connections keep alive and that neither asks for nor accepts
compressed bodies, and a body reader with a size cap.

- B{Keepalive}: every connection gets C{SO_KEEPALIVE} with C{TCP_KEEPIDLE} 30 s (as
  flanneld's Go transport), C{TCP_KEEPINTVL} 10 s and C{TCP_KEEPCNT} 3, so a member that
  vanishes without a reset (power loss, partition) is noticed by the kernel within about
  a minute, even on an idle long poll.
- B{No compression}: treq's C{HTTPClient} wraps every request in
  C{ContentDecoderAgent}, which asks for gzip and inflates it with no bound. Below it,
  L{IdentityAgent} sends no C{Accept-Encoding} and refuses an answer whose
  C{Content-Encoding} is not identity (so does L{read_body}, for other clients): a
  hostile endpoint cannot make us inflate a bomb.
- B{Size cap}: L{read_body} stops reading (and drops the connection) past C{limit}
  bytes and fails with L{EtcdResponseTooLarge}.
"""
import socket

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, _HTTP11ClientFactory
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from treq.client import HTTPClient
from zope.interface import implementer

from flannel_tw.etcd.errors import EtcdMemberError, EtcdResponseTooLarge

__all__ = ["quiet_pool", "KEEPALIVE", "MAX_BODY", "KeepAliveEndpointFactory", "IdentityAgent", "build_http", "read_body",
           "discard_body", "set_keepalive"]

KEEPALIVE = {"idle": 30, "interval": 10, "count": 3}   # seconds, seconds, probes
MAX_BODY = 64 * 1024 * 1024                             # bytes per response


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False       # no "Starting factory" / "Stopping factory" per connection


def quiet_pool(reactor, persistent=True):
    """An HTTPConnectionPool whose per-connection factories log nothing."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietClientFactory
    return pool


def set_keepalive(sock, idle=KEEPALIVE["idle"], interval=KEEPALIVE["interval"],
                  count=KEEPALIVE["count"]):
    """Turn on TCP keepalive on C{sock} with the given timing (Linux options where present)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", count)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(value))


class _KeepAliveEndpoint:
    """A client endpoint that turns on keepalive on the TCP connection it makes."""

    log = Logger()

    def __init__(self, endpoint, keepalive):
        self._endpoint = endpoint
        self._keepalive = keepalive

    def connect(self, protocolFactory):
        d = self._endpoint.connect(protocolFactory)
        d.addCallback(self._connected)
        return d

    def _connected(self, protocol):
        transport = protocol.transport
        try:
            set_keepalive(transport.getHandle(), **self._keepalive)
        except (AttributeError, OSError) as e:
            self.log.warn("Could not turn on TCP keepalive to etcd: {error}", error=e)
        return protocol


@implementer(IAgentEndpointFactory)
class KeepAliveEndpointFactory:
    """
    Twisted's standard endpoints (TCP for http, TCP + TLS for https) with keepalive on
    the TCP connection under the TLS.

    @param tls: an C{IPolicyForHTTPS} for https URLs.
    @param connect_timeout: TCP connect timeout in seconds (None: Twisted's default).
    """

    def __init__(self, reactor, tls, connect_timeout=None, keepalive=None):
        self._reactor = reactor
        self._tls = tls
        self._connect_timeout = connect_timeout
        self.keepalive = dict(KEEPALIVE if keepalive is None else keepalive)

    def endpointForURI(self, uri):
        kwargs = {}
        if self._connect_timeout is not None:
            kwargs["timeout"] = self._connect_timeout
        endpoint = _KeepAliveEndpoint(
            HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port, **kwargs),
            self.keepalive)
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        if uri.scheme == b"http":
            return endpoint
        raise ValueError("unsupported scheme %r" % (uri.scheme,))


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body that is already in memory."""

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        if self._data:
            consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@implementer(IAgent)
class IdentityAgent:
    """
    The Agent under treq's C{HTTPClient}. treq wraps every request in
    C{ContentDecoderAgent}, which asks for gzip and would inflate an answer with no
    bound; this agent, below it, takes C{Accept-Encoding} out of each request and
    refuses any answer whose C{Content-Encoding} is not identity (L{EtcdMemberError},
    the connection dropped), so treq never has anything to inflate.

    @param agent: an C{IAgent}.
    """

    def __init__(self, agent):
        self._agent = agent

    def request(self, method, uri, headers=None, bodyProducer=None):
        headers = Headers() if headers is None else headers.copy()
        headers.removeHeader(b"accept-encoding")
        d = self._agent.request(method, uri, headers, bodyProducer)
        d.addCallback(_refuse_encoded)
        return d


def _content_encodings(response):
    encodings = []
    for value in response.headers.getRawHeaders(b"content-encoding") or ():
        encodings.extend(v.strip().lower() for v in value.split(b",") if v.strip())
    return [e for e in encodings if e != b"identity"]


def _refuse_encoded(response):
    encodings = _content_encodings(response)
    if encodings:
        discard_body(response)
        raise EtcdMemberError(
            "etcd answered with Content-Encoding %s, which we did not ask for"
            % (b", ".join(encodings).decode("latin-1"),), status=response.code,
            kind="bad_encoding")
    return response


def build_http(reactor, tls, connect_timeout, pool, keepalive=None):
    """
    The etcd client's HTTP client: treq's C{HTTPClient} over L{IdentityAgent} over an
    Agent whose connections come from L{KeepAliveEndpointFactory} and C{pool}.
    """
    factory = KeepAliveEndpointFactory(reactor, tls, connect_timeout, keepalive)
    return HTTPClient(IdentityAgent(Agent.usingEndpointFactory(reactor, factory, pool=pool)))


class _BodyReader(Protocol):
    """Collect a response body up to C{limit} bytes; cancelling C{deferred} (or going over
    the limit) stops the transfer and drops the connection (Twisted's readBody cannot: the
    body transport has no abortConnection)."""

    def __init__(self, limit):
        self.limit = limit
        self.size = 0
        self.chunks = []
        self.deferred = defer.Deferred(self._cancel)

    def _cancel(self, _d):
        self._stop()

    def _stop(self):
        transport = self.transport
        if transport is not None:
            try:
                transport.stopProducing()
            except Exception:
                pass

    def dataReceived(self, data):
        if self.deferred.called:
            return
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            self.chunks = []
            self._stop()
            if not self.deferred.called:
                self.deferred.errback(EtcdResponseTooLarge(self.limit))
            return
        self.chunks.append(data)

    def connectionLost(self, reason=connectionDone):
        if self.deferred.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.deferred.callback(b"".join(self.chunks))
        else:
            self.deferred.errback(reason)


def discard_body(response):
    """Drop the connection of C{response} without reading its body."""
    reader = _BodyReader(0)
    response.deliverBody(reader)
    reader.deferred.addErrback(lambda _f: None)
    reader.deferred.cancel()


def read_body(response, limit=MAX_BODY):
    """
    A Deferred firing with the whole body (bytes) of an C{IResponse}; cancellable (closes
    the connection).

    Fails with L{EtcdResponseTooLarge} past C{limit} bytes (None: no limit) and with
    L{EtcdMemberError} for a C{Content-Encoding} other than identity (we never ask for
    one); the connection is dropped in both cases.
    """
    try:
        _refuse_encoded(response)
    except EtcdMemberError:
        return defer.fail()
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.deferred
