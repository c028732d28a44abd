"""
wireguard-go's UAPI: the pure codec against an exchange recorded from a real wireguard-go
(flannel_tw.testing.wg_uapi_fixtures), hostile replies, and the Twisted client against a
loopback UNIX-socket server that replays the recording.
"""
import os
import tempfile
from ipaddress import IPv4Network, IPv6Network

from hypothesis import given, settings, strategies as st
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from flannel_tw.backend.wireguard import uapi
from flannel_tw.backend.wireguard.uapi import (
    DeviceState, UapiClient, UapiError, UapiProtocolError, encode_set, parse_get_reply,
    parse_set_reply)
from flannel_tw.model.wgpeer import WgPeer
from flannel_tw.testing import wg_uapi_fixtures as fx

PEER_B = WgPeer(fx.PEER_B, ("192.0.2.11", 51820), (IPv4Network("10.5.34.0/24"),),
                preshared_key=fx.PSK, keepalive=25)
PEER_C = WgPeer(fx.PEER_C, ("fd00:0:0:1::11", 51821),
                (IPv4Network("10.5.35.0/24"), IPv6Network("fc00:0:0:a::/64")))
PEER_D = WgPeer(fx.PEER_D, ("192.0.2.12", 51820), (IPv4Network("10.5.36.0/24"),))


class EncodeTests(unittest.TestCase):
    """The codec's requests are byte for byte those wireguard-go accepted."""

    def test_set_device(self):
        self.assertEqual(encode_set(private_key=fx.PRIVATE, listen_port=51820),
                         fx.SET_DEVICE[0])

    def test_set_peers_replacing_all(self):
        self.assertEqual(encode_set(replace_peers=True, upserts=[PEER_B, PEER_C]),
                         fx.SET_PEERS[0])

    def test_removal_and_upsert_in_one_request(self):
        self.assertEqual(encode_set(upserts=[PEER_D], removals=[fx.PEER_B]),
                         fx.REMOVE_AND_ADD[0])

    def test_get(self):
        self.assertEqual(uapi.encode_get(), fx.GET_TWO_PEERS[0])

    def test_no_endpoint_no_endpoint_line(self):
        req = encode_set(upserts=[WgPeer(fx.PEER_D, None, ())])
        self.assertNotIn(b"endpoint=", req)
        self.assertIn(b"replace_allowed_ips=true\n\n", req)

    def test_bad_values_are_refused_before_sending(self):
        bad = [dict(private_key=b"short"), dict(listen_port=70000), dict(listen_port=True),
               dict(removals=[b"x" * 31]),
               dict(upserts=[WgPeer(b"k" * 31, None, ())]),
               dict(upserts=[WgPeer(fx.PEER_B, ("not-an-ip", 1), ())]),
               dict(upserts=[WgPeer(fx.PEER_B, ("192.0.2.1", 65536), ())]),
               dict(upserts=[WgPeer(fx.PEER_B, None, (), preshared_key=b"p")])
               , dict(upserts=[WgPeer(fx.PEER_B, None, (), keepalive=-1)]),
               dict(upserts=[WgPeer(fx.PEER_B, None, ("10.0.0.0/8",))]),
               dict(upserts=["not a peer"])]
        for kwargs in bad:
            self.assertRaises(ValueError, encode_set, **kwargs)


