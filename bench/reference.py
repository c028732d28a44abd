"""
Reference udp data paths for the benchmark (issue 16): how much RTT a proxy of
flanneld's udp design adds on this machine, measured in the same lab and rounds as the
daemon's udp scenario, so the daemon's figure is read against a floor measured beside
it instead of against a number from another day.

  - ``ref-c-proxy``: flanneld's udp design in C (one thread, poll() on the TUN and the
    socket, one read and one sendto per packet; one recv and one write back), built
    here with the system's C compiler (``cc``); "not available" without one;
  - ``ref-py-loop``: the same loop in Python (select.poll, os.read, sendto): the least
    any Python data path does per packet.

Both forward every packet from the TUN to the one other host and every datagram into
the TUN, without flanneld's checks or routes: references for the lab's two hosts, never
a data path for anything else. The set-up gives each host flannel0 with its subnet's .0
address and the overlay's /16 route, as the udp backend does, and the MTU 1472.
"""
import os
import shutil
import subprocess
import sys
import time

REFERENCES = ("ref-c-proxy", "ref-py-loop")

C_SOURCE = r"""
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

/* refproxy TUNNAME PEER-IPV4 PORT */
int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: refproxy TUN PEER PORT\n"); return 2; }
    int tun = open("/dev/net/tun", O_RDWR);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) < 0) { perror("tun"); return 1; }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in me = {0}, peer = {0};
    me.sin_family = peer.sin_family = AF_INET;
    me.sin_port = peer.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &peer.sin_addr) != 1) { fprintf(stderr, "bad peer\n"); return 2; }
    if (bind(s, (struct sockaddr *)&me, sizeof me) < 0) { perror("bind"); return 1; }
    struct pollfd fds[2] = {{tun, POLLIN, 0}, {s, POLLIN, 0}};
    static char buf[65536];
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        if (fds[0].revents & POLLIN) {
            ssize_t n = read(tun, buf, sizeof buf);
            if (n > 0) sendto(s, buf, n, 0, (struct sockaddr *)&peer, sizeof peer);
        }
        if (fds[1].revents & POLLIN) {
            ssize_t n = recv(s, buf, sizeof buf, 0);
            if (n > 0) (void)!write(tun, buf, n);
        }
    }
}
"""

PY_SOURCE = r"""
import fcntl, os, select, socket, struct, sys
name, peer, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", name.encode(), 0x0001 | 0x1000))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
dst, sfd, read, write, sendto, recv = (peer, port), s.fileno(), os.read, os.write, s.sendto, s.recv
p = select.poll()
p.register(tun, select.POLLIN)
p.register(sfd, select.POLLIN)
while True:
    for fd, _ in p.poll():
        if fd == tun:
            sendto(read(tun, 65536), dst)
        else:
            try:
                write(tun, recv(65536))
            except OSError:         # the TUN not up yet
                pass
"""


class Unavailable(Exception):
    """The reference cannot run here (the reason is the message)."""


def build(kind, workdir):
    """The command (argv prefix) of reference C{kind}, its program written to C{workdir}."""
    if kind == "ref-c-proxy":
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise Unavailable("no C compiler (cc)")
        src = os.path.join(workdir, "refproxy.c")
        exe = os.path.join(workdir, "refproxy")
        with open(src, "w") as f:
            f.write(C_SOURCE)
        cp = subprocess.run([cc, "-O2", "-o", exe, src], capture_output=True, text=True)
        if cp.returncode != 0:
            raise Unavailable("cc failed: %s" % cp.stderr.strip()[:200])
        return [exe]
    if kind == "ref-py-loop":
        src = os.path.join(workdir, "refloop.py")
        with open(src, "w") as f:
            f.write(PY_SOURCE)
        return [sys.executable, src]
    raise ValueError("no reference %r" % (kind,))


def setup(lab, workdir, kind, write_env, port=8285, mtu=1472, timeout=10):
    """Both hosts forward with reference C{kind}; a container behind each (subnet files
    from C{write_env(workdir, i, mtu)}). @raise Unavailable: see L{build}."""
    argv = build(kind, workdir)
    procs = {}
    for i, j in ((1, 2), (2, 1)):
        procs[i] = lab.spawn(lab.host_ns(i), argv + ["flannel0", str(lab.host_ip(j)), str(port)],
                             os.path.join(workdir, "%s-h%d.out" % (kind, i)))
    deadline = time.monotonic() + timeout
    for i in (1, 2):
        ns = lab.host_ns(i)
        while lab.exec(ns, ["ip", "link", "show", "flannel0"], check=False).returncode:
            if procs[i].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s on host %d: no flannel0 (see %s-h%d.out)"
                                   % (kind, i, kind, i))
            time.sleep(0.05)
        lab.exec(ns, ["ip", "addr", "add", "10.5.%d.0/16" % i, "dev", "flannel0"])
        lab.exec(ns, ["ip", "link", "set", "flannel0", "mtu", str(mtu), "up"])
    for i in (1, 2):
        lab.add_container(i, write_env(workdir, i, mtu))
    return [p.pid for p in procs.values()]
