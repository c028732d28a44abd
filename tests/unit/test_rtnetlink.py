"""The rtnetlink codec's parsing (flannel_tw.kernel.rtnetlink), pure: no socket, no root.
The packing is compared with pyroute2's encoder in tests.unit.test_vxlan."""
import errno
import socket
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from twisted.trial import unittest

from flannel_tw.kernel import rtnetlink as R


def message(kind, seq, body):
    return R.HDR.pack(R.HDR.size + len(body), kind, 0, seq, 0) + body + b"\0" * (-len(body) % 4)


def route_body(subnet, gateway, oif, table=R.RT_TABLE_MAIN, family=None, protocol=3):
    net = ip_network(subnet)
    kind, flags, payload = R.route_request("replace", net, gateway, oif)
    family = R.family_of(net) if family is None else family
    head = R.RTMSG.pack(family, net.prefixlen, 0, 0, table, protocol, 0, 1, 0)
    body = head + payload[R.RTMSG.size:]
    return body[:-4] + struct.pack("=I", table)        # the RTA_TABLE attribute, last


class MessagesTests(unittest.TestCase):
    def test_walks_messages_in_order_with_their_bodies(self):
        data = (message(R.NLMSG_ERROR, 7, R.ERR.pack(-errno.EEXIST) + b"x" * 16)
                + message(R.NLMSG_DONE, 8, b"abc"))
        got = list(R.messages(data))
        self.assertEqual([(k, s) for k, s, _, _ in got], [(R.NLMSG_ERROR, 7), (R.NLMSG_DONE, 8)])
        self.assertEqual(R.error_code(data, got[0][2]), errno.EEXIST)
        self.assertEqual(data[got[1][2]:got[1][3]], b"abc")

    def test_a_bad_length_ends_the_walk(self):
        bad = R.HDR.pack(4, R.NLMSG_DONE, 0, 9, 0)
        data = message(R.NLMSG_NOOP, 1, b"") + bad + message(R.NLMSG_DONE, 2, b"")
        self.assertEqual([k for k, _, _, _ in R.messages(data)], [R.NLMSG_NOOP, None])

    def test_a_short_tail_is_ignored(self):
        self.assertEqual(list(R.messages(message(R.NLMSG_NOOP, 1, b"") + b"\1\2\3")),
                         [(R.NLMSG_NOOP, 1, R.HDR.size, R.HDR.size)])


class ParseRouteTests(unittest.TestCase):
    NET = IPv4Network("10.5.0.0/16")

    def test_a_route_inside_the_network(self):
        body = route_body("10.5.2.0/24", IPv4Address("192.168.250.12"), 7)
        self.assertEqual(R.parse_route(R.RTM_NEWROUTE, body, self.NET),
                         R.RouteEntry(IPv4Network("10.5.2.0/24"),
                                      IPv4Address("192.168.250.12"), 7))
        self.assertTrue(R.route_has_gateway(body))

    def test_others_are_skipped(self):
        for body in (route_body("10.6.2.0/24", None, 7),                  # outside
                     route_body("10.5.0.0/16", None, 7),                  # not strictly inside
                     route_body("10.5.2.0/24", None, 7, table=100),       # another table
                     route_body("10.5.2.0/24", None, 7, family=socket.AF_INET6),
                     b"\0" * 4):                                          # too short
            self.assertIsNone(R.parse_route(R.RTM_NEWROUTE, body, self.NET))
        self.assertIsNone(R.parse_route(R.RTM_NEWNEIGH, route_body("10.5.2.0/24", None, 7),
                                        self.NET))

    def test_no_gateway(self):
        body = route_body("10.5.2.0/24", None, 7)
        self.assertEqual(R.parse_route(R.RTM_NEWROUTE, body, self.NET).gateway, None)
        self.assertFalse(R.route_has_gateway(body))