class DecodeTests(unittest.TestCase):
    def test_recorded_set_replies(self):
        for _, reply in (fx.SET_DEVICE, fx.SET_PEERS, fx.REMOVE_AND_ADD):
            self.assertIsNone(parse_set_reply(reply))

    def test_recorded_errno_is_an_error(self):
        for _, reply in (fx.BAD_PRIVATE_KEY, fx.BAD_ALLOWED_IP, fx.BAD_LISTEN_PORT):
            e = self.assertRaises(UapiError, parse_set_reply, reply)
            self.assertEqual(e.errno, -22)
            self.assertIn("errno=-22", str(e))
            self.assertNotIsInstance(e, UapiProtocolError)

    def test_recorded_get(self):
        state = parse_get_reply(fx.GET_TWO_PEERS[1])
        self.assertEqual(state, DeviceState(
            private_key=fx.PRIVATE_CLAMPED, listen_port=51820, fwmark=0,
            peers={fx.PEER_B: PEER_B, fx.PEER_C: PEER_C}))

    def test_recorded_get_after_removal(self):
        state = parse_get_reply(fx.GET_AFTER_REMOVE[1])
        self.assertEqual(state.peers, {fx.PEER_C: PEER_C, fx.PEER_D: PEER_D})

    def test_round_trip(self):
        """What the codec sends is what it parses back from a get reply of the same lines."""
        peers = [PEER_B, PEER_C, PEER_D]
        lines = encode_set(private_key=fx.PRIVATE, listen_port=1, upserts=peers)
        body = lines[len(b"set=1\n"):-1].replace(b"replace_allowed_ips=true\n", b"")
        state = parse_get_reply(body + b"errno=0\n\n")
        self.assertEqual(state.peers, {p.public_key: p for p in peers})
        self.assertEqual(state.listen_port, 1)

    hostile = [
        b"", b"\n", b"errno=0\n", b"errno=0", b"errno=x\n\n", b"errno=99999\n\n",
        b"garbage\n\n", b"=1\nerrno=0\n\n", b"errno=0\nerrno=0\n\n",
        b"\xff\xfe=1\nerrno=0\n\n", b"listen_port=1\r\nerrno=0\n\n",
        b"private_key=zz\nerrno=0\n\n", b"private_key=" + b"00" * 31 + b"\nerrno=0\n\n",
        b"listen_port=65536\nerrno=0\n\n", b"listen_port=-1\nerrno=0\n\n",
        b"listen_port=" + b"9" * 5000 + b"\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\nendpoint=1.2.3.4\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\nendpoint=[1.2.3.4]:1\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\nendpoint=fc00::1:1\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\nendpoint=[fc00::1]:99999\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\nallowed_ip=10.5.999.0/24\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\npersistent_keepalive_interval=1e3\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\npublic_key=" + b"11" * 32 + b"\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\nlisten_port=1\nerrno=0\n\n",
        b"public_key=" + b"11" * 32 + b"\npreshared_key=12\nerrno=0\n\n",
    ]

    def test_hostile_get_replies_are_protocol_errors(self):
        for reply in self.hostile:
            self.assertRaises(UapiProtocolError, parse_get_reply, reply)

    def test_hostile_set_replies_are_protocol_errors(self):
        for reply in self.hostile + [fx.GET_TWO_PEERS[1]]:
            self.assertRaises(UapiProtocolError, parse_set_reply, reply)

    def test_unknown_keys_are_ignored(self):
        state = parse_get_reply(b"listen_port=7\nnew_thing=1\npublic_key=" + b"11" * 32
                                + b"\nnewer_peer_thing=2\nerrno=0\n\n")
        self.assertEqual(state.listen_port, 7)
        self.assertEqual(list(state.peers), [b"\x11" * 32])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(
        [b"public_key=" + b"11" * 32, b"public_key=" + b"22" * 32, b"endpoint=[::1]:1",
         b"endpoint=1.2.3.4:5", b"allowed_ip=10.0.0.0/8", b"errno=0", b"errno=-2",
         b"listen_port=9", b"private_key=" + b"33" * 32, b"x", b"", b"=", b"fwmark=4"]))
        .map(lambda ls: b"\n".join(ls)) | st.binary(max_size=200),
        st.booleans())
    def test_fuzz_never_crashes(self, body, terminate):
        reply = body + (b"\n\n" if terminate else b"")
        for parse in (parse_get_reply, parse_set_reply):
            try:
                parse(reply)
            except UapiError:
                pass


class _Replay(protocol.Protocol):
    """A wireguard-go stand-in: answers each recorded request with its recorded reply."""

    def connectionMade(self):
        self.factory.connections.append(self)
        self.buf = b""

    def dataReceived(self, data):
        self.buf += data
        if not (self.buf == b"get=1\n\n" or (self.buf.startswith(b"set=1\n")
                                               and self.buf.endswith(b"\n\n"))):
            return
        self.factory.requests.append(self.buf)
        queue = self.factory.replies.get(self.buf, [b"errno=-22\n\n"])
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if self.factory.hold is not None:
            self.factory.hold.addCallback(lambda _: self.transport.write(reply))
        elif self.factory.mode == "close":
            self.transport.loseConnection()
        elif self.factory.mode == "split":
            for i in range(len(reply)):
                self.transport.write(reply[i:i + 1])
        else:
            self.transport.write(reply)


class ReplayFactory(protocol.Factory):
    protocol = _Replay

    def __init__(self, exchanges):
        self.replies = {}          # request -> its recorded replies, in order
        for request, reply in exchanges:
            self.replies.setdefault(request, []).append(reply)
        self.requests = []
        self.connections = []
        self.hold = None
        self.mode = "normal"


