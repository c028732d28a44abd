# -*- test-case-name: tests.unit.test_udp_backend, tests.unit.test_udp_ipv6 -*-
"""
The udp backend (flannel-compat.md section 6): a TUN device (flannel0) and a Twisted
UDP socket on IfaceAddr:Port (8285), wire-compatible with flanneld: each datagram's
payload is the raw inner IPv4 packet, sent to the peer's PublicIP on our own Port.

Differences from flanneld, on purpose:
  - IPv4 headers are validated (version 4, sane IHL and total length);
  - with C{filter_sources} (the default) a datagram is only accepted from the PublicIP
    of a current lease, and only if its inner source lies in that lease's subnet;
  - a packet from the wire is written into the TUN only if its inner destination lies
    in our own subnet ("foreign-destination" otherwise: flanneld would hand the kernel
    packets for the host itself or for any address, to be forwarded and masqueraded)
    and its inner source does not ("spoofed-source": our own pods never come from the
    wire), whatever C{filter_sources} says;
  - an offload frame reaches the TUN only if its virtio-net header describes its
    packet exactly (L{flannel_tw.backend.udp.offload.check_vnet}; "bad-offload" otherwise), and
    a super-packet that check would refuse is sent segmented instead of as a frame;
  - a packet with TTL 0 or 1 is dropped (flanneld wraps TTL 0 to 255);
  - datagrams longer than the tun MTU are not truncated;
  - with EnableIPv6, inner IPv6 packets travel between flannel-tw hosts in the same
    IPv4 datagrams (L{flannel_tw.backend.udp.packet6}; only to peers whose lease says
    so, L{peer_carries_ipv6}: a flanneld host never gets IPv6).

The data's path, module by module: L{flannel_tw.backend.udp.send} (TUN -> peers: the
drain loop, route lookup, UDP GSO runs, frames and segmentation),
L{flannel_tw.backend.udp.receive} (the datagram protocol on our Port: checks, frame
reassembly, delivery into the TUN), L{flannel_tw.backend.udp.port} (the UDP port that
drains the socket in batches, with UDP GRO), L{flannel_tw.backend.udp.tun_io} (the TUN
reader and writer), L{flannel_tw.backend.udp.offload} and L{flannel_tw.backend.udp.vnet}
(the offloaded mode), L{flannel_tw.backend.udp.packet} (IPv4 checks, ICMP),
L{flannel_tw.backend.udp.routes} and L{flannel_tw.backend.udp.counters}. This module is
the lifecycle: prepare (TUN, port, socket tuning), start, reconfigure, lease events, stop.

Offloaded mode (L{flannel_tw.backend.udp.offload}): unless the Backend config says
C{"Offload": false} or the environment says C{FLANNEL_TW_UDP_OFFLOAD=0}, flannel0 is
opened with IFF_VNET_HDR and TSO, our lease carries C{"BackendData":{"FlannelTW":
{"Offload":2}}}, and peers advertising the same get each TCP super-packet (up to 64 KB)
as one frame: MTU-sized segments with a 4-byte frame header, handed to the kernel in
one UDP GSO sendmsg and read back in one recvmsg thanks to UDP_GRO on the socket.
Everything else, and everything towards other peers (flanneld, or offload off), is
flanneld's wire: super-packets are segmented and partial checksums completed in user
space, so a mixed cluster works and flannel-tw pairs keep their speed.

UDP_GRO is asked for in both modes: a run of datagrams from one peer then arrives in
one read (the cmsg gives the segment size) and is taken apart by the receiver.
"""
import os
import socket
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from twisted.internet import defer, threads
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.interfaces import IBackend, ICountingBackend, IReconfiguringBackend, IRoutesBackend
from flannel_tw.model.config import go_json_fields
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.kernel import netlink as _netlink
from flannel_tw.kernel.tun import open_tun
from flannel_tw.kernel.tun import TunError
from flannel_tw.backend.udp import offload as _off
from flannel_tw.backend.udp.counters import DROP_REASONS, count_error, new_counters
from flannel_tw.backend.udp.dispatch import HotDispatch
from flannel_tw.backend.udp.ipv6 import lease_backend_v6_data, peer_carries_ipv6, v6_route
from flannel_tw.backend.udp.lone import lone_readers
from flannel_tw.backend.udp.port import DrainingPort
from flannel_tw.backend.udp.receive import READ_BUFFER, UdpReceiver
from flannel_tw.backend.udp.routes import DEFAULT_PORT, RouteTable
from flannel_tw.backend.udp.send import Sender
from flannel_tw.backend.udp.tun_io import TunReader, TunWriter

__all__ = ["UdpBackend", "UdpBackendError", "backend_port", "DROP_REASONS", "DEFAULT_PORT",
           "lease_backend_v6_data", "peer_carries_ipv6"]

