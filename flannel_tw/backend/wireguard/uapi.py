# -*- test-case-name: tests.unit.test_wg_uapi -*-
"""
WireGuard's cross-platform userspace API (UAPI), as wireguard-go serves it on
C{/var/run/wireguard/<name>.sock}: a request is C{set=1} or C{get=1}, then C{key=value}
lines (keys in hex), then a blank line; the reply is (for C{get}) the device's lines, then
C{errno=N} and a blank line. N is 0 or a negative errno.

The codec (C{encode_*}, C{parse_*}) is pure. L{UapiClient} sends one request at a time,
each on a connection of its own (after a failed C{set} wireguard-go leaves the rest of
the request unread on that connection, so a connection is never reused).
"""
import ipaddress
from dataclasses import dataclass, field
from typing import Dict, Optional

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger

from flannel_tw.model.wgpeer import WgPeer

KEY_LEN = 32
MAX_REPLY = 64 * 1024 * 1024        # 10,000 peers are about 4 MB
_ZERO_KEY = bytes(KEY_LEN)


class UapiError(Exception):
    """
    A UAPI exchange failed. C{errno} is the device's (negative, as it sent it) or None
    when the exchange itself failed (socket closed, timeout, garbled reply).
    """

    def __init__(self, message, errno=None):
        Exception.__init__(self, message)
        self.errno = errno


class UapiProtocolError(UapiError):
    """The reply is not UAPI (garbled, hostile, too big)."""


@dataclass(frozen=True)
class DeviceState:
    """What C{get=1} says of a device. Keys are raw bytes."""
    private_key: Optional[bytes]
    listen_port: int
    fwmark: int = 0
    peers: Dict[bytes, WgPeer] = field(default_factory=dict)


# ---- encoding ----

def _key_hex(key, what):
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ValueError("%s must be %d raw bytes" % (what, KEY_LEN))
    return key.hex()


def _port(port, what):
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("%s must be a port number 0-65535, not %r" % (what, port))
    return port


def format_endpoint(endpoint):
    """C{("192.0.2.1", 51820)} -> C{192.0.2.1:51820}; an IPv6 address in brackets."""
    host, port = endpoint
    ip = ipaddress.ip_address(host)
    _port(port, "endpoint port")
    if ip.version == 6:
        return "[%s]:%d" % (ip.compressed, port)
    return "%s:%d" % (ip, port)


