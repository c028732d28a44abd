"""Test helpers (formerly in tests/test_overlay.py), shared by
flannel_tw/testing/kernel_overlay.py, tests/lab/test_cni.py, tests/lab/test_kernel_overlay.py,
tests/lab/test_lease_lab.py, tests/lab/test_metrics.py, tests/lab/test_offload.py,
tests/lab/test_overlay.py, tests/lab/test_udp_backend.py, tests/unit/test_overlay.py.
(No test module imports another: what several need lives here.)"""

import json
import os
import struct
import sys
import time
from ipaddress import IPv4Address, IPv4Interface

from twisted.python import log

from flannel_tw.tools.lab.run import (
    _daemon_logs, start_daemons, start_etcd, subnet_file, wait_subnet_files)
from flannel_tw.tools.lab.topology import Lab, list_netns
from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.testing import skips


NETWORK = "10.5.0.0/16"
CONFIG = json.dumps({"Network": NETWORK, "Backend": {"Type": "udp"}})
SETTLE = 20          # seconds for a new or removed lease to reach every daemon
PY = sys.executable
SKIP = skips.missing(root=True, tun=True, tools=("ip", "ping"), etcd=True)


def say(fmt, *args):
    """Into the test log and onto the runner's output."""
    text = fmt % args if args else fmt
    log.msg(text)
    print(text, flush=True)


ETCD_REQUEST = r"""
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(sys.argv[2], method=sys.argv[1])
try:
    with opener.open(req, timeout=5) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""
TCP_SINK = r"""
import hashlib, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(1)
print("listening", flush=True)
srv.settimeout(60)
conn, peer = srv.accept()
conn.settimeout(60)
h = hashlib.sha256()
n = 0
while True:
    b = conn.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
msg = "%s %d %s" % (h.hexdigest(), n, peer[0])
print(msg, flush=True)
conn.sendall(msg.encode() + b"\n")
conn.close()
"""
TCP_SOURCE = r"""
import socket, sys
with open(sys.argv[3], "rb") as f:
    data = f.read()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
buf = b""
while True:
    b = c.recv(4096)
    if not b:
        break
    buf += b
print(buf.decode().strip())
"""
UDP_LISTENER = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65535)
    print(json.dumps({"src": addr[0], "sport": addr[1],
                      "data": data.decode("latin-1")}), flush=True)
"""
UDP_SEND = r"""
import socket, sys, time
pkt = bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[5], 0))
for _ in range(int(sys.argv[4])):
    s.sendto(pkt, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.02)
print(s.getsockname()[0])
"""


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(src, dst, sport, dport, payload: bytes, ttl=64, ident=0x4242) -> bytes:
    """A raw IPv4 + UDP packet with valid header and UDP checksums."""
    s, d = IPv4Address(src).packed, IPv4Address(dst).packed
    ulen = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, 17, ulen)
    csum = inet_checksum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + payload)
    udp = struct.pack("!HHHH", sport, dport, ulen, csum or 0xFFFF) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident, 0, ttl, 17, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:]
    return hdr + udp


