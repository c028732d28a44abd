"""
The wireguard device layer: the key file rules (flannel_tw.backend.wireguard.key), the
wireguard-go supervisor with a fake process and a Clock (userspace), the kernel driver's
netlink calls against a fake (kernel), and open_device's choice (device).
"""
import base64
import os
import stat
import tempfile

from twisted.trial import unittest

from flannel_tw.backend.wireguard import key as wgkey
from flannel_tw.backend.wireguard.key import KeyFileError, PrivateKey


class KeyPathTests(unittest.TestCase):
    def test_beside_the_subnet_file(self):
        self.assertEqual(wgkey.key_path("/run/flannel/subnet.env", environ={}),
                         "/run/flannel/wgkey")
        self.assertEqual(wgkey.key_path("/run/h1/subnet.env", environ={}), "/run/h1/wgkey")

    def test_env_wins(self):
        self.assertEqual(wgkey.key_path("/run/flannel/subnet.env",
                                        environ={"WIREGUARD_KEY_FILE": "/etc/wg/k"}),
                         "/etc/wg/k")

    def test_empty_env_is_unset(self):
        self.assertEqual(wgkey.key_path("/run/flannel/subnet.env",
                                        environ={"WIREGUARD_KEY_FILE": ""}),
                         "/run/flannel/wgkey")


class KeyFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="wgkey")
        self.addCleanup(self._rm, self.dir)

    def _rm(self, d):
        for root, dirs, files in os.walk(d, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for x in dirs:
                os.rmdir(os.path.join(root, x))
        os.rmdir(d)

    def test_generated_once_0600_base64_no_newline(self):
        old = os.umask(0)
        try:
            path = os.path.join(self.dir, "wgkey")
            k = wgkey.load_or_create(path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 44)
        self.assertFalse(data.endswith(b"\n"))
        self.assertEqual(base64.b64decode(data), k.raw)
        self.assertEqual(os.listdir(self.dir), ["wgkey"])     # no temp file left

    def test_reused_across_restarts(self):
        path = os.path.join(self.dir, "wgkey")
        first = wgkey.load_or_create(path)
        self.assertEqual(wgkey.load_or_create(path), first)
        self.assertEqual(wgkey.load_or_create(path).public, first.public)

    def test_a_key_written_by_wg_genkey_with_newline_is_read(self):
        path = os.path.join(self.dir, "wgkey")
        k = PrivateKey.generate()
        with open(path, "w") as f:
            f.write(wgkey.encode(k.raw) + "\n")
        self.assertEqual(wgkey.load_or_create(path), k)

    def test_two_subnet_dirs_two_keys(self):
        a = wgkey.load_or_create(wgkey.key_path(os.path.join(self.dir, "h1", "subnet.env"), {}))
        b = wgkey.load_or_create(wgkey.key_path(os.path.join(self.dir, "h2", "subnet.env"), {}))
        self.assertNotEqual(a.public, b.public)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "h1", "wgkey")))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "h2", "wgkey")))

    def test_corrupt_file_is_an_error_and_kept(self):
        path = os.path.join(self.dir, "wgkey")
        for junk in [b"", b"not base64!", base64.b64encode(b"x" * 31), b"\xff" * 44,
                     b"A" * 10000]:
            with open(path, "wb") as f:
                f.write(junk)
            e = self.assertRaises(KeyFileError, wgkey.load_or_create, path)
            self.assertIn(path, str(e))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), junk)

    def test_unreadable_file_is_an_error(self):
        e = self.assertRaises(KeyFileError, wgkey.load_or_create, self.dir)   # a directory
        self.assertIn("cannot read", str(e))

    def test_unwritable_directory_is_an_error(self):
        blocker = os.path.join(self.dir, "file")
        open(blocker, "w").close()
        self.assertRaises(KeyFileError, wgkey.load_or_create, os.path.join(blocker, "wgkey"))

    def test_private_key_never_shown(self):
        k = PrivateKey.generate()
        for text in (repr(k), str(k), "%s" % (k,), repr([k])):
            self.assertNotIn(wgkey.encode(k.raw), text)
            self.assertNotIn(k.raw.hex(), text)
            self.assertIn(wgkey.encode(k.public), text)

    def test_public_key_matches_wg(self):
        # `echo <private> | wg pubkey` for the fixture key of wireguard's own docs
        private = base64.b64decode("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
        self.assertEqual(wgkey.encode(wgkey.public_key(private)),
                         "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")

    def test_decode(self):
        self.assertEqual(wgkey.decode(wgkey.encode(b"\x01" * 32)), b"\x01" * 32)
        for bad in ["", "abc", "!!!!", wgkey.encode(b"x" * 33), None, "é" * 44]:
            self.assertRaises(ValueError, wgkey.decode, bad)


# ---- wireguard-go supervision, with a fake process and a Clock ----

from ipaddress import IPv4Network  # noqa: E402

from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from twisted.internet import defer, error, task  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from zope.interface.verify import verifyObject  # noqa: E402

from flannel_tw.backend.wireguard import device as wgdevice  # noqa: E402
from flannel_tw.backend.wireguard.device import (  # noqa: E402
    WireguardUnavailable, open_device)
from flannel_tw.backend.wireguard.kernel import KernelDevice, peers_from_info  # noqa: E402
from flannel_tw.backend.wireguard.uapi import UapiError  # noqa: E402
from flannel_tw.backend.wireguard.userspace import (  # noqa: E402
    UserspaceDevice, WireguardGo, WireguardGoError)
from flannel_tw.interfaces import IWireguardDevice  # noqa: E402
from flannel_tw.model.wgpeer import WgPeer  # noqa: E402


class FakeProcess:
    def __init__(self, proto, argv, env, pid):
        self.proto, self.argv, self.env, self.pid = proto, argv, env, pid
        self.signals = []
        self.ended = False

    def signalProcess(self, sig):
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(sig)

    def end(self, signal=None, code=1):
        self.ended = True
        self.proto.processEnded(Failure(error.ProcessTerminated(
            exitCode=None if signal else code, signal=signal)))


class Spawner:
    def __init__(self):
        self.processes = []

    def __call__(self, proto, argv, env):
        p = FakeProcess(proto, argv, env, 1000 + len(self.processes))
        proto.makeConnection(p)
        self.processes.append(p)
        return p

    @property
    def last(self):
        return self.processes[-1]


class SupervisorTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.spawn = Spawner()
        self.up = set()                 # socket paths that answer
        self.dir = tempfile.mkdtemp(prefix="wggo")
        self.addCleanup(KeyFileTests._rm, None, self.dir)
        self.run_dir = os.path.join(self.dir, "wireguard")
        self.restarted = []
        self.events = []
        self.go = WireguardGo(self.clock, "flannel-wg", self.run_dir, "/usr/bin/wireguard-go",
                              unshare="/usr/bin/unshare", spawn=self.spawn,
                              probe=lambda p: p in self.up,
                              on_restarted=lambda: self.restarted.append(self.clock.seconds()))
        self.go.log = Logger(observer=self.events.append)

    def answer(self):
        self.up.add(self.go.socket_path)

    def die(self, **kw):
        self.up.discard(self.go.socket_path)
        self.spawn.last.end(**kw)

    def warnings(self):
        return [e for e in self.events if e["log_level"].name == "warn"]

    def started(self):
        d = self.go.start()
        self.clock.advance(0.2)
        self.answer()
        self.clock.advance(0.05)
        self.successResultOf(d)

    def test_argv_private_mount_namespace_with_own_dir(self):
        self.assertEqual(self.go.argv[:6], ["/usr/bin/unshare", "--mount", "--propagation",
                                            "private", "sh", "-c"])
        self.assertIn('mount --bind "$1" /var/run/wireguard', self.go.argv[6])
        self.assertIn('exec "$2" -f "$3"', self.go.argv[6])
        self.assertEqual(self.go.argv[7:], ["wireguard-go", self.run_dir,
                                            "/usr/bin/wireguard-go", "flannel-wg"])
        self.assertEqual(self.go.socket_path, os.path.join(self.run_dir, "flannel-wg.sock"))

    def test_start_waits_for_the_socket(self):
        d = self.go.start()
        self.assertEqual(len(self.spawn.processes), 1)
        self.clock.advance(1)
        self.assertNoResult(d)
        self.answer()
        self.clock.advance(0.05)
        self.successResultOf(d)
        self.assertEqual(self.go.state, "running")
        self.assertEqual(stat.S_IMODE(os.stat(self.run_dir).st_mode), 0o700)

    def test_stale_socket_removed_before_start(self):
        os.makedirs(self.run_dir)
        open(self.go.socket_path, "w").close()
        self.go.start()
        self.assertFalse(os.path.exists(self.go.socket_path))

    def test_waits_for_an_old_wireguard_go_to_leave_the_socket(self):
        # a wireguard-go left by an earlier run still serves the socket (its link was just
        # deleted, it is exiting): starting now would let its exit unlink our new socket
        self.answer()
        d = self.go.start()
        self.clock.advance(1)
        self.assertEqual(self.spawn.processes, [])
        self.up.clear()
        self.clock.advance(0.05)
        self.assertEqual(len(self.spawn.processes), 1)
        self.answer()
        self.clock.advance(0.05)
        self.successResultOf(d)

    def test_an_old_wireguard_go_that_stays_fails_the_start(self):
        self.answer()
        d = self.go.start()
        self.clock.advance(10.1)
        e = self.failureResultOf(d, WireguardGoError).value
        self.assertIn("still served", str(e))
        self.assertEqual(self.spawn.processes, [])
        self.assertEqual(self.go.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_waiting_for_the_old_one(self):
        self.answer()
        d = self.go.start()
        self.successResultOf(self.go.stop())
        self.failureResultOf(d, WireguardGoError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_socket_in_time_kills_and_fails(self):
        d = self.go.start()
        self.clock.advance(10.1)
        e = self.failureResultOf(d, WireguardGoError).value
        self.assertIn("no UAPI socket", str(e))
        self.assertEqual(self.spawn.last.signals, ["KILL"])
        self.spawn.last.end(signal=9)
        self.assertEqual(self.go.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exit_at_first_start_fails_with_its_words_and_no_restart(self):
        d = self.go.start()
        self.spawn.last.proto.childDataReceived(2, b"\xe2\x94\x8c\xe2\x94\x80 banner\n"
                                                   b"ERROR: (flannel-wg) Failed to create TUN")
        self.spawn.last.proto.childDataReceived(2, b" device: no such device\n")
        self.spawn.last.end(code=1)
        e = self.failureResultOf(d, WireguardGoError).value
        self.assertIn("exited at start (exit 1)", str(e))
        self.assertIn("Failed to create TUN device: no such device", str(e))
        self.assertNotIn("banner", str(e))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.spawn.processes), 1)

    def test_death_restarts_after_backoff_and_reapplies(self):
        self.started()
        self.clock.advance(100)
        self.die(signal=9)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("signal 9", self.warnings()[0]["status"])
        self.clock.advance(0.4)
        self.assertEqual(len(self.spawn.processes), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.spawn.processes), 2)
        self.assertEqual(self.restarted, [])
        self.clock.advance(0.3)
        self.answer()
        self.clock.advance(0.05)
        self.assertEqual(len(self.restarted), 1)
        self.assertEqual(self.go.state, "running")
        self.assertEqual(self.go.restarts, 1)
        self.assertEqual(len(self.warnings()), 1)         # logged once

    def test_backoff_grows_then_resets_after_a_stable_run(self):
        self.started()
        delays = []
        for _ in range(8):
            self.die(code=2)
            delays.append(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
            self.answer()
            self.clock.advance(0.05)
        self.assertEqual([round(x, 6) for x in delays], [0.5, 1, 2, 4, 8, 16, 30, 30])
        self.clock.advance(61)
        self.die(code=2)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 0.5)
        self.assertEqual(len(self.warnings()), 9)

    def test_a_restart_that_dies_at_start_backs_off_again(self):
        self.started()
        self.die(code=1)
        self.clock.advance(0.5)
        self.die(code=1)                    # the restarted one dies before its socket
        self.assertEqual(self.restarted, [])
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 1)
        self.clock.advance(1)
        self.answer()
        self.clock.advance(0.05)
        self.assertEqual(len(self.restarted), 1)

    def test_a_restart_without_socket_is_killed_said_and_retried(self):
        self.started()
        self.die(signal=9)
        self.clock.advance(0.5)
        self.clock.advance(10.1)
        self.assertEqual(self.spawn.last.signals, ["KILL"])
        self.assertIn("no UAPI socket", self.warnings()[-1]["err"])
        self.spawn.last.end(signal=9)
        self.assertEqual(self.go.state, "waiting")
        self.clock.advance(1)
        self.assertEqual(len(self.spawn.processes), 3)

    def test_stop_sends_term_then_kill_after_grace(self):
        self.started()
        d = self.go.stop()
        self.assertEqual(self.spawn.last.signals, ["TERM"])
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.spawn.last.signals, ["TERM", "KILL"])
        self.spawn.last.end(signal=9)
        self.successResultOf(d)
        self.assertEqual(self.go.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.spawn.processes), 1)       # not restarted

    def test_stop_is_idempotent(self):
        self.started()
        d1, d2 = self.go.stop(), self.go.stop()
        self.assertEqual(self.spawn.last.signals, ["TERM"])
        self.spawn.last.end(code=0)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.successResultOf(self.go.stop())

    def test_stop_while_waiting_to_restart(self):
        self.started()
        self.die(signal=9)
        self.successResultOf(self.go.stop())
        self.clock.advance(60)
        self.assertEqual(len(self.spawn.processes), 1)

    def test_stop_while_starting(self):
        d = self.go.start()
        s = self.go.stop()
        self.failureResultOf(d, WireguardGoError)
        self.spawn.last.end(code=0)
        self.successResultOf(s)
        self.assertEqual(self.clock.getDelayedCalls(), [])


