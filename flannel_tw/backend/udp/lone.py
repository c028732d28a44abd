# -*- test-case-name: tests.unit.test_udp_lone, tests.unit.test_udp_backend -*-
"""
The udp backend's lone-packet path (issue 16), flat: the TUN reader's and the UDP
port's C{doRead} while forwarding.

A lone packet after a quiet spell (the last wake-up read a single packet and ended at
least C{lone_gap} ago, on the backend's clock) is the one case where latency, not
throughput, is the cost: a ping, a request, its reply. On a VM each such wake-up finds
the CPU's caches cold, and every Python frame and object it touches costs more than
the work itself: the layered path (reader, drain, prepare, route, check, send, ...)
took about 0.13 ms more per round trip in the lab than the same forwarding done in one
function. So here, in one function per direction, the common packet is read, checked,
routed, its TTL decremented and sent with one read and one send (from the TUN) or one
recvmsg and one write (from the socket), as flanneld's proxy does:

- from the TUN: an IPv4 packet without options whose total length is what was read,
  TTL above 1, a route to a peer, and in offloaded mode an empty vnet header (no
  checksum to finish, no segmentation);
- from the socket: a lone datagram (no GRO run, not truncated) holding such a packet,
  from a current peer's PublicIP (when sources are filtered) with a source in that
  peer's subnets, for our subnet and not from it.

Every other packet takes the layered path for that packet (L{Sender._send_lone},
L{UdpReceiver.runReceived}), which checks it again and drops, answers or delivers it
with its counters: the flat path decides nothing the layered path would decide
differently (tests.unit.test_udp_lone checks the same bytes and counters for random
packets both ways). A wake-up that is not a lone one takes the class's C{doRead}
(reads until EAGAIN, GSO/GRO runs). After a datagram is written, the follow-up reads
the TUN in the same wake-up (the reply is often queued already; see
L{UdpBackend._follow}).
"""
import errno
import socket

from flannel_tw.backend.udp.packet import decrement_ttl
from flannel_tw.backend.udp.port import _AGAIN, _GRO_CMSG, DrainingPort
from flannel_tw.backend.udp.receive import READ_BUFFER, VNET
from flannel_tw.backend.udp.tun_io import TunReader

_ZERO_VNET = bytes(VNET)


def lone_readers(sender, receiver, writer, port, reader):
    """
    The flat C{doRead}s: C{(tun_ready, udp_ready)} for C{reader} (the TUN's
    L{TunReader}, draining into C{sender}) and C{port} (the L{DrainingPort} feeding
    C{receiver}, which writes through C{writer}), on the clocks the sender and the port
    have (C{sender._clock}, C{port.clock}: the backend's). After a lone datagram was
    written, the port's C{follow} is called, as on the layered path.
    """
    counters = sender.counters
    routes = sender.routes              # the backend's one table (the receiver's too)
    hdr = VNET if sender.offload else 0
    sbuf = sender._buf
    sview = sender._view
    read_into = sview[:hdr + READ_BUFFER + 1]
    prepare = sender._prepare_vnet if hdr else sender._prepare_plain
    rbuf = receiver._rbuf
    rview = receiver._rview
    into = [receiver.receiveBuffer()]
    start = 0 if hdr else VNET          # where the TUN write begins in rbuf
    ip = hdr                            # where the packet begins in sbuf

    def tun_ready():
        clock = sender._clock
        if not sender.lone or clock is None or clock() - sender._last < sender.lone_gap:
            return TunReader.doRead(reader)
        sender.got = 0
        try:
            n = reader.tun.readinto(read_into)
        except (BlockingIOError, InterruptedError):
            sender._last = clock()
            return None
        except OSError as e:
            if e.errno == errno.EAGAIN:
                sender._last = clock()
                return None
            return TunReader.doRead(reader)       # reads again: reports and stops
        sender.got = 1
        plen = n - hdr
        counters["tun_packets_in"] += 1
        counters["tun_bytes_in"] += plen
        entry = None
        if (plen >= 20 and sbuf[ip] == 0x45 and (sbuf[ip + 2] << 8 | sbuf[ip + 3]) == plen
                and sbuf[ip + 8] > 1 and (not hdr or not (sbuf[0] or sbuf[1]))):
            entry = routes.lookup_entry(sbuf[ip + 16] << 24 | sbuf[ip + 17] << 16
                                        | sbuf[ip + 18] << 8 | sbuf[ip + 19])
        if entry is None:
            sender._send_lone(prepare, n, hdr)    # anything else: the layered path
        else:
            pkt = sview[ip:n]
            decrement_ttl(pkt)                   # TTL > 1: checked above
            try:
                sender._sendto(pkt, entry[1])
            except OSError as e:
                counters["send-error"] += 1
                sender.log.debug("udp backend: send to {peer} failed: {e}", peer=entry[1], e=e)
            else:
                counters["packets_out"] += 1
                counters["bytes_out"] += plen
        sender._last = clock()
        return None

    def udp_ready():
        clock = port.clock
        if not port._lone or clock is None or clock() - port._last < port.lone_gap:
            return DrainingPort.doRead(port)
        try:
            n, anc, flags, addr = port.socket.recvmsg_into(into, _GRO_CMSG)
        except (BlockingIOError, InterruptedError):
            port._last = clock()
            return None
        except OSError as e:
            if e.errno not in _AGAIN:
                port.log.debug("udp backend: socket error {e}", e=e)
            port._last = clock()
            return None
        if anc or flags & socket.MSG_TRUNC or not _deliver_lone(n, addr):
            port._handle_one(n, anc, flags, addr)     # the layered path, follow-up included
        elif port.follow is not None:
            port.follow()
        port._last = clock()
        return None

    def _deliver_lone(n, addr):
        """The common datagram C{rbuf[VNET:VNET+n]}: written into the TUN (True), or
        False with nothing done or counted."""
        b = VNET
        if not (n >= 20 and rbuf[b] == 0x45 and (rbuf[b + 2] << 8 | rbuf[b + 3]) == n
                and rbuf[b + 8] > 1):
            return False
        src = rbuf[b + 12] << 24 | rbuf[b + 13] << 16 | rbuf[b + 14] << 8 | rbuf[b + 15]
        dst = rbuf[b + 16] << 24 | rbuf[b + 17] << 16 | rbuf[b + 18] << 8 | rbuf[b + 19]
        mask = receiver._own_mask
        own = receiver._own_net
        if dst & mask != own or src & mask == own:
            return False
        if receiver.filter_sources and routes.check_source(addr[0], src) is not None:
            return False
        counters["packets_in"] += 1
        counters["bytes_in"] += n
        decrement_ttl(rview[b:b + n])         # TTL > 1: checked above
        if hdr:
            rbuf[0:VNET] = _ZERO_VNET
        writer.write(rview[start:b + n])
        return True

    return tun_ready, udp_ready
