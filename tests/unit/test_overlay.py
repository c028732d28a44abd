"""The udp overlay on real kernels, end to end: a real etcd in the lab's switch

The unit tests (PacketTests); the whole description is in tests/lab/test_overlay.py."""

import struct
from ipaddress import IPv4Address

from twisted.trial import unittest

from flannel_tw.backend.udp.packet import check_ipv4
from flannel_tw.testing.overlay import inet_checksum, ipv4_udp


class PacketTests(unittest.TestCase):
    """The packet builder the spoofing test relies on."""

    def test_ipv4_udp(self):
        pkt = ipv4_udp("10.5.3.2", "10.5.85.2", 40000, 8285, b"hello")
        self.assertEqual(len(pkt), 20 + 8 + 5)
        self.assertIsNone(check_ipv4(pkt))
        self.assertEqual(inet_checksum(pkt[:20]), 0)
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 17, 13)
        self.assertEqual(inet_checksum(pseudo + pkt[20:]), 0)
        self.assertEqual(pkt[9], 17)
        self.assertEqual(pkt[12:16], IPv4Address("10.5.3.2").packed)