# ---- the devices, with fakes ----

KEY = b"\x07" * 32
PEER1 = WgPeer(b"\x01" * 32, ("192.0.2.1", 51820), (IPv4Network("10.5.1.0/24"),))
PEER2 = WgPeer(b"\x02" * 32, ("fc00::2", 51820), (IPv4Network("10.5.2.0/24"),),
               preshared_key=b"\x09" * 32, keepalive=25)


class FakeLinks:
    def __init__(self, events, kernel=False, existing=()):
        self.events = events
        self.kernel = kernel
        self.links = set(existing)
        self.netns = None

    def delete(self, name):
        self.events.append(("delete", name))
        had = name in self.links
        self.links.discard(name)
        return had

    def up(self, name):
        self.events.append(("up", name))

    def add_wireguard(self, name):
        self.events.append(("add_wireguard", name))
        if self.kernel:
            self.links.add(name)
        return self.kernel


class FakeClient:
    def __init__(self, events):
        self.events = events
        self.fail = None

    def _answer(self):
        if self.fail is not None:
            return defer.fail(self.fail)
        return defer.succeed(None)

    def set_device(self, private_key, listen_port):
        self.events.append(("set_device", private_key, listen_port))
        return self._answer()

    def set_peers(self, upserts, removals):
        self.events.append(("set_peers", list(upserts), list(removals)))
        return self._answer()

    def set(self, **kw):
        self.events.append(("set", kw))
        return self._answer()


