"""
The wireguard device layer on real kernels with wireguard-go (this machine has no
wireguard module): two network namespaces joined by a veth "underlay", each with its own
state directory and its own wireguard-go C{flannel-wg} made by open_device, on one
filesystem without colliding on /var/run/wireguard; configured over UAPI, addresses and
the network route added here with pyroute2, ping through the tunnel; wireguard-go killed
-> restarted, reconfigured (key, port, peers re-sent) and the link's addresses re-added
by the on_recreated callback, ping works again; close() leaves no process and no device.
Also: the recorded UAPI exchange (flannel_tw/testing/wg_uapi_fixtures) still matches a
live wireguard-go.

Namespaces and directories are the test's own, removed even when a check fails.
"""
import os
import shutil
import signal
import subprocess
import tempfile
from ipaddress import IPv4Network

from pyroute2 import NetNS
from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from flannel_tw.backend.wireguard.device import open_device
from flannel_tw.backend.wireguard.key import PrivateKey
from flannel_tw.backend.wireguard.kernel import Links
from flannel_tw.backend.wireguard.uapi import parse_get_reply
from flannel_tw.backend.wireguard.userspace import (
    UserspaceDevice, probe_socket, wireguard_go_argv)
from flannel_tw.model.wgpeer import WgPeer
from flannel_tw.testing import wg_uapi_fixtures as fx
from flannel_tw.testing.skips import missing

SKIP = missing(root=True, tools=("ip", "ping", "unshare", "wireguard-go"))
NAME = "flannel-wg"
PORT = 51820


def _ip(*args):
    subprocess.run(["ip"] + list(args), check=True, capture_output=True, timeout=20)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _links(ns):
    with NetNS(ns) as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}


class Host:
    def __init__(self, test, tag, index):
        self.ns = "wgdev%s%d" % (tag, index)
        self.underlay = "192.168.%d.%d" % (200 + os.getpid() % 50, index)
        self.addr = "10.77.%d.1" % (index,)
        self.subnet = IPv4Network("10.77.%d.0/24" % (index,))
        self.key = PrivateKey.generate()
        self.state_dir = tempfile.mkdtemp(prefix="wgdev-%d-" % (index,))
        test.addCleanup(shutil.rmtree, self.state_dir, True)
        self.device = None
        self.recreated = 0

    def peer(self):
        return WgPeer(self.key.public, (self.underlay, PORT), (self.subnet,))

    def add_addresses(self, device=None):
        """What the backend does after the link (re)appears: its address, the network route."""
        with NetNS(self.ns) as ipr:
            idx = ipr.link_lookup(ifname=NAME)[0]
            ipr.addr("add", index=idx, address=self.addr, prefixlen=32)
            ipr.route("add", dst="10.77.0.0/16", oif=idx, scope=253)

    def recreated_cb(self, device):
        self.recreated += 1
        return threads.deferToThread(self.add_addresses)


