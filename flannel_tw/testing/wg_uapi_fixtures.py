# -*- test-case-name: tests.unit.test_wg_uapi -*-
"""
A UAPI exchange recorded from a real wireguard-go (Debian bookworm's wireguard-go
v0.0.20220316, in a network namespace of its own, a fresh C{flannel-wg}), one
connection per request, as L{flannel_tw.backend.wireguard.uapi} makes them: each
C{(request, reply)} pair is byte for byte what went over the socket. The keys are fixed
(L{PRIVATE}, L{PEER_B}, L{PEER_C}, L{PEER_D}, L{PSK}: SHA-256 of a letter), so the
codec's own requests can be compared with the recorded ones.

Things the recording shows: wireguard-go stores the private key clamped (the C{get}
reply's C{private_key} differs from the one set); an all-zero C{preshared_key} means
none; errors are negative errnos (C{errno=-22}); a peer's C{endpoint} is
C{[v6]:port} for IPv6; a C{get} lists the peers in Go map order (not stable from run to
run: compare them as a set).

L{record} replays L{EXCHANGES}' requests against a live socket (the lab test checks the
recording still matches).
"""
import hashlib
import socket

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def _private(seed):
    return hashlib.sha256(seed).digest()


def _public(private):
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


PRIVATE = _private(b"A")
PRIVATE_CLAMPED = bytes.fromhex(
    "509aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdf7d")
PEER_B = _public(_private(b"B"))
PEER_C = _public(_private(b"C"))
PEER_D = _public(_private(b"D"))
PSK = _private(b"psk")

SET_DEVICE = (
    (b'set=1\n'
     b'private_key=559aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdffd\n'
     b'listen_port=51820\n'
     b'\n'),
    (b'errno=0\n'
     b'\n'))

SET_PEERS = (
    (b'set=1\n'
     b'replace_peers=true\n'
     b'public_key=60d4e832d3ff9485953b315afe3e264e90f356a62c458896b08cd37efdba5e37\n'
     b'preshared_key=233edfa58c84847712e911572533907dc46771c2af022cea0766b422d44f31e5\n'
     b'endpoint=192.0.2.11:51820\n'
     b'persistent_keepalive_interval=25\n'
     b'replace_allowed_ips=true\n'
     b'allowed_ip=10.5.34.0/24\n'
     b'public_key=e7f2ee7a9c30253bc33b200050aeae35938bb55719ae8764caf0360aa45e564c\n'
     b'preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n'
     b'endpoint=[fd00:0:0:1::11]:51821\n'
     b'persistent_keepalive_interval=0\n'
     b'replace_allowed_ips=true\n'
     b'allowed_ip=10.5.35.0/24\n'
     b'allowed_ip=fc00:0:0:a::/64\n'
     b'\n'),
    (b'errno=0\n'
     b'\n'))

GET_TWO_PEERS = (
    (b'get=1\n'
     b'\n'),
    (b'private_key=509aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdf7d\n'
     b'listen_port=51820\n'
     b'public_key=60d4e832d3ff9485953b315afe3e264e90f356a62c458896b08cd37efdba5e37\n'
     b'preshared_key=233edfa58c84847712e911572533907dc46771c2af022cea0766b422d44f31e5\n'
     b'protocol_version=1\n'
     b'endpoint=192.0.2.11:51820\n'
     b'last_handshake_time_sec=0\n'
     b'last_handshake_time_nsec=0\n'
     b'tx_bytes=0\n'
     b'rx_bytes=0\n'
     b'persistent_keepalive_interval=25\n'
     b'allowed_ip=10.5.34.0/24\n'
     b'public_key=e7f2ee7a9c30253bc33b200050aeae35938bb55719ae8764caf0360aa45e564c\n'
     b'preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n'
     b'protocol_version=1\n'
     b'endpoint=[fd00:0:0:1::11]:51821\n'
     b'last_handshake_time_sec=0\n'
     b'last_handshake_time_nsec=0\n'
     b'tx_bytes=0\n'
     b'rx_bytes=0\n'
     b'persistent_keepalive_interval=0\n'
     b'allowed_ip=10.5.35.0/24\n'
     b'allowed_ip=fc00:0:0:a::/64\n'
     b'errno=0\n'
     b'\n'))

REMOVE_AND_ADD = (
    (b'set=1\n'
     b'public_key=60d4e832d3ff9485953b315afe3e264e90f356a62c458896b08cd37efdba5e37\n'
     b'remove=true\n'
     b'public_key=da7a5bc54e06805afbc0f8ff6c835c91f3c645b63ab0598d09fe3b2620c17320\n'
     b'preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n'
     b'endpoint=192.0.2.12:51820\n'
     b'persistent_keepalive_interval=0\n'
     b'replace_allowed_ips=true\n'
     b'allowed_ip=10.5.36.0/24\n'
     b'\n'),
    (b'errno=0\n'
     b'\n'))

GET_AFTER_REMOVE = (
    (b'get=1\n'
     b'\n'),
    (b'private_key=509aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdf7d\n'
     b'listen_port=51820\n'
     b'public_key=da7a5bc54e06805afbc0f8ff6c835c91f3c645b63ab0598d09fe3b2620c17320\n'
     b'preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n'
     b'protocol_version=1\n'
     b'endpoint=192.0.2.12:51820\n'
     b'last_handshake_time_sec=0\n'
     b'last_handshake_time_nsec=0\n'
     b'tx_bytes=0\n'
     b'rx_bytes=0\n'
     b'persistent_keepalive_interval=0\n'
     b'allowed_ip=10.5.36.0/24\n'
     b'public_key=e7f2ee7a9c30253bc33b200050aeae35938bb55719ae8764caf0360aa45e564c\n'
     b'preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n'
     b'protocol_version=1\n'
     b'endpoint=[fd00:0:0:1::11]:51821\n'
     b'last_handshake_time_sec=0\n'
     b'last_handshake_time_nsec=0\n'
     b'tx_bytes=0\n'
     b'rx_bytes=0\n'
     b'persistent_keepalive_interval=0\n'
     b'allowed_ip=10.5.35.0/24\n'
     b'allowed_ip=fc00:0:0:a::/64\n'
     b'errno=0\n'
     b'\n'))

BAD_PRIVATE_KEY = (
    (b'set=1\n'
     b'private_key=zz\n'
     b'\n'),
    (b'errno=-22\n'
     b'\n'))

BAD_ALLOWED_IP = (
    (b'set=1\n'
     b'public_key=da7a5bc54e06805afbc0f8ff6c835c91f3c645b63ab0598d09fe3b2620c17320\n'
     b'allowed_ip=10.5.999.0/24\n'
     b'\n'),
    (b'errno=-22\n'
     b'\n'))

BAD_LISTEN_PORT = (
    (b'set=1\n'
     b'listen_port=70000\n'
     b'\n'),
    (b'errno=-22\n'
     b'\n'))

EXCHANGES = [SET_DEVICE, SET_PEERS, GET_TWO_PEERS, REMOVE_AND_ADD, GET_AFTER_REMOVE, BAD_PRIVATE_KEY, BAD_ALLOWED_IP, BAD_LISTEN_PORT]


def record(path, requests, timeout=3.0):
    """
    Send each request on a connection of its own to the UAPI socket C{path} (blocking;
    for re-recording by hand and the lab test) and return the replies, each read up to
    its blank line.
    """
    replies = []
    for request in requests:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(request)
            buf = b""
            while not (buf == b"\n" or b"\n\n" in buf):
                data = s.recv(65536)
                if not data:
                    break
                buf += data
            replies.append(buf)
        finally:
            s.close()
    return replies