def wait_for(predicate, timeout, interval=0.1):
    """Poll until predicate() is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class LabCommands:
    """Commands in a lab's namespaces, for a lab object with C{lab}, C{testcase} and
    C{logs()} (L{Overlay}, L{flannel_tw.testing.dualstack.DualStackLab})."""

    def py(self, ns, script, *args, timeout=30, check=True):
        return self.lab.exec(ns, [PY, "-c", script] + [str(a) for a in args],
                             timeout=timeout, check=check)

    def ping(self, ns, addr, timeout=1):
        return self.lab.exec(ns, ["ping", "-n", "-c", "1", "-W", str(timeout), str(addr)],
                             check=False, timeout=timeout + 10)

    def assert_reaches(self, ns, addr, settle=SETTLE):
        """Ping C{addr} (either family) from C{ns} until a reply comes, or fail after
        C{settle} s."""
        last = []

        def once():
            cp = self.ping(ns, addr)
            last[:] = [cp]
            return cp.returncode == 0
        if not wait_for(once, settle, interval=0.2):
            self.testcase.fail("no reply from %s to ping from %s within %ss:\n%s\n%s"
                               % (addr, ns, settle, last[0].stdout, self.logs()))


class Overlay(LabCommands):
    """A lab with etcd, flannel daemons and containers; see L{make_overlay}."""

    def __init__(self, testcase, lab, workdir):
        self.testcase = testcase
        self.lab = lab
        self.workdir = workdir
        self.etcd_url = None
        self.procs = {}
        self.envs = {}

    # hosts and daemons

    def start(self, hosts):
        """Start the daemons of ``hosts``, wait for subnet.env, add their containers."""
        procs = start_daemons(self.lab, self.workdir, self.etcd_url, hosts)
        self.procs.update(procs)
        self.envs.update(wait_subnet_files(self.workdir, procs, 30))
        for i in hosts:
            self.lab.add_container(i, subnet_file(self.workdir, i))

    def c(self, i):
        return self.lab.containers[i]

    def subnet(self, i):
        return IPv4Interface(self.envs[i]["FLANNEL_SUBNET"]).network

    def lease_key(self, i):
        net = self.subnet(i)
        return "%s/subnets/%s-%d" % (DEFAULT_PREFIX, net.network_address, net.prefixlen)

    def logs(self, *hosts):
        return "\n".join(_daemon_logs(self.workdir, i) for i in hosts or sorted(self.procs))

    # running things

    def spawn_py(self, ns, name, script, *args, ready=None, timeout=10):
        """Start a python helper in ``ns``; wait for ``ready`` in its output."""
        path = os.path.join(self.workdir, name + ".log")
        proc = self.lab.spawn(ns, [PY, "-u", "-c", script] + [str(a) for a in args], path)
        if ready is not None:
            ok = wait_for(lambda: ready in read_text(path) or proc.poll() is not None, timeout)
            if not ok or ready not in read_text(path):
                self.testcase.fail("%s did not get ready (exit %s):\n%s"
                                   % (name, proc.poll(), read_text(path)))
        return proc, path

    def etcd(self, method, key):
        """An etcd v2 request made from inside the switch namespace: (status, body)."""
        url = "http://%s:2379/v2/keys%s" % (self.lab.gateway, key)
        out = self.py(self.lab.switch_ns, ETCD_REQUEST, method, url).stdout
        status, _, body = out.partition("\n")
        return int(status), body.strip()


def lab_with_etcd(testcase, config, hosts=(1, 2)):
    """
    A lab with a switch, the host namespaces ``hosts`` and a real etcd holding
    ``config`` (no daemons yet), torn down after ``testcase``: (lab, workdir, etcd URL).
    """
    lab = Lab()
    testcase.addCleanup(lab.teardown)
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    lab.add_switch()
    for i in hosts:
        lab.add_host(i)
    return lab, workdir, start_etcd(lab, workdir, config)


def make_overlay(testcase, hosts, start=None):
    """
    Build a lab with ``hosts`` host namespaces, a real etcd holding a udp
    config, and the daemons (plus containers) of ``start`` (default: all).
    Teardown is registered before anything is made.
    """
    lab = Lab()
    testcase.addCleanup(lambda: testcase.assertEqual(
        [n for n in list_netns() if n.startswith(lab.prefix)], []))
    testcase.addCleanup(lab.teardown)
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    ov = Overlay(testcase, lab, workdir)
    lab.add_switch()
    for i in hosts:
        lab.add_host(i)
    ov.etcd_url = start_etcd(lab, workdir, CONFIG)
    ov.start(list(hosts if start is None else start))
    say("lab %s: %s (logs %s)", lab.prefix,
        ", ".join("h%d %s c%d %s" % (i, lab.host_ip(i), i, ov.c(i).addr)
                  for i in sorted(ov.envs)), workdir)
    return ov
