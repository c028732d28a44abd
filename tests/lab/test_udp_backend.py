"""Tests for the udp backend (flannel_tw.backend.udp.backend) on the real reactor, with a

The lab tests (ForeignDestinationLabTests, RealTunTests); the whole description is in tests/unit/test_udp_backend.py."""

import ctypes
import os
import random
import socket
import struct
import subprocess
import threading
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from flannel_tw.interfaces import ITun
from flannel_tw.backend.udp import packet as P
from flannel_tw.testing.udp_fixtures import make_ipv4
from flannel_tw.testing import skips


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(netns, fn, *args):
    """Run fn(*args) in a fresh thread that has entered network namespace `netns`."""
    result = {}

    def run():
        try:
            fd = os.open("/var/run/netns/%s" % netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
            finally:
                os.close(fd)
            result["value"] = fn(*args)
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=run, name="netns-%s" % netns)
    t.start()
    t.join(60)
    if "error" in result:
        raise result["error"]
    return result["value"]


class ForeignDestinationLabTests(TestCase):
    """
    In the namespace lab, with real daemons and kernels: a datagram from a real peer
    (host 2, its lease's PublicIP) with an inner source in its own subnet is written
    into host 1's flannel0 only when its inner destination is in host 1's subnet.
    Before that check, host 1's kernel delivered packets to its own underlay address
    and forwarded packets to any other address (the FORWARD accept rules).
    """

    timeout = 120

    def setUp(self):
        from flannel_tw.testing.overlay import SKIP
        if SKIP:
            raise SkipTest(SKIP)

    def test_datagrams_to_other_destinations_are_not_delivered(self):
        from flannel_tw.testing.overlay import (UDP_LISTENER, UDP_SEND, ipv4_udp, make_overlay,
                                        read_text)
        from flannel_tw.testing.overlay import wait_for as poll
        ov = make_overlay(self, [1, 2])
        lab = ov.lab
        c1, c2 = ov.c(1), ov.c(2)
        ov.assert_reaches(c2.ns, c1.addr)
        # only the daemon may stand in the way: no reverse-path filter on host 1 or
        # on the switch (the third address)
        for ns, keys in ((lab.host_ns(1), ("all", "default", "flannel0", "docker0", "eth0")),
                         (lab.switch_ns, ("all", "default", "br0"))):
            for key in keys:
                lab.exec(ns, ["sysctl", "-q", "-w", "net.ipv4.conf.%s.rp_filter=0" % key])
        targets = {"host": (lab.host_ns(1), lab.host_ip(1), 7001),       # host 1 itself
                   "third": (lab.switch_ns, lab.gateway, 7002),          # beyond host 1
                   "c1": (c1.ns, c1.addr, 7003)}                         # the control
        logs = {}
        for name, (ns, _, port) in targets.items():
            logs[name] = ov.spawn_py(ns, "listen-" + name, UDP_LISTENER, port,
                                     ready="ready")[1]

        def send(name):
            _, dst, port = targets[name]
            pkt = ipv4_udp(c2.addr, dst, 40000, port, ("to-" + name).encode())
            return ov.py(lab.host_ns(2), UDP_SEND, lab.host_ip(1), 8285, pkt.hex(), 5,
                         lab.host_ip(2)).stdout.strip()

        self.assertEqual(send("host"), str(lab.host_ip(2)))
        send("third")
        send("c1")
        self.assertTrue(poll(lambda: "to-c1" in read_text(logs["c1"]), 10),
                        "the control datagram never arrived:\n%s" % ov.logs(1))
        time.sleep(0.5)                 # anything else in flight lands by now
        self.assertEqual([l for l in read_text(logs["host"]).splitlines() if "to-" in l], [])
        self.assertEqual([l for l in read_text(logs["third"]).splitlines() if "to-" in l], [])
        # and the overlay still works both ways
        ov.assert_reaches(c1.ns, c2.addr)
        ov.assert_reaches(c2.ns, c1.addr)


