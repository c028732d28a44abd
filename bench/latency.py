"""
Per-hop latency profile of the udp backend for a lone packet (issue 16), in-process.

    python3 -m bench.latency [--samples 2000] [--wakeup]

(--wakeup adds bench/latency_wakeup.py: the same hops seen from another process, with
a real TUN and the kernel's echo, wake-ups included; it needs root.)

Drives the backend's real send path (L{flannel_tw.backend.udp.send.Sender} behind a
L{flannel_tw.backend.udp.tun_io.TunReader}) and receive path (a
L{flannel_tw.backend.udp.port.DrainingPort} with a
L{flannel_tw.backend.udp.receive.UdpReceiver}) under Twisted's epoll reactor, on loopback
UDP sockets and a L{flannel_tw.testing.faketun.FakeTun} (a SEQPACKET socketpair standing
for flannel0: the same syscalls, minus the TUN driver's own work), one packet at a time
(an 84-byte ICMP echo, as ping sends), in plain and in offloaded mode.

The data path carries no instrumentation: the profile wraps the objects' attributes
(the TUN's readinto/write, the socket's recvmsg_into, the sender's sendto/sendmsg, the
route, prepare, send and deliver steps) with timing shims, so nothing is timed when
the profile is not running. Each step is the median over the samples, in microseconds:

  - dispatch: from the packet being queued (the fake TUN written / the sendto to our
    port returning) to the reader's doRead being entered: the reactor's loop, epoll,
    its per-reader logging context; not the kernel's wake-up of an idle CPU;
  - read: the read that brought the packet; read EAGAIN: reads that found nothing,
    before the packet left (they delay it) and after (they only cost CPU);
  - parse+route (send) / checks (receive): IPv4 checks, route lookup or source filter,
    TTL; vnet: the offloaded mode's header work;
  - send setup: the run/GSO bookkeeping and counters around the send syscall;
  - send / write: the sendto or sendmsg syscall, the TUN write syscall;
  - rest: everything else between doRead and the packet leaving (the loop, counters,
    and the timing shims' own cost: "shims" says how many ran, the footnote their cost);
  - readable->out: from queued to the send (write) returning: the hop's latency in
    this process. counters: 4 counter updates, timed apart (part of "rest").

Why this module is longer than 400 lines: the timing shims, the two paths' drivers
(plain and offloaded, send and receive) and the table are one measurement; none of it
is daemon code.
"""
import argparse
import itertools
import socket
import statistics
import struct
import sys
import time
from ipaddress import IPv4Network

from flannel_tw.backend.udp.packet import internet_checksum

PEER_NET = IPv4Network("10.5.2.0/24")
OWN_NET = IPv4Network("10.5.1.0/24")
_ns = time.perf_counter_ns


def ping_packet(src, dst):
    """An 84-byte IPv4 ICMP echo request from C{src} to C{dst} (dotted strings)."""
    payload = bytes(range(56))
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + payload
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0x4000, 64, 1, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
    return hdr + icmp


class Trace:
    """Timing shims: C{wrap(obj, name, label)} replaces C{obj.name} by a callable that
    records C{(label, start, end, raised)}; C{mark(label)} records an instant."""

    def __init__(self):
        self.events = []
        self._depth = {}

    def wrap(self, obj, name, label):
        """Time C{obj.name} as C{label}; a call inside another C{label} call (e.g. one
        send step calling another) is left to the outer one."""
        inner = getattr(obj, name)
        events = self.events
        depth = self._depth

        def shim(*a, **kw):
            if depth.get(label):
                return inner(*a, **kw)
            depth[label] = 1
            t0 = _ns()
            try:
                r = inner(*a, **kw)
            except BaseException:
                events.append((label, t0, _ns(), True))
                raise
            finally:
                depth[label] = 0
            events.append((label, t0, _ns(), False))
            return r
        setattr(obj, name, shim)

    def mark(self, label):
        t = _ns()
        self.events.append((label, t, t, False))

    def take(self):
        ev = list(self.events)
        del self.events[:]
        return ev


class _SockProxy:
    """The port's socket with recvmsg_into replaceable (socket objects take no attrs)."""

    def __init__(self, sock):
        self._sock = sock
        self.recvmsg_into = sock.recvmsg_into

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _dur(ev, label, raised=None, before=None, after=None):
    """Time spent in the C{label} steps that started before C{before} (up to it) or
    started after C{after}."""
    return sum(min(e, before or e) - s for (lb, s, e, r) in ev
               if lb == label and (raised is None or r == raised)
               and (before is None or s < before) and (after is None or s >= after))


