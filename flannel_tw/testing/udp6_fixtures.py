"""
Packets and leases for the udp backend's IPv6 and offload tests (issue 15), shared by
tests/unit/test_udp_packet6, test_udp_ipv6, test_udp_ipv6_offload and test_offload.
"""
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel_tw.backend.udp import packet as P
from flannel_tw.backend.udp import packet6 as P6
from flannel_tw.backend.udp import vnet as V
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.testing.udp_fixtures import config


def make_ipv6(src="fc00:0:0:5::2", dst="fc00:0:0:7::3", hops=64, nxt=17,
              payload=b"x" * 12, plen=None):
    """An IPv6 packet (no extension headers); C{plen} overrides the payload length."""
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload) if plen is None else plen,
                       nxt, hops, IPv6Address(src).packed, IPv6Address(dst).packed) + payload


def icmp6_ok(pkt):
    """An ICMPv6 packet whose checksum is in place checks out."""
    b = bytearray(pkt)
    have = struct.unpack_from("!H", b, 42)[0]
    b[42:44] = b"\0\0"
    return P6.icmp6_checksum(bytes(b)) == have


NETWORK6 = IPv6Network("fc00:0:0::/48")
OUR6 = IPv6Network("fc00:0:0:f::/64")
PEER6 = IPv6Network("fc00:0:0:7::/64")
FLANNELD = "127.0.0.3"                      # a flanneld v0.20 host: dual-stack lease, no marker
FLANNELD_SUBNET = "10.1.8.0/24"
FLANNELD6 = IPv6Network("fc00:0:0:8::/64")
V6_DATA = {"FlannelTW": {"UDPv6": 1}}


def config6(port, **backend):
    return replace(config(port, **backend), enable_ipv6=True, ipv6_network=NETWORK6,
                   ipv6_subnet_len=64)


def lease6(subnet, subnet6, public_ip, v6_data=V6_DATA, backend_data=None):
    return Lease(subnet=IPv4Network(subnet), ipv6_subnet=subnet6, ttl=86400,
                 attrs=LeaseAttrs(public_ip=IPv4Address(public_ip), backend_data=backend_data,
                                  backend_v6_data=v6_data))



def tcp_packet(payload, src="10.1.15.2", dst="10.1.7.3", seq=1000, flags=0x18, ipid=7,
               ttl=64, options=b"", partial=False):
    """An IPv4/TCP packet; with C{partial} the TCP checksum field holds the pseudo sum."""
    thl = 20 + len(options)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, (thl // 4) << 4, flags,
                                65535, 0, 0) + options)
    total = 20 + thl + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total & 0xFFFF, ipid, 0x4000, ttl, 6,
                               0, IPv4Address(src).packed, IPv4Address(dst).packed))
    struct.pack_into("!H", ip, 10, P.internet_checksum(ip))
    pkt = ip + tcp + payload
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack("!BBH", 0, 6,
                                                                             thl + len(payload))
    if partial:
        ps = P.ones_complement_sum(pseudo)
        struct.pack_into("!H", pkt, 36, ps)
    else:
        struct.pack_into("!H", pkt, 36, P.internet_checksum(pseudo + bytes(pkt[20:])))
    return pkt


def tso_header(pkt, mss=1420, gso_type=None):
    """The virtio-net header the kernel puts before the TCP super-packet C{pkt}."""
    return V.build_vnet(V.F_NEEDS_CSUM, V.GSO_TCPV4 if gso_type is None else gso_type,
                        40, mss, 20, 16)