TUN_NAME = "flannel%d"
ENCAP_OVERHEAD = 28          # IPv4 (20) + UDP (8)
SOCKET_BUFFER = 8 * 1024 * 1024
# follow-ups skipped after one that found the TUN empty (see UdpBackend._follow)
FOLLOW_RETRY = 15


class UdpBackendError(Exception):
    """The udp backend cannot be set up; the message says what and where."""


def backend_port(backend: dict) -> int:
    """
    The Port of a udp Backend config object (keys matched as Go's encoding/json does,
    L{flannel_tw.model.config.go_json_fields}; null is an error), default L{DEFAULT_PORT}.

    @raise ValueError: naming Backend.Port, unless it is an integer in 1..65535.
    """
    fields = go_json_fields(list((backend or {}).items()), ("Port",), raw=("Port",))
    if "Port" not in fields:
        return DEFAULT_PORT
    value = fields["Port"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("Backend.Port must be an integer from 1 to 65535, got %r" % (value,))
    if not 1 <= value <= 65535:
        raise ValueError("Backend.Port must be from 1 to 65535, got %d" % (value,))
    return value



@implementer(IBackend, ICountingBackend, IReconfiguringBackend, IRoutesBackend)
class UdpBackend:
    """
    L{IBackend} for the udp type: the TUN, the UDP port, and the two paths between
    them, L{Sender} (C{sender}) and L{UdpReceiver} (C{receiver}, the port's protocol).

    C{counters} (a dict of ints, L{flannel_tw.backend.udp.counters}): C{tun_packets_in/
    tun_bytes_in} read from the tun, C{packets_out/bytes_out} sent to peers,
    C{packets_in/bytes_in} received over UDP, C{tun_packets_out/tun_bytes_out} written
    into the tun, C{icmp_unreachable}, and one counter per drop reason in L{DROP_REASONS}.
    """

    name = "udp"
    log = Logger()

    def __init__(self, reactor, ext_iface, tun_opener=open_tun, netlink=_netlink,
                 filter_sources=True, tun_name=TUN_NAME, offload=None, environ=None):
        """
        @param offload: False never uses the offloaded mode; None (default) uses it
            unless C{FLANNEL_TW_UDP_OFFLOAD=0} is in C{environ} (default os.environ);
            the Backend config's C{Offload} can turn it off too. C{tun_opener} is
            called as C{tun_opener(name, vnet_hdr=True)} for the offloaded mode.
        """
        self._reactor = reactor
        self.ext_iface = ext_iface
        self._tun_opener = tun_opener
        self._netlink = netlink
        self._tun_name = tun_name
        self.mtu = None
        self.port = None
        self.tun = None
        self.routes = RouteTable()
        self.counters = new_counters()
        self.own_subnet = None
        self.own_subnet6 = None      # our IPv6 subnet while the config enables IPv6
        self.ipv6 = False            # the config enables IPv6: we carry it (issue 15)
        self._ipv6_network = None
        self._v6_routes = {}         # a peer's v4 subnet -> the IPv6 subnet routed with it
        self._udp_port = None        # the DrainingPort
        self._reader = None          # the TunReader, while reading
        # the TUN reader and the port skip Twisted's per-wake-up logging context
        self.dispatch = HotDispatch(reactor)
        self._follow_skip = 0        # follow-ups still to skip (UdpBackend._follow)
        if offload is None:
            offload = _off.env_allows_offload(os.environ if environ is None else environ)
        self._offload_allowed = bool(offload)
        self.offload = False         # True once the TUN is open with a vnet header
        self.reassembler = _off.Reassembler(self.counters)
        self.udp_gro = False         # True when the socket coalesces datagrams (UDP_GRO)
        self._writer = TunWriter(None, self.counters, False)
        self.receiver = UdpReceiver(self.routes, self.counters, self._writer,
                                    self.reassembler, filter_sources=filter_sources)
        self.sender = Sender(self.routes, self.counters, self._writer, None, False, None)

    @property
    def filter_sources(self):
        """Accept a datagram only from a current lease's PublicIP, with an inner
        source in that lease's subnet (the receive path's source filter)."""
        return self.receiver.filter_sources

    @filter_sources.setter
    def filter_sources(self, value):
        self.receiver.filter_sources = value

    @property
    def udp_gso(self):
        """False once the kernel refused UDP_SEGMENT (then one sendto per packet)."""
        return self.sender.udp_gso

    # -- IBackend ----------------------------------------------------------------

    def prepare(self, config):
        return defer.maybeDeferred(self._prepare, config)

    def _prepare(self, config):
        port = backend_port(config.backend)
        self.ipv6 = bool(config.enable_ipv6 and config.ipv6_network is not None)
        self._ipv6_network = IPv6Network(config.ipv6_network) if self.ipv6 else None
        want_offload = _off.offload_option(config.backend) and self._offload_allowed
        self.port = port
        self.routes = RouteTable(port)
        self._v6_routes = {}
        self.mtu = self.ext_iface.mtu - ENCAP_OVERHEAD
        tun = None
        if want_offload:
            try:
                tun = self._tun_opener(self._tun_name, vnet_hdr=True)
            except TunError as e:
                self.log.warn("udp backend: no TUN offloads ({e}); plain mode only", e=e)
        if tun is None:
            tun = self._tun_opener(self._tun_name)
        self.offload = bool(tun.vnet_hdr)
        addr = str(self.ext_iface.addr)
        writer = TunWriter(None, self.counters, self.offload)
        receiver = UdpReceiver(self.routes, self.counters, writer, self.reassembler,
                               self.offload, self.mtu, self.receiver.filter_sources)
        udp_port = DrainingPort(port, receiver, interface=addr, maxPacketSize=READ_BUFFER,
                                reactor=self._reactor)
        try:
            udp_port.startListening()
        except CannotListenError as e:
            tun.close()
            raise UdpBackendError("udp backend: cannot listen on UDP %s:%d: %s"
                                  % (addr, port, e.socketError)) from e
        except BaseException:
            tun.close()
            raise
        self.tun = writer.tun = tun
        self._writer = writer
        self.receiver = receiver
        self._udp_port = udp_port
        udp_port.follow = self._follow
        udp_port.clock = self._reactor.seconds
        sock = udp_port.getHandle()
        self._tune_socket(sock, udp_port)
        self.sender = Sender(self.routes, self.counters, writer, sock, self.offload, self.mtu,
                             clock=self._reactor.seconds)
        self.log.info("udp backend: TUN {tun}, UDP {addr}:{port}, MTU {mtu}, offload {offload}",
                      tun=tun.name, addr=addr, port=port, mtu=self.mtu,
                      offload="on" if self.offload else "off")
        return LeaseAttrs(public_ip=self.ext_iface.public_ip,
                          backend_data=_off.lease_backend_data(self.offload),
                          backend_v6_data=lease_backend_v6_data(self.ipv6))

    def _tune_socket(self, sock, udp_port):
        """Big socket buffers (best effort: absorb bursts between reactor wake-ups) and
        UDP GRO (a run of datagrams from one peer in one read)."""
        for force, opt in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # *BUFFORCE (root)
            except OSError:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
                except OSError:
                    pass
        try:
            udp_port.enable_gro()
            self.udp_gro = True
        except OSError as e:
            self.log.info("udp backend: no UDP GRO ({e}); one read per datagram", e=e)

    def start(self, config, lease):
        if self.tun is None:
            return defer.fail(UdpBackendError("udp backend: start() before prepare()"))
        self._set_own_subnet(lease.subnet, lease.ipv6_subnet)
        network_address = self.own_subnet.network_address
        address = IPv4Interface("%s/32" % (network_address,))
        d = threads.deferToThread(self._netlink.configure_tun, self.tun.name, address,
                                  self.mtu, IPv4Network(config.network), **self._tun_v6())

        def configured(_):
            if self.tun is None:      # stopped meanwhile
                return None
            self._reader = TunReader(self._reactor, self.tun, self.sender.drain,
                                     self._tun_lost)
            self._reader.startReading()
            if self._udp_port is not None:
                # the lone-packet path (issue 16) as the two descriptors' doRead
                self._reader.doRead, self._udp_port.doRead = lone_readers(
                    self.sender, self.receiver, self._writer, self._udp_port, self._reader)
            self.dispatch.add(self._reader)
            if self._udp_port is not None:
                self.dispatch.add(self._udp_port)
            if self.own_subnet6 is not None:
                v6 = self._tun_v6()
                self.log.info("udp backend: {tun} has {address} and {address6}, routes "
                              "{network} and {network6}; forwarding IPv4 and IPv6",
                              tun=self.tun.name, address=address, network=config.network,
                              address6=v6["address6"], network6=v6["route6"])
                return None
            self.log.info("udp backend: {tun} has {address}, route {network}; forwarding",
                          tun=self.tun.name, address=address, network=config.network)
            return None

        return d.addCallback(configured)

    def reconfigure(self, config, lease):
        """
        Our lease moved to another subnet (it was lost and re-acquired): give the tun
        the new .0 address. The reader and the socket stay as they are.

        @return: Deferred firing when the kernel has the new address.
        """
        if self.tun is None:
            return defer.fail(UdpBackendError("udp backend: reconfigure() before prepare()"))
        self._set_own_subnet(lease.subnet, lease.ipv6_subnet)
        address = IPv4Interface("%s/32" % (self.own_subnet.network_address,))
        return threads.deferToThread(self._netlink.configure_tun, self.tun.name, address,
                                     self.mtu, IPv4Network(config.network), **self._tun_v6())

    def _tun_v6(self):
        """configure_tun's IPv6 arguments: C{<v6 subnet addr>/128} and the route for the
        IPv6Network while we carry IPv6, else nothing."""
        if self.own_subnet6 is None:
            return {}
        return {"address6": IPv6Interface("%s/128" % (self.own_subnet6.network_address,)),
                "route6": self._ipv6_network}

    def _set_own_subnet(self, subnet, subnet6=None):
        """Our lease's subnets: never routed to, the only destinations delivered. The
        IPv6 one only while the config enables IPv6 (else IPv6 is not carried)."""
        self.own_subnet = IPv4Network(subnet)
        self.routes.remove(self.own_subnet)
        network = int(self.own_subnet.network_address)
        self.sender.tun_ip = network
        self.receiver.set_own_subnet(network, int(self.own_subnet.netmask))
        if not self.ipv6 or subnet6 is None:
            if self.ipv6:
                self.log.warn("udp backend: IPv6 is enabled but our lease {subnet} has no "
                              "IPv6 subnet: IPv4 only", subnet=self.own_subnet)
            self.own_subnet6 = None
            self.sender.tun_ip6 = None
            self.receiver.set_own_subnet6(None, 0)
            return
        self.own_subnet6 = IPv6Network(subnet6)
        self.routes.remove6(self.own_subnet6)
        network6 = int(self.own_subnet6.network_address)
        self.sender.tun_ip6 = network6
        self.receiver.set_own_subnet6(network6, int(self.own_subnet6.netmask))

    def handle_events(self, events):
        for event in events:
            try:
                lease = event.lease
                subnet = lease.subnet
                if subnet == self.own_subnet:
                    continue
                if event.kind == ADDED:
                    offload = self.offload and _off.peer_offload(lease.attrs)
                    self.routes.set(subnet, lease.attrs.public_ip, offload)
                    self._set_v6_route(lease, offload)
                elif event.kind == REMOVED:
                    self.routes.remove(subnet)
                    old6 = self._v6_routes.pop(subnet, None)
                    if old6 is not None:
                        self.routes.remove6(old6)
                    if not self.routes.is_peer(str(lease.attrs.public_ip)):
                        self.reassembler.forget(str(lease.attrs.public_ip))
            except Exception:
                self.log.failure("udp backend: bad lease event {event!r}", event=event)

    def _set_v6_route(self, lease, offload):
        """The lease's IPv6 subnet routed to its IPv4 PublicIP if it may be
        (L{flannel_tw.backend.udp.ipv6.v6_route}); any other v6 subnet routed with this
        v4 subnet before is dropped."""
        subnet6 = v6_route(lease, self.ipv6, self.own_subnet6)
        old6 = self._v6_routes.pop(lease.subnet, None)
        if old6 is not None and old6 != subnet6:
            self.routes.remove6(old6)
        if subnet6 is not None:
            self.routes.set6(subnet6, lease.attrs.public_ip, offload)
            self._v6_routes[lease.subnet] = subnet6

    def stop(self):
        if self._reader is not None:
            self.dispatch.remove(self._reader)
            self._reader.stopReading()
            self._reader = None
        d = defer.succeed(None)
        if self._udp_port is not None:
            self.dispatch.remove(self._udp_port)
            d = defer.maybeDeferred(self._udp_port.stopListening)
            self._udp_port = None
        if self.tun is not None:
            self.tun.close()
            self.tun = self._writer.tun = None
        return d

    def _follow(self):
        """The receive path wrote a lone packet into the TUN: drain the TUN now, in the
        same wake-up (its reply is often queued already), rather than after an empty
        socket read, epoll_wait and the reactor's dispatch (issue 16). Only while the
        send path is quiet too (its last wake-up read a single packet): a TUN that
        carries runs (a TCP stream whose ACKs arrive one by one) is left to its reader,
        which takes the whole queue in GSO runs.

        A follow-up that finds the TUN empty (this host sends requests and its replies
        go to a local process, not back out) costs a read before the process sleeps,
        while the process woken by our write waits for this CPU: the next
        FOLLOW_RETRY follow-ups are then skipped, and one is tried again after them."""
        reader = self._reader
        if reader is None or not reader.reading or not self.sender.lone:
            return
        if self._follow_skip:
            self._follow_skip -= 1
            return
        try:
            reader.doRead()
        except Exception:
            count_error(self.counters, self.log, "udp backend: error draining the tun")
            return
        if not self.sender.got:
            self._follow_skip = FOLLOW_RETRY

    def _tun_lost(self, reader, reason):
        """The TUN reader stopped for good (a failed read, or the reactor dropped it)."""
        self.dispatch.remove(reader)
        if self._reader is reader:
            self._reader = None
