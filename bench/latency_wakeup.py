"""
Per-hop latency of the udp backend seen from ANOTHER process, wake-ups included
(issue 16): the part of bench/latency.py that needs root.

    python3 -m bench.latency --wakeup [--samples 1000]    (root)

The process moves into a network namespace of its own (unshare), brings up lo and runs
a real L{flannel_tw.backend.udp.backend.UdpBackend} there under Twisted's epoll reactor:
a real TUN (flannel0, 10.5.1.0/32, route 10.5.0.0/16), its UDP port on 127.0.0.1:8285,
and one peer lease, 10.5.2.0/24 at 127.0.0.2 (offloading in the offloaded mode). A
child process ("the peer", on 127.0.0.2:8285) measures, one packet at a time with an
idle pause between packets (so the backend's CPU goes idle and has to be woken, as in
a ping), with C{time.perf_counter_ns} in the child only (the backend carries no timing
code):

  - host2 share (UDP->TUN->kernel echo->TUN->UDP): the peer sends an ICMP echo request
    for 10.5.1.0 (the TUN's own address: the kernel answers it while the TUN write is
    still in progress) and waits for the reply datagram: both hops of the host a ping
    is answered behind, as one round trip;
  - TUN->UDP hop: the peer sends an echo request to 10.5.2.2 on a raw socket (routed
    into flannel0) and waits for it on its UDP socket;
  - UDP->TUN hop: the peer answers that request with a datagram and waits for the
    reply on its raw socket;
  - floor: the same kinds of wait with no backend in between (a raw echo to 127.0.0.1
    and a UDP datagram to its own socket): what the kernel and the child's own
    wake-ups cost, to be taken off the figures above.

Median / p90 in microseconds. The child's wake-up is included in every figure (it is
in a real ping too, on the container side).
"""
import ctypes
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

from flannel_tw.backend.udp.packet import internet_checksum

CLONE_NEWNET = 0x40000000
PORT = 8285
OWN = "10.5.1.0"
PEER_POD = "10.5.2.2"
_ns = time.perf_counter_ns


def icmp_echo(kind, ident, seq, payload=bytes(range(56))):
    """An ICMP echo message (8 request, 0 reply) with its checksum."""
    icmp = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    return icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]


def ipv4(src, dst, proto, body, ttl=64):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0x4000, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:] + body


def _stats(v):
    v = sorted(v)
    return (statistics.median(v) / 1000.0, v[int(len(v) * 0.9)] / 1000.0)


# -- the child (the peer) -----------------------------------------------------------