class ParseRouteV6Tests(unittest.TestCase):
    """IPv6 routes (issue 15): the dump of one family, inside the IPv6 network."""
    NET = IPv6Network("fc00:5::/48")

    def test_a_route_inside_the_network(self):
        body = route_body("fc00:5:0:2::/64", IPv6Address("fc00:5:0:2::"), 7)
        self.assertEqual(R.parse_route(R.RTM_NEWROUTE, body, self.NET),
                         R.RouteEntry(IPv6Network("fc00:5:0:2::/64"),
                                      IPv6Address("fc00:5:0:2::"), 7))
        self.assertEqual(R.parse_route(R.RTM_NEWROUTE, route_body("fc00:5:0:3::/64", None, 9),
                                       self.NET),
                         R.RouteEntry(IPv6Network("fc00:5:0:3::/64"), None, 9))

    def test_others_are_skipped(self):
        for body in (route_body("fc00:6:0:2::/64", None, 7),             # outside
                     route_body("fc00:5::/48", None, 7),                 # not strictly inside
                     route_body("fc00:5:0:2::/64", None, 7, table=100),  # another table
                     route_body("10.5.2.0/24", None, 7),                  # IPv4
                     # the kernel's own route for flannel-v6's <subnet addr>/128
                     route_body("fc00:5:0:1::/128", None, 7, protocol=R.RTPROT_KERNEL)):
            self.assertIsNone(R.parse_route(R.RTM_NEWROUTE, body, self.NET))
        # and an IPv6 route is never taken for an IPv4 one
        self.assertIsNone(R.parse_route(R.RTM_NEWROUTE, route_body("fc00:5:0:2::/64", None, 7),
                                        IPv4Network("10.5.0.0/16")))

    def test_requests_take_the_family_of_their_addresses(self):
        _, _, route = R.route_request("replace", IPv6Network("fc00:5:0:2::/64"),
                                      IPv6Address("fc00:5:0:2::"), 7, onlink=True)
        self.assertEqual(R.RTMSG.unpack_from(route)[:2], (socket.AF_INET6, 64))
        _, _, neigh = R.neigh_request("replace", 12, IPv6Address("fc00:5:0:2::"),
                                      "82:4b:b6:2f:54:4e")
        fam, index, state, attrs = R.parse_neigh(R.RTM_NEWNEIGH, neigh)
        self.assertEqual((fam, index, state), (socket.AF_INET6, 12, R.NUD_PERMANENT))
        self.assertEqual(IPv6Address(attrs[R.NDA_DST]), IPv6Address("fc00:5:0:2::"))
        _, _, fdb = R.fdb_request("replace", 12, "82:4b:b6:2f:54:4e", IPv6Address("fd00::12"))
        fam, _, _, attrs = R.parse_neigh(R.RTM_NEWNEIGH, fdb)
        self.assertEqual((fam, IPv6Address(attrs[R.NDA_DST])), (socket.AF_BRIDGE,
                                                                IPv6Address("fd00::12")))
        get = R.route_get_payload(IPv6Address("fd00::12"))
        self.assertEqual(R.RTMSG.unpack_from(get)[:2], (socket.AF_INET6, 128))
        self.assertEqual(R.attrs(get, R.RTMSG.size)[R.RTA_DST], IPv6Address("fd00::12").packed)
        self.assertEqual(R.RTMSG.unpack_from(R.route_dump_payload(socket.AF_INET6))[0],
                         socket.AF_INET6)


class ParseNeighTests(unittest.TestCase):
    def test_a_neighbour_and_an_fdb_entry(self):
        _, _, neigh = R.neigh_request("replace", 12, IPv4Address("10.5.2.0"), "82:4b:b6:2f:54:4e")
        fam, index, state, attrs = R.parse_neigh(R.RTM_NEWNEIGH, neigh)
        self.assertEqual((fam, index, state), (socket.AF_INET, 12, R.NUD_PERMANENT))
        self.assertEqual(IPv4Address(attrs[R.NDA_DST]), IPv4Address("10.5.2.0"))
        self.assertEqual(R.mac_text(attrs[R.NDA_LLADDR]), "82:4b:b6:2f:54:4e")
        _, _, fdb = R.fdb_request("replace", 12, "82:4b:b6:2f:54:4e", IPv4Address("192.0.2.1"))
        self.assertEqual(R.parse_neigh(R.RTM_NEWNEIGH, fdb)[0], socket.AF_BRIDGE)
        self.assertIsNone(R.parse_neigh(R.RTM_NEWROUTE, fdb))
        self.assertIsNone(R.parse_neigh(R.RTM_NEWNEIGH, b"\0"))

    def test_the_codec_is_pure(self):
        import subprocess
        import sys
        code = ("import sys, flannel_tw.kernel.rtnetlink; "
                "sys.exit('twisted.internet.reactor' in sys.modules)")
        self.assertEqual(subprocess.run([sys.executable, "-c", code]).returncode, 0)