def _peer_lines(peer):
    if not isinstance(peer, WgPeer):
        raise ValueError("not a WgPeer: %r" % (peer,))
    keepalive = peer.keepalive
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) \
            or not 0 <= keepalive <= 65535:
        raise ValueError("persistent keepalive must be 0-65535 seconds, not %r" % (keepalive,))
    psk = peer.preshared_key if peer.preshared_key is not None else _ZERO_KEY
    lines = ["public_key=" + _key_hex(peer.public_key, "a peer's public key"),
             "preshared_key=" + _key_hex(psk, "a preshared key")]
    if peer.endpoint is not None:
        lines.append("endpoint=" + format_endpoint(peer.endpoint))
    lines.append("persistent_keepalive_interval=%d" % (keepalive,))
    lines.append("replace_allowed_ips=true")
    for net in peer.allowed_ips:
        if not isinstance(net, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise ValueError("an allowed IP must be an IPv4Network or IPv6Network: %r" % (net,))
        lines.append("allowed_ip=%s" % (net.with_prefixlen,))
    return lines


def encode_set(private_key=None, listen_port=None, replace_peers=False, upserts=(),
               removals=()):
    """
    One C{set=1} request. Each peer in C{upserts} is added or updated, its AllowedIPs
    replaced (C{replace_allowed_ips=true}); its preshared key set (all zeros = none), its
    keepalive set, its endpoint set when it has one. Each public key in C{removals} is
    removed (C{remove=true}) first. With C{replace_peers}, every other peer goes.

    @raise ValueError: a key is not 32 bytes, a port is out of range, a peer is malformed.
    """
    lines = ["set=1"]
    if private_key is not None:
        lines.append("private_key=" + _key_hex(private_key, "the private key"))
    if listen_port is not None:
        lines.append("listen_port=%d" % (_port(listen_port, "the listen port"),))
    if replace_peers:
        lines.append("replace_peers=true")
    for key in removals:
        lines.append("public_key=" + _key_hex(key, "a removed peer's public key"))
        lines.append("remove=true")
    for peer in upserts:
        lines.extend(_peer_lines(peer))
    return ("\n".join(lines) + "\n\n").encode("ascii")


def encode_get():
    return b"get=1\n\n"


# ---- decoding ----

def reply_complete(data):
    """@return: the length of the first complete reply in C{data} (up to and with its blank line), or None."""
    if data.startswith(b"\n"):
        return 1
    end = data.find(b"\n\n")
    return None if end < 0 else end + 2


def _lines(reply):
    if not isinstance(reply, bytes) or not reply.endswith(b"\n\n"):
        raise UapiProtocolError("the UAPI reply does not end with a blank line")
    try:
        text = reply[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise UapiProtocolError("the UAPI reply is not ASCII")
    if "\n\n" in text or "\r" in text or "\0" in text:
        raise UapiProtocolError("the UAPI reply has a blank line or a control character")
    out = []
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise UapiProtocolError("the UAPI reply has a line that is not key=value: %r"
                                    % (line[:80],))
        out.append((key, value))
    return out


def _errno(key, value):
    if key != "errno":
        raise UapiProtocolError("the UAPI reply does not end with errno=N")
    try:
        n = int(value, 10)
    except ValueError:
        raise UapiProtocolError("the UAPI reply's errno is not a number: %r" % (value[:20],))
    if not -4096 < n < 4096:
        raise UapiProtocolError("the UAPI reply's errno is out of range: %d" % (n,))
    return n


def _check(n, what):
    if n != 0:
        raise UapiError("wireguard-go refused the %s: errno=%d" % (what, n), errno=n)


def parse_set_reply(reply):
    """@raise UapiError: errno != 0. @raise UapiProtocolError: not a UAPI set reply."""
    lines = _lines(reply)
    if len(lines) != 1:
        raise UapiProtocolError("a UAPI set reply is one errno=N line, not %d lines" % (len(lines),))
    _check(_errno(*lines[0]), "set request")


def _hex_key(value, what):
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise UapiProtocolError("%s is not hex" % (what,))
    if len(raw) != KEY_LEN or len(value) != 2 * KEY_LEN:
        raise UapiProtocolError("%s is not %d bytes" % (what, KEY_LEN))
    return raw


def _int(value, what, top):
    if not value.isdigit() or len(value) > 20:
        raise UapiProtocolError("%s is not a number: %r" % (what, value[:20]))
    n = int(value)
    if n > top:
        raise UapiProtocolError("%s is out of range: %d" % (what, n))
    return n


def parse_endpoint(value):
    """C{192.0.2.1:51820} or C{[fc00::1]:51820} -> C{(ip text, port)}."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep:
        raise UapiProtocolError("a peer's endpoint is not host:port: %r" % (value[:60],))
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UapiProtocolError("a peer's endpoint address is not an IP: %r" % (host[:60],))
    if (ip.version == 6) != value.startswith("["):
        raise UapiProtocolError("a peer's endpoint is malformed: %r" % (value[:60],))
    return (str(ip), _int(port, "a peer's endpoint port", 65535))


def parse_get_reply(reply):
    """
    @return: the L{DeviceState} of a C{get=1} reply.
    @raise UapiError: errno != 0. @raise UapiProtocolError: garbled or hostile reply.
    """
    lines = _lines(reply)
    _check(_errno(*lines[-1]), "get request")
    device = {"private_key": None, "listen_port": 0, "fwmark": 0}
    peers = {}
    peer = None

    def finish():
        if peer is not None:
            key = peer["public_key"]
            if key in peers:
                raise UapiProtocolError("the UAPI reply names a peer twice")
            peers[key] = WgPeer(public_key=key, endpoint=peer["endpoint"],
                                allowed_ips=tuple(peer["allowed_ips"]),
                                preshared_key=peer["preshared_key"],
                                keepalive=peer["keepalive"])

    for key, value in lines[:-1]:
        if key == "public_key":
            finish()
            peer = {"public_key": _hex_key(value, "a peer's public key"), "endpoint": None,
                    "allowed_ips": [], "preshared_key": None, "keepalive": 0}
        elif peer is None:
            if key == "private_key":
                k = _hex_key(value, "the private key")
                device["private_key"] = None if k == _ZERO_KEY else k
            elif key == "listen_port":
                device["listen_port"] = _int(value, "the listen port", 65535)
            elif key == "fwmark":
                device["fwmark"] = _int(value, "the fwmark", 0xffffffff)
            elif key == "errno":
                raise UapiProtocolError("the UAPI reply has errno=N before its end")
            # other device keys: newer wireguard-go, ignored
        elif key == "preshared_key":
            k = _hex_key(value, "a peer's preshared key")
            peer["preshared_key"] = None if k == _ZERO_KEY else k
        elif key == "endpoint":
            peer["endpoint"] = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer["keepalive"] = _int(value, "a peer's keepalive", 65535)
        elif key == "allowed_ip":
            try:
                peer["allowed_ips"].append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise UapiProtocolError("a peer's allowed IP is not a network: %r" % (value[:60],))
        elif key in ("private_key", "listen_port", "fwmark", "errno"):
            raise UapiProtocolError("the UAPI reply has the device key %s inside a peer" % (key,))
        # counters, handshake times, protocol_version: not part of WgPeer
    finish()
    return DeviceState(private_key=device["private_key"], listen_port=device["listen_port"],
                       fwmark=device["fwmark"], peers=peers)


# ---- the client ----

class _Exchange(protocol.Protocol):
    """Sends one request, collects one reply, hangs up."""

    def __init__(self, request, done):
        self._request = request
        self._done = done
        self._buf = bytearray()

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data):
        if self._done.called:
            return
        self._buf += data
        if len(self._buf) > MAX_REPLY:
            self._done.errback(UapiProtocolError(
                "the UAPI reply is over %d bytes" % (MAX_REPLY,)))
            self.transport.abortConnection()
            return
        if self._buf[:1] == b"\n":
            n = 1
        else:
            # Only the new bytes (and the one before them) can complete the reply.
            end = self._buf.find(b"\n\n", max(0, len(self._buf) - len(data) - 1))
            n = None if end < 0 else end + 2
        if n is not None:
            self._done.callback(bytes(self._buf[:n]))
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self._done.called:
            self._done.errback(UapiError(
                "wireguard-go closed the UAPI socket before a whole reply (%d bytes read)"
                % (len(self._buf),)))


class _ExchangeFactory(protocol.Factory):
    noisy = False
    def __init__(self, request, done):
        self._request = request
        self._done = done

    def buildProtocol(self, addr):
        return _Exchange(self._request, self._done)


class UapiClient:
    """
    A client of one wireguard-go UAPI socket. Requests are sent one at a time, in order.

    @param reactor: IReactorUNIX + IReactorTime.
    @param path: the socket, e.g. C{/run/flannel/wireguard/flannel-wg.sock}.
    @param timeout: seconds for one exchange (connect, request, reply).
    @param endpoint_factory: C{(reactor, path) -> IStreamClientEndpoint}, for tests.
    """
    log = Logger()

    def __init__(self, reactor, path, timeout=10.0, endpoint_factory=None):
        self._reactor = reactor
        self.path = path
        self._timeout = timeout
        self._endpoint_factory = endpoint_factory or (
            lambda r, p: UNIXClientEndpoint(r, p, timeout=timeout))
        self._lock = defer.DeferredLock()

    def request(self, data):
        """
        Send one raw request; fire with the raw reply (up to its blank line). Fails with
        L{UapiError} when the socket is missing, closes early or times out.
        """
        return self._lock.run(self._exchange, data)

    def _exchange(self, data):
        done = defer.Deferred()
        state = {"proto": None}

        def timed_out():
            if not done.called:
                done.errback(UapiError("no UAPI reply from %s within %ss" % (
                    self.path, self._timeout)))
            if state["proto"] is not None and state["proto"].transport is not None:
                state["proto"].transport.abortConnection()

        timer = self._reactor.callLater(self._timeout, timed_out)

        def connected(proto):
            state["proto"] = proto
            if done.called and proto.transport is not None:
                proto.transport.abortConnection()

        def not_connected(f):
            if not done.called:
                reason = f.value
                if isinstance(reason, error.ConnectError):
                    reason = reason.osError or reason
                done.errback(UapiError("cannot connect to the UAPI socket %s: %s" % (
                    self.path, reason)))

        def finish(result):
            if timer.active():
                timer.cancel()
            return result

        d = self._endpoint_factory(self._reactor, self.path).connect(
            _ExchangeFactory(data, done))
        d.addCallbacks(connected, not_connected)
        return done.addBoth(finish)

    def set(self, private_key=None, listen_port=None, replace_peers=False, upserts=(),
            removals=()):
        """
        One C{set=1} exchange (see L{encode_set}). Fires with None; fails with
        L{UapiError} (errno != 0, socket closed) or L{ValueError} (nothing sent).
        """
        try:
            data = encode_set(private_key, listen_port, replace_peers, upserts, removals)
        except ValueError as e:
            return defer.fail(e)
        return self.request(data).addCallback(parse_set_reply)

    def set_device(self, private_key, listen_port):
        return self.set(private_key=private_key, listen_port=listen_port)

    def set_peers(self, upserts, removals):
        return self.set(upserts=upserts, removals=removals)

    def get(self):
        """Fire with the L{DeviceState}; fails with L{UapiError}."""
        return self.request(encode_get()).addCallback(parse_get_reply)