def child(samples, pause, cpu=None):
    """Measure in this process; print the results as one JSON line."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.2", PORT))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    backend = ("127.0.0.1", PORT)
    out = {"host2 share": [], "TUN->UDP hop": [], "UDP->TUN hop": [],
           "floor: raw echo": [], "floor: UDP to self": [],
           "host2 share, odd seq": [], "host2 share, even seq": []}
    ident = os.getpid() & 0xFFFF
    peer.settimeout(1.0)
    raw.settimeout(1.0)

    def raw_reply(seq, src):
        while True:
            data, addr = raw.recvfrom(65535)
            if (addr[0] == src and len(data) >= 28 and data[20] == 0
                    and struct.unpack_from("!HH", data, 24) == (ident, seq)):
                return

    for i in range(samples):
        seq = i & 0xFFFF
        # host2 share: echo request for the TUN's own address, over the wire
        req = ipv4(PEER_POD, OWN, 1, icmp_echo(8, ident, seq))
        time.sleep(pause)
        t0 = _ns()
        peer.sendto(req, backend)
        try:
            peer.recv(65535)
            took = _ns() - t0
            out["host2 share"].append(took)
            out["host2 share, %s seq" % ("odd" if seq & 1 else "even")].append(took)
        except socket.timeout:
            pass
        # a ping from this host to a pod behind the peer: both hops of the sender side
        time.sleep(pause)
        t0 = _ns()
        raw.sendto(icmp_echo(8, ident, seq), (PEER_POD, 0))
        try:
            got = peer.recv(65535)
        except socket.timeout:
            continue
        t1 = _ns()
        out["TUN->UDP hop"].append(t1 - t0)
        reply = ipv4(PEER_POD, OWN, 1, icmp_echo(0, ident, seq, got[28:]))
        time.sleep(pause)
        t2 = _ns()
        peer.sendto(reply, backend)
        try:
            raw_reply(seq, PEER_POD)
            out["UDP->TUN hop"].append(_ns() - t2)
        except socket.timeout:
            pass
        # floors
        time.sleep(pause)
        t0 = _ns()
        raw.sendto(icmp_echo(8, ident, seq), ("127.0.0.1", 0))
        try:
            raw_reply(seq, "127.0.0.1")
            out["floor: raw echo"].append(_ns() - t0)
        except socket.timeout:
            pass
        time.sleep(pause)
        t0 = _ns()
        peer.sendto(b"x", ("127.0.0.2", PORT))
        peer.recv(65535)
        out["floor: UDP to self"].append(_ns() - t0)
    print(json.dumps({k: _stats(v) if v else None for k, v in out.items()}))
    return 0


# -- the parent (the backend) ---------------------------------------------------------

def _enter_netns():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, "unshare(CLONE_NEWNET): " + os.strerror(e))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def run(samples=1000, pause=0.002, ab=None, cpus=None):
    """Both modes; returns {mode: {measure: (median us, p90 us)}}. Needs root.
    C{ab(backend)}, when given, is called once the backend is started (an A/B switch:
    e.g. turn a fast path off to measure without it). C{cpus}: None (anywhere), or
    (backend cpu, peer cpu): the same cpu twice makes each wake-up a context switch,
    without the idle-exit noise, for A/B comparisons of the work itself."""
    _enter_netns()
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    from twisted.internet import epollreactor
    epollreactor.install()
    from ipaddress import IPv4Address, IPv4Network
    from twisted.internet import defer, reactor, threads
    from flannel_tw.backend.udp.backend import UdpBackend
    from flannel_tw.backend.udp import offload as _off
    from flannel_tw.kernel.iface import ExtIface
    from flannel_tw.model.config import NetworkConfig
    from flannel_tw.model.events import ADDED, LeaseEvent as Event
    from flannel_tw.model.lease import Lease, LeaseAttrs

    ext = ExtIface(name="lo", index=1, addr=IPv4Address("127.0.0.1"),
                   public_ip=IPv4Address("127.0.0.1"), mtu=1500)
    config = NetworkConfig(network=IPv4Network("10.5.0.0/16"), subnet_len=24,
                           subnet_min=IPv4Address("10.5.1.0"),
                           subnet_max=IPv4Address("10.5.255.0"), backend_type="udp",
                           backend={"Type": "udp"})
    results = {}

    @defer.inlineCallbacks
    def one(mode, offload):
        b = UdpBackend(reactor, ext, offload=offload, environ={})
        attrs = yield b.prepare(config)
        try:
            yield b.start(config, Lease(IPv4Network("10.5.1.0/24"), attrs))
            peer = LeaseAttrs(public_ip=IPv4Address("127.0.0.2"),
                              backend_data=_off.lease_backend_data(offload))
            b.handle_events([Event(ADDED, Lease(IPv4Network("10.5.2.0/24"), peer))])
            if ab is not None:
                ab(b)
            p = yield threads.deferToThread(
                subprocess.run, [sys.executable, "-m", "bench.latency_wakeup", "--child",
                                 str(samples), str(pause)]
                + ([str(cpus[1])] if cpus is not None else []),
                capture_output=True, text=True, timeout=600)
            if p.returncode:
                raise RuntimeError("child failed: " + p.stderr[-400:])
            results[mode] = json.loads(p.stdout.strip().splitlines()[-1])
            results[mode]["offload"] = b.offload
        finally:
            yield b.stop()

    @defer.inlineCallbacks
    def go():
        try:
            for mode, offload in (("plain", False), ("offload", True)):
                yield one(mode, offload)
        except Exception as e:
            results["error"] = repr(e)
        finally:
            reactor.stop()
    reactor.callWhenRunning(go)
    reactor.run()
    return results


MEASURES = ("host2 share", "TUN->UDP hop", "UDP->TUN hop", "floor: raw echo",
            "floor: UDP to self", "host2 share, odd seq", "host2 share, even seq")


def format_table(results):
    if "error" in results:
        return "udp backend, wake-up profile: failed: %s" % results["error"]
    lines = ["udp backend, lone packet seen from another process (wake-ups included), "
             "us (median / p90):",
             "".ljust(22) + "plain".rjust(18) + "offload".rjust(18)]
    for m in MEASURES:
        cells = []
        for mode in ("plain", "offload"):
            v = results.get(mode, {}).get(m)
            cells.append(("%.1f / %.1f" % tuple(v) if v else "-").rjust(18))
        lines.append(m.ljust(22) + "".join(cells))
    lines.append("host2 share = UDP->TUN, the kernel's echo, TUN->UDP in one round trip; "
                 "floors: the same waits with no backend in between")
    return "\n".join(lines)


def _alternate_follow(b):
    """The follow-up drain only for echo requests with an odd sequence number: the
    table's odd/even host2 rows are then an A/B of it, interleaved in one run."""
    real = b._udp_port.follow
    at = b.receiver.receiveBuffer()

    def follow():
        if at[0] >> 4 == 4 and at[20] == 8 and at[27] & 1:
            real()
    b._udp_port.follow = follow