class WireguardGoLabTests(unittest.TestCase):
    skip = SKIP
    timeout = 90

    def setUp(self):
        tag = "%x" % (os.getpid() % 0xffff,)
        self.hosts = [Host(self, tag, 1), Host(self, tag, 2)]
        a, b = self.hosts
        self.addCleanup(self._teardown)
        for h in self.hosts:
            _ip("netns", "add", h.ns)
            _ip("-n", h.ns, "link", "set", "lo", "up")
        _ip("link", "add", "wgd%s-a" % tag, "netns", a.ns, "type", "veth",
            "peer", "name", "wgd%s-b" % tag, "netns", b.ns)
        for h, dev in ((a, "wgd%s-a" % tag), (b, "wgd%s-b" % tag)):
            _ip("-n", h.ns, "addr", "add", h.underlay + "/24", "dev", dev)
            _ip("-n", h.ns, "link", "set", dev, "up")

    @defer.inlineCallbacks
    def _teardown(self):
        for h in self.hosts:
            if h.device is not None:
                try:
                    yield h.device.close()
                except Exception:
                    pass
        for h in self.hosts:
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)

    def ping(self, src, dst):
        return threads.deferToThread(
            subprocess.run, ["ip", "netns", "exec", src.ns, "ping", "-c", "1", "-W", "1",
                             "-I", src.addr, dst.addr], capture_output=True, timeout=10)

    @defer.inlineCallbacks
    def ping_ok(self, src, dst, tries=10):
        for _ in range(tries):
            r = yield self.ping(src, dst)
            if r.returncode == 0:
                return
        self.fail("no ping from %s to %s: %s" % (src.ns, dst.ns, r.stdout.decode()[-300:]))

    @defer.inlineCallbacks
    def test_two_namespaces_tunnel_restart_close(self):
        a, b = self.hosts
        for h in self.hosts:
            h.device = yield open_device(reactor, NAME, h.state_dir, netns=h.ns,
                                         on_recreated=h.recreated_cb, mode="userspace")
        for h in self.hosts:
            self.assertIsInstance(h.device, UserspaceDevice)
            self.assertEqual(h.device.kind, "userspace")
            # each socket is in its own daemon's directory; both processes run at once
            self.assertEqual(h.device.client.path,
                             os.path.join(h.state_dir, "wireguard", NAME + ".sock"))
            self.assertTrue(os.path.exists(h.device.client.path))
            self.assertTrue(_alive(h.device.process.pid))
            self.assertIn(NAME, _links(h.ns))
        self.assertNotEqual(a.device.process.pid, b.device.process.pid)

        for h, other in ((a, b), (b, a)):
            yield h.device.configure(h.key.raw, PORT)
            yield h.device.set_peers([other.peer()], [])
            yield threads.deferToThread(h.add_addresses)
        for h, other in ((a, b), (b, a)):
            state = yield h.device.client.get()
            self.assertEqual(state.listen_port, PORT)
            self.assertEqual(state.peers, {other.key.public: other.peer()})
            self.assertEqual((yield h.device.peers()), {other.key.public: other.peer()})
        yield self.ping_ok(a, b)
        yield self.ping_ok(b, a)

        # wireguard-go dies: restarted, reconfigured, the link's addresses re-added
        old = a.device.process.pid
        os.kill(old, signal.SIGKILL)
        for _ in range(200):
            yield task.deferLater(reactor, 0.05, lambda: None)
            if a.recreated:
                break
        self.assertEqual(a.recreated, 1)
        self.assertEqual(a.device.process.restarts, 1)
        self.assertNotEqual(a.device.process.pid, old)
        self.assertFalse(_alive(old))
        state = yield a.device.client.get()
        self.assertEqual(state.peers, {b.key.public: b.peer()})
        self.assertEqual(state.listen_port, PORT)
        yield self.ping_ok(a, b)
        yield self.ping_ok(b, a)

        # a removed peer: no tunnel
        yield a.device.set_peers([], [b.key.public])
        self.assertEqual((yield a.device.peers()), {})
        r = yield self.ping(a, b)
        self.assertNotEqual(r.returncode, 0)

        # close: no process, no device, no socket; a second close is harmless
        for h in self.hosts:
            pid = h.device.process.pid
            yield h.device.close()
            yield h.device.close()
            self.assertFalse(_alive(pid))
            self.assertNotIn(NAME, _links(h.ns))
            self.assertFalse(os.path.exists(h.device.client.path))
            h.device = None

    @defer.inlineCallbacks
    def test_state_dir_longer_than_a_unix_socket_address(self):
        """A socket path over the 107 bytes of sockaddr_un (deep subnet-file directories,
        trial's temp dirs) is reached through /proc/self/fd/<dir fd>/: configured and
        read back, not "no UAPI socket within 10s"."""
        a = self.hosts[0]
        deep = os.path.join(a.state_dir, "d" * 60, "e" * 60)
        os.makedirs(deep)
        sock = os.path.join(deep, "wireguard", NAME + ".sock")
        self.assertGreater(len(sock), 107)
        a.device = yield open_device(reactor, NAME, deep, netns=a.ns, mode="userspace")
        self.assertTrue(a.device.client.path.startswith("/proc/self/fd/"))
        self.assertTrue(os.path.exists(sock))
        yield a.device.configure(a.key.raw, PORT)
        state = yield a.device.client.get()
        self.assertEqual(state.listen_port, PORT)
        yield a.device.close()
        a.device = None

    @defer.inlineCallbacks
    def test_existing_device_and_old_wireguard_go_are_replaced(self):
        """
        A daemon that crashed left its wireguard-go running (same state dir, same link):
        open_device deletes the link, the old process exits, and its exit does not take
        the new process's socket with it.
        """
        a = self.hosts[0]
        argv = ["ip", "netns", "exec", a.ns] + wireguard_go_argv(
            shutil.which("unshare"), shutil.which("wireguard-go"), NAME,
            os.path.join(a.state_dir, "wireguard"))
        os.makedirs(os.path.join(a.state_dir, "wireguard"), mode=0o700)
        orphan = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: orphan.poll() is None and (orphan.kill(), orphan.wait()))
        sock = os.path.join(a.state_dir, "wireguard", NAME + ".sock")
        for _ in range(100):
            if probe_socket(sock):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(probe_socket(sock))
        self.assertIn(NAME, _links(a.ns))

        a.device = yield open_device(reactor, NAME, a.state_dir, netns=a.ns, mode="userspace")
        self.assertIsNotNone(orphan.poll())                 # gone before ours started
        self.assertNotEqual(a.device.process.pid, orphan.pid)
        yield task.deferLater(reactor, 0.5, lambda: None)
        yield a.device.configure(a.key.raw, PORT)
        self.assertEqual((yield a.device.client.get()).listen_port, PORT)
        self.assertTrue(os.path.exists(sock))

    @defer.inlineCallbacks
    def test_recorded_exchange_matches_live_wireguard_go(self):
        a = self.hosts[0]
        a.device = yield open_device(reactor, NAME, a.state_dir, netns=a.ns, mode="userspace")
        replies = yield threads.deferToThread(
            fx.record, a.device.client.path, [q for q, _ in fx.EXCHANGES])
        for (request, recorded), live in zip(fx.EXCHANGES, replies):
            if request.startswith(b"get=1"):
                # wireguard-go lists its peers in Go map order: compare them as a set
                self.assertEqual(parse_get_reply(live), parse_get_reply(recorded))
                def peers(reply):
                    return sorted(reply.split(b"errno=")[0].split(b"public_key=")[1:])
                self.assertEqual(peers(live), peers(recorded))
            else:
                self.assertEqual(live, recorded)

    @defer.inlineCallbacks
    def test_kernel_module_detected_and_choice_logged(self):
        """Without the module link add says EOPNOTSUPP: not available, wireguard-go is used."""
        a = self.hosts[0]
        has_module = os.path.exists("/sys/module/wireguard")
        made = yield threads.deferToThread(Links(a.ns).add_wireguard, "wgprobe0")
        self.assertEqual(made, has_module)
        self.assertEqual("wgprobe0" in _links(a.ns), has_module)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        a.device = yield open_device(reactor, NAME, a.state_dir, netns=a.ns)
        self.assertEqual(a.device.kind, "kernel" if has_module else "userspace")
        said = [formatEvent(e) for e in events
                if e.get("log_namespace") == "flannel_tw.backend.wireguard.device"]
        self.assertTrue(any(("wireguard-go" in t) != has_module for t in said), said)
