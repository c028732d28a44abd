"""The udp overlay on real kernels, end to end: a real etcd in the lab's switch
namespace, one ``twistd flannel`` (udp backend, TUN flannel0, UDP 8285) per
host namespace, and a docker-like container behind each host
(flannel_tw.tools.lab).

Every test builds its own lab (about two seconds each) and tears it down in a
cleanup, so namespaces, devices and processes go away even when a test fails.
All traffic goes only to addresses inside namespaces the test created."""

import hashlib
import json
import os
import shutil
import signal
import time

from twisted.trial import unittest

from flannel_tw.testing.overlay import (
    SETTLE, SKIP, TCP_SINK, TCP_SOURCE, UDP_LISTENER, UDP_SEND, ipv4_udp, make_overlay,
    read_text, say, wait_for)


UDP_PORT = 8285
# Send one UDP datagram (payload argv[4]) with IP_RECVERR on and report the ICMP
# error that comes back, if any: errno, type, code, and the address it came from
# (SO_EE_OFFENDER).
UDP_ICMP_PROBE = r"""
import json, select, socket, struct, sys
IP_RECVERR = 11
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
s.sendto(sys.argv[4].encode(), (sys.argv[1], int(sys.argv[2])))
select.select([s], [], [], float(sys.argv[3]))     # an error queued wakes select
out = {}
try:
    data, anc, flags, addr = s.recvmsg(512, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
except BlockingIOError:
    anc = []
for level, typ, blob in anc:
    if level == socket.IPPROTO_IP and typ == IP_RECVERR:
        ee_errno, origin, itype, icode = struct.unpack_from("=IBBB", blob, 0)
        out.update(errno=ee_errno, origin=origin, type=itype, code=icode,
                   offender=socket.inet_ntoa(blob[16 + 4:16 + 8]))
print(json.dumps(out))
"""


class TwoHostTests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.ov = make_overlay(self, [1, 2])

    def test_host_to_remote_docker0(self):
        """Each host reaches the other host's docker0 .1 over flannel0."""
        ov = self.ov
        ov.assert_reaches(ov.lab.host_ns(1), ov.c(2).gateway)
        ov.assert_reaches(ov.lab.host_ns(2), ov.c(1).gateway)
        route = ov.lab.exec(ov.lab.host_ns(1), ["ip", "route", "get", str(ov.c(2).gateway)])
        self.assertIn("dev flannel0", route.stdout)

    def test_container_to_container(self):
        ov = self.ov
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        ov.assert_reaches(ov.c(2).ns, ov.c(1).addr)
        # a full-size packet (MTU 1472: 1444 bytes of ICMP data) crosses unfragmented
        size = ov.c(1).mtu - 28
        cp = ov.lab.exec(ov.c(1).ns, ["ping", "-n", "-c", "2", "-W", "2", "-M", "do",
                                      "-s", str(size), str(ov.c(2).addr)], check=False)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertIn("%d bytes from %s" % (size + 8, ov.c(2).addr), cp.stdout)

    def test_tcp_4mb_intact(self):
        """4 MB of random bytes over TCP from container 1 to container 2, hash intact."""
        ov = self.ov
        c1, c2 = ov.c(1), ov.c(2)
        ov.assert_reaches(c1.ns, c2.addr)
        data = os.urandom(4 * 1024 * 1024)
        digest = hashlib.sha256(data).hexdigest()
        path = os.path.join(ov.workdir, "payload.bin")
        with open(path, "wb") as f:
            f.write(data)
        _, sink_log = ov.spawn_py(c2.ns, "tcp-sink", TCP_SINK, 5001, ready="listening")
        started = time.monotonic()
        cp = ov.py(c1.ns, TCP_SOURCE, c2.addr, 5001, path, timeout=60, check=False)
        elapsed = time.monotonic() - started
        self.assertEqual(cp.returncode, 0, cp.stderr + read_text(sink_log) + ov.logs())
        # the sink's verdict, read back by the sender: hash, count, peer address
        self.assertEqual(cp.stdout.split(), [digest, str(len(data)), str(c1.addr)])
        self.assertIn(digest, read_text(sink_log))
        say("tcp c1->c2: %d bytes in %.2fs (%.1f Mbit/s incl. set-up), sha256 %s",
            len(data), elapsed, len(data) * 8 / elapsed / 1e6, digest[:16])

        if shutil.which("iperf3") is None:
            say("iperf3 not installed; throughput measurement skipped")
            return
        lab = ov.lab
        lab.spawn(c2.ns, ["iperf3", "-s", "-1", "-p", "5201"],
                  os.path.join(ov.workdir, "iperf3-server.log"))
        for _ in range(50):                    # until the server listens
            cp = lab.exec(c1.ns, ["iperf3", "-c", str(c2.addr), "-p", "5201", "-t", "3",
                                  "-J"], check=False, timeout=30)
            if "unable to connect" not in cp.stdout:
                break
            time.sleep(0.1)
        result = json.loads(cp.stdout or "{}")
        self.assertEqual(cp.returncode, 0, cp.stdout[-2000:] + cp.stderr)
        recv = result["end"]["sum_received"]
        sent = result["end"]["sum_sent"]
        self.assertGreater(recv["bytes"], 0)
        say("iperf3 c1->c2 over udp overlay: %.1f Mbit/s received, %.1f Mbit/s sent, "
            "%d retransmits, %d bytes in %.1fs",
            recv["bits_per_second"] / 1e6, sent["bits_per_second"] / 1e6,
            sent.get("retransmits", -1), recv["bytes"], recv["seconds"])