def _alternate_hot(b):
    """The hot dispatch (L{flannel_tw.backend.udp.dispatch}) on for the packets of the
    echo requests with an odd sequence number, off for even ones: set for the next
    request as each one is answered (the odd/even host2 rows are then an A/B of it)."""
    real = b._udp_port.follow
    at = b.receiver.receiveBuffer()
    readers = (b._reader, b._udp_port)

    def follow():
        real()
        if at[0] >> 4 == 4 and at[20] == 8:
            hot = not at[27] & 1       # the next request's sequence number is odd
            for r in readers:
                (b.dispatch.add if hot else b.dispatch.remove)(r)
    b._udp_port.follow = follow


def _alternate_all(b):
    """Both fast paths (the follow-up drain and the hot dispatch) on for the echo
    requests with an odd sequence number and off for even ones: an interleaved
    before/after of issue 16's changes (the odd/even host2 rows). The state for the next
    request is set as each reply leaves."""
    real_follow = b._udp_port.follow
    at = b.receiver.receiveBuffer()
    readers = (b._reader, b._udp_port)
    sendto = b.sender._sendto

    def follow():
        if at[0] >> 4 == 4 and at[20] == 8 and at[27] & 1:
            real_follow()

    def send(data, peer):
        r = sendto(data, peer)
        if data[0] >> 4 == 4 and len(data) > 27 and data[20] == 0:      # an echo reply
            hot = not data[27] & 1
            for x in readers:
                (b.dispatch.add if hot else b.dispatch.remove)(x)
        return r
    b._udp_port.follow = follow
    b.sender._sendto = send
    for x in readers:
        b.dispatch.remove(x)


AB = {
    # the receive path's follow-up drain of the TUN off
    "no-follow": lambda b: setattr(b._udp_port, "follow", None),
    # ... on for odd sequence numbers only (A/B in one run: see the odd/even rows)
    "alternate-follow": _alternate_follow,
    # the hot dispatch off
    "no-hot": lambda b: [b.dispatch.remove(r) for r in (b._reader, b._udp_port)],
    # ... on for odd sequence numbers only
    "alternate-hot": _alternate_hot,
    # both: odd sequence numbers with, even ones without
    "alternate-all": _alternate_all,
}


def report(samples=1000, ab=None, cpus=None, pause=0.002):
    """The printed table (run in a process of its own: it changes namespace and
    installs the reactor). C{ab}: a name in L{AB}, to measure without a fast path."""
    if os.geteuid() != 0:
        return "udp backend, wake-up profile: skipped (needs root)"
    return format_table(run(samples, pause, ab=AB[ab] if ab else None, cpus=cpus))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(int(argv[1]), float(argv[2]), int(argv[3]) if len(argv) > 3 else None)
    samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 1000
    pause = float(argv[argv.index("--pause") + 1]) if "--pause" in argv else 0.002
    ab = argv[argv.index("--without") + 1] if "--without" in argv else None
    cpus = None
    if "--cpus" in argv:
        cpus = tuple(int(c) for c in argv[argv.index("--cpus") + 1].split(","))
    print(report(samples, ab, cpus, pause))
    return 0


if __name__ == "__main__":
    sys.exit(main())