def _shims(ev, before):
    """How many timing shims ran before C{before} (their own cost is in "rest")."""
    return sum(1 for (lb, s, e, r) in ev if s < before and lb != "queued")


def split_send(ev):
    """One send-path sample's events -> {step: ns}."""
    t_in = next(s for (lb, s, e, r) in ev if lb == "queued")
    t_do = next(s for (lb, s, e, r) in ev if lb == "doRead")
    t_end = next(e for (lb, s, e, r) in ev if lb == "doRead")
    out_end = [e for (lb, s, e, r) in ev if lb == "syscall-send"]
    if not out_end:
        return None
    t_out = out_end[0]
    d = {"dispatch": t_do - t_in,
         "read": _dur(ev, "readinto", raised=False, before=t_out),
         "read EAGAIN before": _dur(ev, "readinto", raised=True, before=t_out),
         "parse+route": _dur(ev, "route", before=t_out),
         "vnet": _dur(ev, "prepare", before=t_out) - _dur(ev, "route", before=t_out),
         "send syscall": _dur(ev, "syscall-send", before=t_out)}
    d["send setup"] = _dur(ev, "send-step", before=t_out) - d["send syscall"]
    known = sum(d[k] for k in ("read", "read EAGAIN before", "parse+route", "vnet",
                               "send setup", "send syscall"))
    d["rest"] = (t_out - t_do) - known
    d["shims (count)"] = _shims(ev, t_out) * 1000
    d["readable->out"] = t_out - t_in
    d["after: read EAGAIN"] = _dur(ev, "readinto", raised=True, after=t_out)
    d["after: total"] = t_end - t_out
    return d


def split_recv(ev):
    """One receive-path sample's events -> {step: ns}."""
    t_in = next(s for (lb, s, e, r) in ev if lb == "queued")
    t_do = next(s for (lb, s, e, r) in ev if lb == "doRead")
    t_end = next(e for (lb, s, e, r) in ev if lb == "doRead")
    out_end = [e for (lb, s, e, r) in ev if lb == "syscall-write"]
    if not out_end:
        return None
    t_out = out_end[0]
    d = {"dispatch": t_do - t_in,
         "read": _dur(ev, "recvmsg", raised=False, before=t_out),
         "read EAGAIN before": _dur(ev, "recvmsg", raised=True, before=t_out),
         "write syscall": _dur(ev, "syscall-write", before=t_out)}
    d["checks"] = _dur(ev, "deliver", before=t_out) - _dur(ev, "write-step", before=t_out)
    d["write setup"] = _dur(ev, "write-step", before=t_out) - d["write syscall"]
    known = sum(d[k] for k in ("read", "read EAGAIN before", "checks", "write setup",
                               "write syscall"))
    d["rest"] = (t_out - t_do) - known
    d["shims (count)"] = _shims(ev, t_out) * 1000
    d["readable->out"] = t_out - t_in
    d["after: read EAGAIN"] = _dur(ev, "recvmsg", raised=True, after=t_out)
    d["after: total"] = t_end - t_out
    return d


SHIM_NS = [0.0]
HOT_DISPATCH = True     # register the reader and the port as the backend does


def shim_cost(n=100000):
    """ns one timing shim adds around a call (subtracted from "rest")."""
    tr = Trace()

    class O:
        def f(self):
            return None
    o = O()
    plain = o.f
    tr.wrap(o, "f", "x")
    wrapped = o.f
    t0 = _ns()
    for _ in range(n):
        plain()
    t1 = _ns()
    for _ in range(n):
        wrapped()
        if len(tr.events) > 1000:
            del tr.events[:]
    t2 = _ns()
    return max(0.0, ((t2 - t1) - (t1 - t0)) / n)


def logger_cost(n=100000):
    """ns Twisted's reactor adds per dispatch with log.callWithLogger (part of dispatch)."""
    from twisted.python import log

    class S:
        def logPrefix(self):
            return "udp-backend-tun"

        def doRead(self):
            return None
    s = S()
    t0 = _ns()
    for _ in range(n):
        s.doRead()
    t1 = _ns()
    for _ in range(n):
        log.callWithLogger(s, s.doRead)
    t2 = _ns()
    return max(0.0, ((t2 - t1) - (t1 - t0)) / n)


