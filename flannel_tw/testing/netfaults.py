"""
Loopback TCP servers that fail the way a partitioned or powered-off etcd member does:
without a reset.

- L{BlackHole}: accepts connections and never sends a byte (nor closes them).
- L{SilenceableProxy}: forwards to a real server until L{SilenceableProxy.silence} is
  called; from then on every byte either way is dropped on old and new connections,
  and nothing is closed (a partition: the peer is simply never heard from again).

Both listen on 127.0.0.1 and are closed (every connection aborted) by the test's cleanup.
"""
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol


class _Hole(Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.factory.received += len(data)


class BlackHole:
    """C{url}: an http URL whose server accepts and never answers."""

    def __init__(self, testcase):
        self.factory = Factory.forProtocol(_Hole)
        self.factory.connections = []
        self.factory.received = 0
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        testcase.addCleanup(self.close)
        self.url = "http://127.0.0.1:%d" % self.port.getHost().port

    @property
    def connections(self):
        return len(self.factory.connections)

    def close(self):
        for proto in self.factory.connections:
            proto.transport.abortConnection()
        return self.port.stopListening()


class _Upstream(Protocol):
    def __init__(self, down):
        self.down = down

    def dataReceived(self, data):
        if not self.down.factory.silent:
            self.down.transport.write(data)

    def connectionLost(self, reason=None):
        if not self.down.factory.silent:
            self.down.transport.loseConnection()


class _Downstream(Protocol):
    upstream = None

    def connectionMade(self):
        self.factory.connections.append(self)
        self.pending = []
        endpoint = TCP4ClientEndpoint(reactor, self.factory.host, self.factory.target_port)
        d = endpoint.connect(Factory.forProtocol(lambda: _Upstream(self)))
        d.addCallbacks(self._connected, lambda _f: self.transport.loseConnection())

    def _connected(self, upstream):
        self.upstream = upstream
        self.factory.connections.append(upstream)
        for data in self.pending:
            upstream.transport.write(data)
        self.pending = []

    def dataReceived(self, data):
        if self.factory.silent:
            return
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason=None):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class SilenceableProxy:
    """C{url}: an http URL forwarding to C{target_url} (http://127.0.0.1:PORT) until
    L{silence}."""

    def __init__(self, testcase, target_url):
        host, port = target_url.split("//", 1)[1].rsplit(":", 1)
        self.factory = Factory.forProtocol(_Downstream)
        self.factory.host = host
        self.factory.target_port = int(port)
        self.factory.silent = False
        self.factory.connections = []
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        testcase.addCleanup(self.close)
        self.url = "http://127.0.0.1:%d" % self.port.getHost().port

    def silence(self):
        self.factory.silent = True

    def close(self):
        for proto in self.factory.connections:
            if proto.transport is not None:
                proto.transport.abortConnection()
        return self.port.stopListening()