class ThreeHostTests(unittest.TestCase):
    skip = SKIP

    def test_every_container_pings_every_other(self):
        ov = make_overlay(self, [1, 2, 3])
        pairs = [(i, j) for i in (1, 2, 3) for j in (1, 2, 3) if i != j]
        for i, j in pairs:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        # and once more, all settled, each must answer at the first try
        failed = [(i, j) for i, j in pairs if ov.ping(ov.c(i).ns, ov.c(j).addr).returncode]
        self.assertEqual(failed, [])


class MembershipTests(unittest.TestCase):
    skip = SKIP

    def test_late_host_becomes_reachable(self):
        """Host 3 joins after hosts 1 and 2 run; their daemons learn it without restart."""
        ov = make_overlay(self, [1, 2, 3], start=[1, 2])
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        ov.assert_reaches(ov.c(2).ns, ov.c(1).addr)
        pids = {i: ov.procs[i].pid for i in (1, 2)}
        ov.start([3])
        self.assertNotIn(ov.subnet(3), [ov.subnet(1), ov.subnet(2)])
        for i in (1, 2):
            ov.assert_reaches(ov.c(i).ns, ov.c(3).addr)
            ov.assert_reaches(ov.c(3).ns, ov.c(i).addr)
            ov.assert_reaches(ov.lab.host_ns(i), ov.c(3).gateway)
        for i in (1, 2):
            self.assertIsNone(ov.procs[i].poll(), "daemon h%d exited" % i)
            self.assertEqual(ov.procs[i].pid, pids[i])

    def test_removed_lease_disappears(self):
        """
        Host 2's daemon stops (lease stays), then its lease is deleted in etcd:
        hosts 1 and 3 drop the route, and their daemons answer traffic for it
        with ICMP net unreachable from their flannel0 .0 address.
        """
        ov = make_overlay(self, [1, 2, 3])
        for i, j in [(1, 2), (3, 2), (1, 3)]:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        key = ov.lease_key(2)
        c2 = ov.c(2)

        ov.procs[2].send_signal(signal.SIGTERM)
        ov.procs[2].wait(timeout=15)
        status, body = ov.etcd("GET", key)
        self.assertEqual(status, 200, body)          # flanneld never deletes its lease
        self.assertIn(str(ov.lab.host_ip(2)), body)

        # Stand in for host 2's stopped daemon: record what still arrives at its UDP
        # port.  While the lease exists, hosts 1 and 3 keep the route and send there.
        _, h2_log = ov.spawn_py(ov.lab.host_ns(2), "h2-udp8285", UDP_LISTENER, UDP_PORT,
                                ready="ready")

        def arrived(tag):
            return tag in read_text(h2_log)

        def probe(i, tag, wait=0.5):
            return json.loads(ov.py(ov.c(i).ns, UDP_ICMP_PROBE, c2.addr, 9, wait, tag).stdout)

        for i in (1, 3):
            self.assertEqual(probe(i, "pre-c%d" % i), {})      # no ICMP error yet
            self.assertTrue(wait_for(lambda: arrived("pre-c%d" % i), 5),
                            "h%d did not send to host 2 while the lease existed:\n%s"
                            % (i, read_text(h2_log)))

        status, body = ov.etcd("DELETE", key)
        self.assertEqual(status, 200, body)
        self.assertEqual(ov.etcd("GET", key)[0], 404)

        for i in (1, 3):
            tun0 = str(ov.subnet(i).network_address)
            last = []

            def unreachable():
                last[:] = [probe(i, "wait-c%d" % i)]
                return last[0].get("type") == 3
            wait_for(unreachable, SETTLE, interval=0.2)
            # ICMP net unreachable written by h<i>'s daemon into its flannel0 (.0),
            # errno ENETUNREACH at the sender
            self.assertEqual((last[0].get("type"), last[0].get("code"),
                              last[0].get("offender"), last[0].get("errno")),
                             (3, 0, tun0, 101),
                             "c%d: %r\n%s" % (i, last[0], ov.logs(i)))
            # the route is gone: nothing goes to host 2 any more
            self.assertEqual(probe(i, "post-c%d" % i)["type"], 3)
            # TCP sees it too: connect() fails at once with "Network is unreachable"
            cp = ov.py(ov.c(i).ns, "import socket, sys\n"
                       "try:\n socket.create_connection((sys.argv[1], 5001), timeout=5)\n"
                       "except OSError as e:\n print(e.errno, e.strerror)\n",
                       c2.addr, timeout=20)
            self.assertEqual(cp.stdout.strip(), "101 Network is unreachable")
            # ping gets no answer at all: like flanneld, the daemon sends no ICMP error
            # about an ICMP packet, so ping cannot print "Destination Net Unreachable"
            cp = ov.ping(ov.c(i).ns, c2.addr)
            self.assertNotEqual(cp.returncode, 0, cp.stdout)
            self.assertIn("100% packet loss", cp.stdout)
        time.sleep(0.3)
        self.assertFalse(arrived("post-c1") or arrived("post-c3"), read_text(h2_log))
        # the surviving hosts still reach each other
        ov.assert_reaches(ov.c(1).ns, ov.c(3).addr)
        ov.assert_reaches(ov.c(3).ns, ov.c(1).addr)