class RealTunTests(TestCase):
    """
    Real /dev/net/tun and netlink, inside a network namespace created for the test
    (only a dedicated thread enters it, so nothing touches the host's namespace).
    """

    def setUp(self):
        skips.require(root=True, tools=("ip",), tun=True)
        self.netns = "flntw-tun-%08x" % random.getrandbits(32)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.addCleanup(subprocess.run, ["ip", "netns", "delete", self.netns], check=False)

    def test_open_configure_read_write(self):
        from flannel_tw.kernel import netlink
        from flannel_tw.kernel.tun import PytunDevice, open_tun

        name = "flntwtest%04x" % random.getrandbits(16)

        def body():
            tun = open_tun(name)
            try:
                verifyObject(ITun, tun)
                assert isinstance(tun, PytunDevice)
                out = {"name": tun.name}
                try:
                    tun.read()
                except BlockingIOError:
                    out["nonblocking"] = True
                netlink.configure_tun(tun.name, IPv4Interface("100.64.7.0/32"), 1400,
                                      IPv4Network("100.64.0.0/16"))
                # again: idempotent (EEXIST on address and route)
                netlink.configure_tun(tun.name, IPv4Interface("100.64.7.0/32"), 1400,
                                      IPv4Network("100.64.0.0/16"))
                out["state"] = netlink.link_state(tun.name)
                # the kernel routes overlay traffic into the tun ...
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(b"ping", ("100.64.9.9", 4242))
                s.close()
                # (skipping what else the kernel sends, e.g. IPv6 router solicitations)
                deadline = time.monotonic() + 5
                out["other"] = []
                while True:
                    try:
                        got = tun.read()
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
                        continue
                    if got[:1] == b"\x45" and got[16:20] == IPv4Address("100.64.9.9").packed:
                        out["read"] = got
                        break
                    out["other"].append(got)
                # ... and a packet written to the tun is accepted (delivered locally)
                r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                r.bind(("100.64.7.0", 4343))
                r.settimeout(5)
                udp = struct.pack("!HHHH", 5555, 4343, 8 + 3, 0) + b"pong"[:3]
                pkt = bytearray(make_ipv4(src="100.64.9.9", dst="100.64.7.0", ttl=30,
                                          payload=udp))
                tun.write(bytes(pkt))
                out["delivered"] = r.recvfrom(100)
                r.close()
                return out
            finally:
                tun.close()

        out = in_netns(self.netns, body)
        self.assertEqual(out["name"], name)
        self.assertTrue(out["nonblocking"])
        st = out["state"]
        self.assertEqual(st["addresses"], [IPv4Interface("100.64.7.0/32")])
        self.assertEqual(st["mtu"], 1400)
        self.assertTrue(st["up"])
        self.assertIn(IPv4Network("100.64.0.0/16"), st["routes"])
        got = out["read"]
        self.assertIsNone(P.check_ipv4(got))
        self.assertEqual(IPv4Address(got[16:20]), IPv4Address("100.64.9.9"))
        self.assertEqual(IPv4Address(got[12:16]), IPv4Address("100.64.7.0"))
        self.assertEqual(got[-4:], b"ping")
        for other in out["other"]:
            self.assertEqual(other[0] >> 4, 6)
        self.assertEqual(out["delivered"], (b"pon", ("100.64.9.9", 5555)))

    def test_configure_flushes_and_replaces(self):
        from pyroute2 import IPRoute

        from flannel_tw.kernel import netlink
        from flannel_tw.kernel.tun import open_tun

        def body():
            tun = open_tun("flntwtest%d")
            other = open_tun("flntwother%d")
            try:
                with IPRoute() as ipr:
                    idx = ipr.link_lookup(ifname=tun.name)[0]
                    oidx = ipr.link_lookup(ifname=other.name)[0]
                    ipr.link("set", index=oidx, state="up")
                    # leftovers: v0.10's .0/<Network prefix> and a stray address
                    ipr.addr("add", index=idx, address="100.64.7.0", prefixlen=16)
                    ipr.addr("add", index=idx, address="100.64.200.1", prefixlen=24)
                    # the Network routed via another device
                    ipr.route("add", dst="100.64.0.0", dst_len=16, oif=oidx)
                netlink.configure_tun(tun.name, IPv4Interface("100.64.7.0/32"), 1472,
                                      IPv4Network("100.64.0.0/16"))
                return netlink.link_state(tun.name), netlink.link_state(other.name)
            finally:
                tun.close()
                other.close()

        st, other = in_netns(self.netns, body)
        self.assertEqual(st["addresses"], [IPv4Interface("100.64.7.0/32")])
        self.assertIn(IPv4Network("100.64.0.0/16"), st["routes"])
        self.assertNotIn(IPv4Network("100.64.0.0/16"), other["routes"])
        self.assertEqual(st["mtu"], 1472)

    def test_persistent_device_reused(self):
        import pytun

        from flannel_tw.kernel.tun import open_tun

        def body():
            dev = pytun.TunTapDevice(name="flntwpers0", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
            dev.persist(True)
            dev.close()
            tun = open_tun("flntwpers0")
            name = tun.name
            tun._dev.persist(False)
            tun.close()
            return name

        self.assertEqual(in_netns(self.netns, body), "flntwpers0")

    def test_open_errors(self):
        from flannel_tw.kernel.tun import TunError, open_tun

        def body():
            errors = []
            tun = open_tun("flntwbusy0")
            try:
                for name in ("flntwbusy0", "lo", "x" * 40):
                    try:
                        open_tun(name).close()
                    except TunError as e:
                        errors.append(str(e))
            finally:
                tun.close()
            return errors

        busy, lo, long_ = in_netns(self.netns, body)
        self.assertIn("flntwbusy0", busy)
        self.assertIn("in use", busy)
        self.assertIn("'lo'", lo)
        self.assertIn("too long", long_)

    def test_configure_missing_device(self):
        from flannel_tw.kernel import netlink

        e = self.assertRaises(netlink.LinkNotFound, in_netns, self.netns,
                              netlink.configure_tun, "flntwnone0",
                              IPv4Interface("100.64.7.0/32"), 1472,
                              IPv4Network("100.64.0.0/16"))
        self.assertIn("flntwnone0", str(e))