class ClientTests(unittest.TestCase):
    """The client over a real UNIX socket against the recorded exchange."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="wguapi")
        self.addCleanup(os.rmdir, self.dir)
        self.path = os.path.join(self.dir, "flannel-wg.sock")
        self.server = ReplayFactory(fx.EXCHANGES)
        port = reactor.listenUNIX(self.path, self.server)
        self.addCleanup(port.stopListening)
        self.client = UapiClient(reactor, self.path, timeout=5)

    @defer.inlineCallbacks
    def test_set_device_then_peers_then_get(self):
        yield self.client.set_device(fx.PRIVATE, 51820)
        yield self.client.set(replace_peers=True, upserts=[PEER_B, PEER_C])
        state = yield self.client.get()
        self.assertEqual(state.peers, {fx.PEER_B: PEER_B, fx.PEER_C: PEER_C})
        self.assertEqual(self.server.requests,
                         [fx.SET_DEVICE[0], fx.SET_PEERS[0], fx.GET_TWO_PEERS[0]])
        self.assertEqual(len(self.server.connections), 3)

    @defer.inlineCallbacks
    def test_set_peers_upserts_and_removals_in_one_exchange(self):
        yield self.client.set_peers([PEER_D], [fx.PEER_B])
        self.assertEqual(self.server.requests, [fx.REMOVE_AND_ADD[0]])

    @defer.inlineCallbacks
    def test_errno_fails_with_uapi_error(self):
        e = yield self.assertFailure(self.client.request(fx.BAD_LISTEN_PORT[0])
                                     .addCallback(parse_set_reply), UapiError)
        self.assertEqual(e.errno, -22)

    @defer.inlineCallbacks
    def test_reply_in_single_bytes(self):
        self.server.mode = "split"
        reply = yield self.client.request(fx.GET_TWO_PEERS[0])
        self.assertEqual(reply, fx.GET_TWO_PEERS[1])

    @defer.inlineCallbacks
    def test_closed_socket_is_an_error(self):
        self.server.mode = "close"
        e = yield self.assertFailure(self.client.get(), UapiError)
        self.assertIn("closed the UAPI socket", str(e))
        # the next request works again
        self.server.mode = "normal"
        yield self.client.set_device(fx.PRIVATE, 51820)

    @defer.inlineCallbacks
    def test_missing_socket_is_an_error(self):
        client = UapiClient(reactor, os.path.join(self.dir, "nope.sock"), timeout=5)
        e = yield self.assertFailure(client.get(), UapiError)
        self.assertIn("cannot connect", str(e))

    @defer.inlineCallbacks
    def test_one_request_at_a_time(self):
        self.server.hold = defer.Deferred()
        first = self.client.set_device(fx.PRIVATE, 51820)
        second = self.client.get()
        while not self.server.requests:
            yield task.deferLater(reactor, 0.01, lambda: None)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.server.connections), 1)
        hold, self.server.hold = self.server.hold, None
        hold.callback(None)
        yield first
        state = yield second
        self.assertEqual(len(state.peers), 2)
        self.assertEqual(len(self.server.connections), 2)

    def test_bad_peer_fails_without_sending(self):
        d = self.client.set_peers([WgPeer(b"short", None, ())], [])
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.server.requests, [])


class _Silent(protocol.Protocol):
    pass


class _FakeEndpoint:
    def __init__(self, never=False):
        self.never = never
        self.transports = []

    def connect(self, factory):
        if self.never:
            return defer.Deferred()
        from twisted.internet.testing import StringTransport
        proto = factory.buildProtocol(None)
        t = StringTransport()
        self.transports.append(t)
        proto.makeConnection(t)
        self.proto = proto
        return defer.succeed(proto)


class ClientFakeTests(unittest.TestCase):
    """Timeouts and oversize replies, with a fake transport and a Clock."""

    def test_timeout_connecting(self):
        clock = task.Clock()
        c = UapiClient(clock, "/x.sock", timeout=3,
                       endpoint_factory=lambda r, p: _FakeEndpoint(never=True))
        d = c.get()
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertIn("within 3s", str(self.failureResultOf(d, UapiError).value))

    def test_timeout_waiting_for_reply_aborts(self):
        clock = task.Clock()
        ep = _FakeEndpoint()
        c = UapiClient(clock, "/x.sock", timeout=3, endpoint_factory=lambda r, p: ep)
        d = c.get()
        self.assertEqual(ep.transports[0].value(), b"get=1\n\n")
        clock.advance(3)
        self.failureResultOf(d, UapiError)
        self.assertTrue(ep.transports[0].disconnecting)

    def test_oversize_reply(self):
        self.patch(uapi, "MAX_REPLY", 100)
        clock = task.Clock()
        ep = _FakeEndpoint()
        c = UapiClient(clock, "/x.sock", endpoint_factory=lambda r, p: ep)
        d = c.get()
        ep.proto.dataReceived(b"listen_port=1\n" * 10)
        self.failureResultOf(d, UapiProtocolError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_hostile_reply_then_trailing_bytes(self):
        clock = task.Clock()
        ep = _FakeEndpoint()
        c = UapiClient(clock, "/x.sock", endpoint_factory=lambda r, p: ep)
        d = c.get()
        ep.proto.dataReceived(b"listen_port=zz\nerrno=0\n\nmore garbage")
        ep.proto.dataReceived(b"and more\n\n")
        self.failureResultOf(d, UapiProtocolError)