class SpoofingTests(unittest.TestCase):
    skip = SKIP

    def test_spoofed_datagrams_never_reach_a_container(self):
        ov = make_overlay(self, [1, 2, 3])
        lab = ov.lab
        c1, c2, c3 = ov.c(1), ov.c(2), ov.c(3)
        for i in (2, 3):
            ov.assert_reaches(ov.c(i).ns, c1.addr)
        # host 1's kernel must not be what drops odd sources: turn reverse-path
        # filtering off so that only the daemon's filter stands in the way
        for key in ("all", "default", "flannel0", "docker0"):
            lab.exec(lab.host_ns(1), ["sysctl", "-q", "-w",
                                      "net.ipv4.conf.%s.rp_filter=0" % key])
        intruder = lab.add_host(9)             # on the bridge, holds no lease
        ov.assert_reaches(intruder, lab.host_ip(1), settle=5)
        _, listen_log = ov.spawn_py(c1.ns, "udp-listener", UDP_LISTENER, UDP_PORT,
                                    ready="ready")
        target = lab.host_ip(1)

        def send(ns, inner_src, tag, count=5):
            pkt = ipv4_udp(inner_src, c1.addr, 40000, UDP_PORT, tag.encode())
            src = lab.host_ip(9 if ns == intruder else 2)
            cp = ov.py(ns, UDP_SEND, target, UDP_PORT, pkt.hex(), count, src)
            return cp.stdout.strip()

        def received():
            out = []
            for line in read_text(listen_log).splitlines():
                if line.startswith("{"):
                    out.append(json.loads(line))
            return out

        # from the lease-less namespace, inner source inside host 2's subnet
        self.assertEqual(send(intruder, c2.addr, "h9-as-c2"), str(lab.host_ip(9)))
        send(intruder, c2.gateway, "h9-as-h2-docker0")
        # from host 2 (its lease's PublicIP), inner sources outside host 2's subnet
        self.assertEqual(send(lab.host_ns(2), c3.addr, "h2-as-c3"), str(lab.host_ip(2)))
        send(lab.host_ns(2), "10.99.0.1", "h2-as-10.99.0.1")
        send(lab.host_ns(2), c1.addr, "h2-as-c1")
        # positive control: from host 2, inner source = container 2
        send(lab.host_ns(2), c2.addr, "h2-as-c2")

        got = wait_for(lambda: [r for r in received() if r["data"] == "h2-as-c2"], 10)
        self.assertTrue(got, "the control datagram never arrived:\n%s\n%s"
                        % (read_text(listen_log), ov.logs(1)))
        self.assertEqual((got[0]["src"], got[0]["sport"]), (str(c2.addr), 40000))
        time.sleep(0.5)                        # anything else in flight lands by now
        tags = sorted({r["data"] for r in received()})
        self.assertEqual(tags, ["h2-as-c2"], read_text(listen_log))
        say("spoofing: listener in c1 got only %r (%d copies)", tags, len(received()))