class FakeProcessOwner:
    def __init__(self, events):
        self.events = events

    def stop(self):
        self.events.append(("stop",))
        return defer.succeed(None)


def sync(f, *args):
    return defer.maybeDeferred(f, *args)


class UserspaceDeviceTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        self.recreated = []
        self.dev = UserspaceDevice("flannel-wg", FakeProcessOwner(self.events),
                                   FakeClient(self.events), FakeLinks(self.events), sync,
                                   on_recreated=self.recreated.append)

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IWireguardDevice, self.dev))
        self.assertEqual(self.dev.kind, "userspace")

    def test_configure_sets_key_and_port_then_link_up(self):
        self.successResultOf(self.dev.configure(KEY, 51820))
        self.assertEqual(self.events, [("set_device", KEY, 51820), ("up", "flannel-wg")])

    def test_reapply_sends_everything_again(self):
        self.dev.configure(KEY, 51820)
        self.dev.set_peers([PEER1, PEER2], [])
        self.dev.set_peers([PEER2], [PEER1.public_key])
        del self.events[:]
        self.successResultOf(self.dev.reapply())
        self.assertEqual(self.events, [
            ("set", dict(private_key=KEY, listen_port=51820, replace_peers=True,
                         upserts=[PEER2])),
            ("up", "flannel-wg")])
        self.assertEqual(self.recreated, [self.dev])

    def test_changes_while_down_are_kept_for_the_reapply(self):
        self.dev.client.fail = UapiError("cannot connect")
        self.failureResultOf(self.dev.set_peers([PEER1], []), UapiError)
        self.dev.client.fail = None
        del self.events[:]
        self.dev.reapply()
        self.assertEqual(self.events[0][1]["upserts"], [PEER1])

    def test_bad_peer_changes_nothing(self):
        self.failureResultOf(self.dev.set_peers([WgPeer(b"x", None, ())], []), ValueError)
        self.failureResultOf(self.dev.configure(b"short", 51820), ValueError)
        self.assertEqual(self.events, [])
        self.dev.reapply()
        self.assertEqual(self.events[0][1]["upserts"], [])

    def test_close_stops_and_deletes_once(self):
        self.successResultOf(self.dev.close())
        self.successResultOf(self.dev.close())
        self.assertEqual(self.events, [("stop",), ("delete", "flannel-wg")])