def counters_cost(n=200000):
    """ns for the 4 counter updates a lone packet makes on each path."""
    from flannel_tw.backend.udp.counters import new_counters
    c = new_counters()
    t0 = _ns()
    for _ in range(n):
        c["packets_out"] += 1
        c["bytes_out"] += 84
        c["tun_packets_in"] += 1
        c["tun_bytes_in"] += 84
    t1 = _ns()
    for _ in range(n):
        pass
    return max(0, (t1 - t0) - (_ns() - t1)) / n


def _quiet_clock():
    """A clock on which every call is a second after the last one."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


def profile(reactor, offload, samples):
    """Run C{samples} lone packets through each path; returns (send rows, recv rows)."""
    from flannel_tw.backend.udp.counters import new_counters
    from flannel_tw.backend.udp.port import DrainingPort
    from flannel_tw.backend.udp.receive import UdpReceiver
    from flannel_tw.backend.udp.offload import Reassembler
    from flannel_tw.backend.udp.routes import RouteTable
    from flannel_tw.backend.udp.send import Sender
    from flannel_tw.backend.udp.tun_io import TunReader, TunWriter
    from flannel_tw.testing.faketun import FakeTun
    from twisted.internet import defer

    trace = Trace()
    hdr = bytes(10) if offload else b""
    mtu = 1472

    # -- send path: fake TUN -> Sender -> UDP to a sink ---------------------------
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind(("127.0.0.1", 0))
    out.setblocking(False)
    routes = RouteTable(sink.getsockname()[1])
    routes.set(PEER_NET, "127.0.0.1", offload)
    counters = new_counters()
    tun = FakeTun(vnet_hdr=offload)
    writer = TunWriter(tun, counters, offload)
    # every wake-up comes after a quiet spell, as a lone packet's does (the backend
    # gives the reactor's clock: a wake-up at least lone_gap after the last one)
    sender = Sender(routes, counters, writer, out, offload, mtu, clock=_quiet_clock())
    sender.tun_ip = int(OWN_NET.network_address)
    trace.wrap(tun, "readinto", "readinto")
    trace.wrap(sender, "_sendto", "syscall-send")
    trace.wrap(sender, "_sendmsg", "syscall-send")
    for name in ("_send_run", "_send"):     # the send steps around the syscall
        trace.wrap(sender, name, "send-step")
    trace.wrap(sender, "_route_packet", "route")
    trace.wrap(sender, "_prepare_vnet" if offload else "_prepare_plain", "prepare")
    reader = TunReader(reactor, tun, sender.drain)
    trace.wrap(reader, "_drain", "doRead")
    send_pkt = hdr + ping_packet("10.5.1.2", "10.5.2.2")

    # -- receive path: UDP -> DrainingPort/UdpReceiver -> fake TUN ----------------
    rcounters = new_counters()
    rtun = FakeTun(vnet_hdr=offload)
    rwriter = TunWriter(rtun, rcounters, offload)
    rroutes = RouteTable(0)
    rroutes.set(PEER_NET, "127.0.0.1", offload)
    receiver = UdpReceiver(rroutes, rcounters, rwriter, Reassembler(rcounters), offload, mtu)
    receiver.set_own_subnet(int(OWN_NET.network_address), int(OWN_NET.netmask))
    port = DrainingPort(0, receiver, interface="127.0.0.1", reactor=reactor)
    port.clock = _quiet_clock()
    port.startListening()
    try:
        port.enable_gro()
    except OSError:
        pass
    port.socket = _SockProxy(port.socket)
    trace.wrap(port.socket, "recvmsg_into", "recvmsg")
    trace.wrap(receiver, "_deliver", "deliver")
    trace.wrap(rwriter, "write", "write-step")
    trace.wrap(rtun, "write", "syscall-write")
    port_doread = port.doRead

    def doread():
        t0 = _ns()
        try:
            return port_doread()
        finally:
            trace.events.append(("doRead", t0, _ns(), False))
    port.doRead = doread
    feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    feeder.bind(("127.0.0.1", 0))
    dest = port.getHost()
    recv_pkt = ping_packet("10.5.2.2", "10.5.1.2")

    send_rows, recv_rows = [], []
    done = defer.Deferred()

    def step(i):
        # the previous sample's events, once the reactor has been round
        ev = trace.take()
        if i > 0:
            kind = send_rows if (i - 1) % 2 == 0 else recv_rows
            row = (split_send if kind is send_rows else split_recv)(ev)
            if row is not None:
                kind.append(row)
            try:
                while True:
                    sink.recv(65536)
            except BlockingIOError:
                pass
            rtun.written()
        if i >= 2 * samples:
            done.callback(None)
            return
        reactor.callLater(0.0002, step, i + 1)
        if i % 2 == 0:
            trace.mark("queued")
            tun.peer.inject(send_pkt)
        else:
            feeder.sendto(recv_pkt, (dest.host, dest.port))
            trace.mark("queued")

    reader.startReading()
    hot = None
    if HOT_DISPATCH:
        from flannel_tw.backend.udp.dispatch import HotDispatch
        hot = HotDispatch(reactor)      # as the backend does while forwarding
        hot.add(reader)
        hot.add(port)
    reactor.callLater(0, step, 0)

    def cleanup(_):
        if hot is not None:
            hot.remove(reader)
            hot.remove(port)
        reader.stopReading()
        port.stopListening()
        for s in (sink, out, feeder):
            s.close()
        tun.close()
        rtun.close()
        return send_rows, recv_rows
    return done.addBoth(cleanup)


SEND_STEPS = ("dispatch", "read", "read EAGAIN before", "parse+route", "vnet",
              "send setup", "send syscall", "rest", "shims (count)", "readable->out",
              "after: read EAGAIN", "after: total")
RECV_STEPS = ("dispatch", "read", "read EAGAIN before", "checks", "write setup",
              "write syscall", "rest", "shims (count)", "readable->out", "after: read EAGAIN", "after: total")


def summarize(rows, steps):
    """{step: (median us, p90 us)} over the samples."""
    out = {}
    for s in steps:
        v = sorted(r[s] for r in rows)
        if not v:
            continue
        out[s] = (statistics.median(v) / 1000.0, v[int(len(v) * 0.9)] / 1000.0)
    return out


def format_table(results, counters_ns, logger_ns=0.0, shim_ns=0.0):
    """results: {(mode, path): {step: (median, p90)}} -> the printed table."""
    lines = ["udp backend, lone packet, per-hop steps in us (median / p90):"]
    cols = [("plain", "send"), ("offload", "send"), ("plain", "recv"), ("offload", "recv")]
    heads = ["%s %s" % (m, "TUN->UDP" if p == "send" else "UDP->TUN") for m, p in cols]
    steps = []
    for s in SEND_STEPS + RECV_STEPS:
        if s not in steps:
            steps.append(s)
    w = max(len(s) for s in steps) + 2
    lines.append("".ljust(w) + "".join(h.rjust(20) for h in heads))
    for s in steps:
        cells = []
        for c in cols:
            v = results.get(c, {}).get(s)
            cells.append(("%.1f / %.1f" % v if v else "-").rjust(20))
        lines.append(s.ljust(w) + "".join(cells))
    lines.append("counters: 4 updates ~%.2f us a packet (inside \"rest\"); the reactor's "
                 "log.callWithLogger per dispatch ~%.2f us (inside \"dispatch\"); "
                 "\"rest\" includes the timing shims (\"shims\": how many, ~%.2f us each)"
                 % (counters_ns / 1000, logger_ns / 1000, shim_ns / 1000))
    return "\n".join(lines)


def report(samples=2000):
    """Run the profile; returns the printed table."""
    SHIM_NS[0] = shim_cost()
    results = run(samples)
    return format_table(results, counters_cost(), logger_cost(), SHIM_NS[0])


def run(samples=2000):
    """Profile both modes under the epoll reactor; returns the results dict."""
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import defer, reactor

    results = {}

    @defer.inlineCallbacks
    def go():
        try:
            for mode, offload in (("plain", False), ("offload", True)):
                s, r = yield profile(reactor, offload, samples)
                results[(mode, "send")] = summarize(s, SEND_STEPS)
                results[(mode, "recv")] = summarize(r, RECV_STEPS)
        finally:
            reactor.stop()
    reactor.callWhenRunning(go)
    reactor.run()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m bench.latency",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=2000, help="packets per path and mode")
    p.add_argument("--wakeup", action="store_true",
                   help="also the profile seen from another process, wake-ups included "
                        "(bench/latency_wakeup.py: root, a network namespace of its own)")
    args = p.parse_args(argv)
    print(report(args.samples))
    if args.wakeup:
        import subprocess
        sys.stdout.flush()
        r = subprocess.run([sys.executable, "-m", "bench.latency_wakeup", "--samples",
                            str(min(args.samples, 1000))], capture_output=True, text=True,
                           timeout=600)
        print(r.stdout.rstrip() if r.returncode == 0
              else "wake-up profile: failed (exit %d): %s" % (r.returncode, r.stderr[-400:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