class FakeWireGuard:
    def __init__(self, events, info=()):
        self.events = events
        self._info = info

    def set(self, interface, **kw):
        self.events.append(("wg.set", interface, kw))

    def info(self, interface):
        return self._info

    def close(self):
        self.events.append(("wg.close",))


class _Nla(dict):
    def __init__(self, attrs=(), **kw):
        dict.__init__(self, kw)
        self.attrs = dict(attrs)

    def get_attr(self, name):
        return self.attrs.get(name)


class KernelDeviceTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        self.wg = FakeWireGuard(self.events)
        self.dev = KernelDevice("flannel-wg", FakeLinks(self.events), sync,
                                wireguard=lambda: self.wg)

    def test_provides_the_interface(self):
        self.assertTrue(verifyObject(IWireguardDevice, self.dev))
        self.assertEqual(self.dev.kind, "kernel")

    def test_configure(self):
        self.successResultOf(self.dev.configure(KEY, 51820))
        self.assertEqual(self.events, [
            ("wg.set", "flannel-wg", dict(private_key=wgkey.encode(KEY), listen_port=51820)),
            ("wg.close",), ("up", "flannel-wg")])

    def test_set_peers_removals_then_upserts(self):
        self.successResultOf(self.dev.set_peers([PEER1, PEER2], [b"\x03" * 32]))
        zero = wgkey.encode(bytes(32))
        self.assertEqual(self.events, [
            ("wg.set", "flannel-wg", {"peer": {"public_key": wgkey.encode(b"\x03" * 32),
                                               "remove": True}}),
            ("wg.set", "flannel-wg", {"peer": {
                "public_key": wgkey.encode(PEER1.public_key), "preshared_key": zero,
                "persistent_keepalive": 0, "replace_allowed_ips": True,
                "allowed_ips": ["10.5.1.0/24"], "endpoint_addr": "192.0.2.1",
                "endpoint_port": 51820}}),
            ("wg.set", "flannel-wg", {"peer": {
                "public_key": wgkey.encode(PEER2.public_key),
                "preshared_key": wgkey.encode(b"\x09" * 32),
                "persistent_keepalive": 25, "replace_allowed_ips": True,
                "allowed_ips": ["10.5.2.0/24"], "endpoint_addr": "fc00::2",
                "endpoint_port": 51820}}),
            ("wg.close",)])

    def test_bad_peer_sends_nothing(self):
        self.failureResultOf(self.dev.set_peers([WgPeer(b"x", None, ())], []), ValueError)
        self.assertEqual(self.events, [])

    def test_peers_from_info(self):
        def peer(p):
            return _Nla(attrs={
                "WGPEER_A_PUBLIC_KEY": wgkey.encode(p.public_key).encode(),
                "WGPEER_A_PRESHARED_KEY": wgkey.encode(p.preshared_key or bytes(32)).encode(),
                "WGPEER_A_ENDPOINT": {"family": 2, "port": p.endpoint[1],
                                      "addr": p.endpoint[0]},
                "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL": p.keepalive,
                "WGPEER_A_ALLOWEDIPS": [_Nla(addr=n.with_prefixlen) for n in p.allowed_ips]})
        msg = _Nla(attrs={"WGDEVICE_A_PEERS": [peer(PEER1), peer(PEER2)]})
        self.wg._info = [msg]
        self.assertEqual(self.successResultOf(self.dev.peers()),
                         {PEER1.public_key: PEER1, PEER2.public_key: PEER2})
        self.assertEqual(peers_from_info([]), {})

    def test_close_deletes_the_link_once(self):
        self.successResultOf(self.dev.close())
        self.successResultOf(self.dev.close())
        self.assertEqual(self.events, [("delete", "flannel-wg")])


class OpenDeviceTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        self.dir = tempfile.mkdtemp(prefix="wgopen")
        self.addCleanup(KeyFileTests._rm, None, self.dir)

    def test_kernel_when_it_works_existing_link_deleted_first(self):
        links = FakeLinks(self.events, kernel=True, existing={"flannel-wg"})
        dev = self.successResultOf(open_device(task.Clock(), "flannel-wg", self.dir,
                                               kernel=links, to_thread=sync))
        self.assertIsInstance(dev, KernelDevice)
        self.assertEqual(self.events, [("delete", "flannel-wg"),
                                       ("add_wireguard", "flannel-wg")])

    def test_nothing_available_names_both_options(self):
        self.patch(wgdevice.shutil, "which", lambda name: None)
        links = FakeLinks(self.events)
        e = self.failureResultOf(open_device(task.Clock(), "flannel-wg", self.dir,
                                             kernel=links, to_thread=sync),
                                 WireguardUnavailable).value
        for words in ("kernel", "modprobe wireguard", "wireguard-go",
                      "apt-get install wireguard-go"):
            self.assertIn(words, str(e))

    def test_kernel_forced_but_missing(self):
        e = self.failureResultOf(open_device(task.Clock(), "flannel-wg", self.dir,
                                             kernel=FakeLinks(self.events), to_thread=sync,
                                             mode="kernel"), WireguardUnavailable).value
        self.assertIn("could not create wireguard interface", str(e))

    def test_userspace_fallback(self):
        clock, spawn = task.Clock(), Spawner()
        up = set()
        self.patch(wgdevice.shutil, "which", lambda name: "/usr/bin/" + name)
        d = open_device(clock, "flannel-wg", self.dir, kernel=FakeLinks(self.events),
                        to_thread=sync, spawn=spawn, probe=lambda p: p in up)
        self.assertNoResult(d)
        sock = os.path.join(self.dir, "wireguard", "flannel-wg.sock")
        up.add(sock)
        clock.advance(0.05)
        dev = self.successResultOf(d)
        self.assertIsInstance(dev, UserspaceDevice)
        self.assertEqual(dev.client.path, sock)
        self.assertEqual(spawn.last.argv[-3:], [os.path.join(self.dir, "wireguard"),
                                                "/usr/bin/wireguard-go", "flannel-wg"])
        self.assertEqual(self.events, [("delete", "flannel-wg"),
                                       ("add_wireguard", "flannel-wg")])

    def test_userspace_forced_skips_the_kernel(self):
        self.patch(wgdevice.shutil, "which", lambda name: "/usr/bin/" + name)
        spawn = Spawner()
        d = open_device(task.Clock(), "flannel-wg", self.dir, kernel=FakeLinks(self.events),
                        to_thread=sync, spawn=spawn, probe=lambda p: bool(spawn.processes),
                        mode="userspace")
        self.assertIsInstance(self.successResultOf(d), UserspaceDevice)
        self.assertEqual(self.events, [("delete", "flannel-wg")])

    def test_netlink_failure_is_not_unavailability(self):
        class Broken(FakeLinks):
            def add_wireguard(self, name):
                raise NetlinkError(1, "Operation not permitted")
        self.failureResultOf(open_device(task.Clock(), "flannel-wg", self.dir,
                                         kernel=Broken(self.events), to_thread=sync),
                             NetlinkError)
