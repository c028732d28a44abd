"""The wireguard backend (flannel_tw.backend.wireguard.backend, .options) against a fake
device (flannel_tw.testing.wg_fakes): options and their errors, the lease value byte for
byte, peers for added/removed/re-keyed/hostile/other-type leases, batching, retries, the
first-list reconcile, and the PSK kept out of every log line."""
import base64
import os
import stat
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network

from twisted.internet import defer, task
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.backend.registry import make_backend
from flannel_tw.backend.wireguard import key as wgkey
from flannel_tw.backend.wireguard.backend import WireguardBackend
from flannel_tw.backend.wireguard.peers import endpoint_text, lease_attrs, peer_key
from flannel_tw.backend.wireguard.options import (
    OptionsError, WgOptions, parse_options, parse_psk)
from flannel_tw.etcd.registry_v3 import v3_value
from flannel_tw.interfaces import (
    IBackend, ICountingBackend, IReconcilingBackend, IReconfiguringBackend, IWireguardDevice)
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.model.config import parse_config
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.model.lease import Lease, LeaseAttrs
from flannel_tw.model.wgpeer import WgPeer
from flannel_tw.testing.wg_fakes import FakeDeviceOpener, FakeWireguardDevice, RecordingLink

PSK = bytes(range(32))
PSK_B64 = base64.b64encode(PSK).decode()
IFACE = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                 public_ip=IPv4Address("192.168.250.11"), mtu=1500)
KEYS = [wgkey.PrivateKey(bytes([i + 1]) * 32) for i in range(4)]


def config(backend='{"Type":"wireguard"}'):
    return parse_config('{"Network":"10.5.0.0/16","Backend":%s}' % backend)


def wg_lease(subnet, ip, key=None, kind="wireguard", data=None):
    if data is None and kind == "wireguard":
        data = {"PublicKey": wgkey.encode(key.public)}
    return Lease(subnet=IPv4Network(subnet),
                 attrs=LeaseAttrs(public_ip=IPv4Address(ip), backend_type=kind,
                                  backend_data=data), ttl=86400)


def added(*leases):
    return [LeaseEvent(ADDED, l) for l in leases]


def removed(*leases):
    return [LeaseEvent(REMOVED, l) for l in leases]


def logged(obj):
    lines = []
    obj.log = Logger(observer=lambda e: lines.append((e["log_level"].name, formatEvent(e))))
    return lines


class OptionsTests(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(parse_options({"Type": "wireguard"}),
                         WgOptions(51820, 51821, None, 0, "separate"))
        self.assertEqual(parse_options(None), WgOptions())

    def test_all_keys_without_regard_to_case(self):
        opts = parse_options({"listenport": 5000, "LISTENPORTV6": 5001, "psk": PSK_B64,
                              "persistentKeepaliveInterval": 25, "mode": "auto"})
        self.assertEqual(opts, WgOptions(5000, 5001, PSK, 25, "auto"))

    def test_null_keeps_default_empty_psk_is_none(self):
        self.assertEqual(parse_options({"ListenPort": None, "PSK": "", "Mode": None}),
                         WgOptions())

    def test_bad_psk(self):
        for bad in ("not base64!", base64.b64encode(b"x" * 31).decode(), 42, PSK_B64[:-2]):
            e = self.assertRaises(OptionsError, parse_options, {"PSK": bad})
            self.assertTrue(str(e).startswith("could not parse psk: "), str(e))

    def test_psk_never_in_repr_or_error(self):
        opts = parse_options({"PSK": PSK_B64})
        for text in (repr(opts), str(opts), repr(WgPeer(b"k" * 32, None, (), PSK))):
            self.assertNotIn(PSK_B64, text)
            self.assertNotIn(repr(PSK), text)
            self.assertNotIn(PSK.hex(), text)
        # nor in the parsed network config's repr
        self.assertNotIn(PSK_B64, repr(config('{"Type":"wireguard","PSK":"%s"}' % PSK_B64)))
        almost = PSK_B64[:-1] + "!"
        e = self.assertRaises(OptionsError, parse_psk, almost)
        self.assertNotIn(almost[:20], str(e))

    def test_keepalive_must_be_an_integer(self):
        e = self.assertRaises(OptionsError, parse_options, {"PersistentKeepaliveInterval": "25s"})
        self.assertIn("Backend.PersistentKeepaliveInterval must be an integer", str(e))
        for bad in (25.5, True, -1, 70000):
            e = self.assertRaises(OptionsError, parse_options,
                                  {"PersistentKeepaliveInterval": bad})
            self.assertIn("PersistentKeepaliveInterval", str(e))

    def test_ports(self):
        for bad in (0, 65536, "51820", 1.5, False):
            for key in ("ListenPort", "ListenPortV6"):
                e = self.assertRaises(OptionsError, parse_options, {key: bad})
                self.assertIn("Backend.%s" % key, str(e))

    def test_mode(self):
        for mode in ("separate", "auto", "ipv4", "ipv6"):
            self.assertEqual(parse_options({"Mode": mode}).mode, mode)
        for bad in ("Separate", "", "dual", 1):
            e = self.assertRaises(OptionsError, parse_options, {"Mode": bad})
            self.assertTrue(str(e).startswith("No valid Mode configured"), str(e))


class LeaseValueTests(unittest.TestCase):
    def test_v2_value_byte_for_byte(self):
        key = KEYS[0]
        attrs = lease_attrs(IPv4Address("192.168.250.11"), key.public)
        self.assertEqual(
            attrs.to_json(),
            '{"PublicIP":"192.168.250.11","BackendType":"wireguard",'
            '"BackendData":{"PublicKey":"%s"}}' % base64.b64encode(key.public).decode())

    def test_v3_value_has_public_ipv6_null(self):
        attrs = lease_attrs(IPv4Address("192.168.250.11"), KEYS[0].public)
        self.assertEqual(
            v3_value(attrs.to_json()),
            '{"PublicIP":"192.168.250.11","PublicIPv6":null,"BackendType":"wireguard",'
            '"BackendData":{"PublicKey":"%s"}}' % KEYS[0].public_b64)

    def test_peer_key_from_backend_data(self):
        self.assertEqual(peer_key({"PublicKey": KEYS[1].public_b64}), KEYS[1].public)
        self.assertEqual(peer_key({"publickey": KEYS[1].public_b64}), KEYS[1].public)
        for bad, why in [(None, "not an object"), ([], "not an object"), ({}, "no PublicKey"),
                         ({"PublicKey": 5}, "not a base64"),
                         ({"PublicKey": "x" * 10000}, "not a base64"),
                         ({"PublicKey": KEYS[1].public_b64[:-4]}, "not a base64")]:
            e = self.assertRaises(ValueError, peer_key, bad)
            self.assertIn(why, str(e))
            self.assertLess(len(str(e)), 200)


class Harness:
    """A backend on fakes, prepared and started with lease 10.5.1.0/24."""

    def __init__(self, testcase, backend='{"Type":"wireguard","PSK":"%s",'
                 '"PersistentKeepaliveInterval":25}' % PSK_B64, environ=None):
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.subnet_file = os.path.join(self.dir, "subnet.env")
        self.clock = task.Clock()
        self.opener = FakeDeviceOpener()
        self.link = RecordingLink()
        self.backend = WireguardBackend(
            self.clock, IFACE, subnet_file=self.subnet_file, environ=environ or {},
            open_device=self.opener, configure_link=self.link,
            to_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        self.lines = logged(self.backend)
        self.config = config(backend)
        self.attrs = testcase.successResultOf(self.backend.prepare(self.config))
        self.own = wg_lease("10.5.1.0/24", "192.168.250.11", self.backend.key)
        testcase.successResultOf(self.backend.start(self.config, self.own))

    @property
    def device(self):
        return self.opener.devices["flannel-wg"]

    def calls(self):
        return self.device.set_peer_calls()


def peer(subnet, ip, key, psk=PSK, keepalive=25, port=51820):
    return WgPeer(key.public, (ip, port), (IPv4Network(subnet),), psk, keepalive)


class PrepareStartTests(unittest.TestCase):
    def test_interfaces(self):
        h = Harness(self)
        verifyObject(IWireguardDevice, h.device)
        verifyObject(IWireguardDevice, FakeWireguardDevice())
        for iface in (IBackend, IReconcilingBackend, IReconfiguringBackend, ICountingBackend):
            verifyObject(iface, h.backend)

    def test_key_file_beside_the_subnet_file(self):
        h = Harness(self)
        path = os.path.join(h.dir, "wgkey")
        self.assertEqual(h.backend.key_file, path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            stored = f.read()
        self.assertEqual(wgkey.decode(stored), h.backend.key.raw)
        # the device got that key and the default port; MTU = 1500 - 80
        self.assertEqual(h.device.events[0], ("configure", h.backend.key.raw, 51820))
        self.assertEqual(h.backend.mtu, 1420)
        self.assertEqual(h.opener.calls[0][:2], ("flannel-wg", h.dir))
        # the lease carries the public key, exactly
        self.assertEqual(h.attrs.to_json(),
                         '{"PublicIP":"192.168.250.11","BackendType":"wireguard",'
                         '"BackendData":{"PublicKey":"%s"}}' % h.backend.key.public_b64)
        # a restart keeps the key
        b = WireguardBackend(task.Clock(), IFACE, subnet_file=h.subnet_file, environ={},
                             open_device=FakeDeviceOpener(), configure_link=RecordingLink(),
                             to_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        attrs = self.successResultOf(b.prepare(config()))
        self.assertEqual(attrs, h.attrs)

    def test_wireguard_key_file_env_wins(self):
        path = os.path.join(os.path.abspath(self.mktemp()), "k")
        h = Harness(self, environ={"WIREGUARD_KEY_FILE": path})
        self.assertEqual(h.backend.key_file, path)
        self.assertTrue(os.path.exists(path))
        self.assertFalse(os.path.exists(os.path.join(h.dir, "wgkey")))

    def test_start_address_mtu_route(self):
        h = Harness(self)
        self.assertEqual(h.link.calls, [("flannel-wg", IPv4Interface("10.5.1.0/32"), 1420,
                                         IPv4Network("10.5.0.0/16"))])

    def test_listen_port_option(self):
        h = Harness(self, backend='{"Type":"wireguard","ListenPort":5555}')
        self.assertEqual(h.device.listen_port, 5555)
        h.backend.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.assertEqual(h.calls(), [([peer("10.5.2.0/24", "192.168.250.12", KEYS[1], None,
                                            0, 5555)], [])])

    def test_bad_options_fail_prepare(self):
        b = WireguardBackend(task.Clock(), IFACE, subnet_file="/nonexistent/subnet.env",
                             open_device=FakeDeviceOpener())
        f = self.failureResultOf(b.prepare(config('{"Type":"wireguard","Mode":"x"}')),
                                 OptionsError)
        self.assertIn("No valid Mode configured", f.getErrorMessage())

    def test_device_error_fails_prepare(self):
        b = WireguardBackend(task.Clock(), IFACE,
                             subnet_file=os.path.join(os.path.abspath(self.mktemp()), "s"),
                             open_device=FakeDeviceOpener(error=RuntimeError("no wireguard")))
        self.failureResultOf(b.prepare(config()), RuntimeError)

    def test_recreated_device_gets_address_again(self):
        h = Harness(self)
        on_recreated = h.opener.calls[0][2]["on_recreated"]
        self.successResultOf(defer.maybeDeferred(on_recreated, h.device))
        self.assertEqual(len(h.link.calls), 2)
        self.assertEqual(h.link.calls[0], h.link.calls[1])

    def test_stop_closes_the_device(self):
        h = Harness(self)
        self.successResultOf(h.backend.stop())
        self.assertTrue(h.device.closed)
        h.backend.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.assertEqual(h.calls(), [])

    def test_registry_passes_the_subnet_file(self):
        b = make_backend("WireGuard", None, IFACE, subnet_file="/x/y/subnet.env")
        self.assertIsInstance(b, WireguardBackend)
        self.assertEqual(b.subnet_file, "/x/y/subnet.env")
        self.assertEqual(make_backend("wireguard", None, IFACE).subnet_file,
                         "/run/flannel/subnet.env")


class PeerTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.b = self.h.backend

    def test_added_lease_is_a_peer(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.assertEqual(self.h.calls(), [([peer("10.5.2.0/24", "192.168.250.12", KEYS[1])],
                                           [])])
        self.assertEqual(self.h.device.device_peers[KEYS[1].public].endpoint,
                         ("192.168.250.12", 51820))

    def test_own_lease_is_no_peer(self):
        self.b.handle_events(added(wg_lease("10.5.1.0/24", "192.168.250.11", KEYS[1])))
        self.assertEqual(self.h.calls(), [])

    def test_removed_lease_removes_peer_by_key(self):
        l2 = wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])
        self.b.handle_events(added(l2))
        self.b.handle_events(removed(l2))
        self.assertEqual(self.h.calls()[1], ([], [KEYS[1].public]))
        self.assertEqual(self.h.device.device_peers, {})

    def test_new_key_replaces_old_peer_in_one_call(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[2])))
        self.assertEqual(self.h.calls()[1], ([peer("10.5.2.0/24", "192.168.250.12", KEYS[2])],
                                             [KEYS[1].public]))
        self.assertEqual(list(self.h.device.device_peers), [KEYS[2].public])

    def test_same_endpoint_new_key_on_another_subnet_removes_old_peer(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.b.handle_events(added(wg_lease("10.5.3.0/24", "192.168.250.12", KEYS[2])))
        self.assertEqual(self.h.calls()[1], ([peer("10.5.3.0/24", "192.168.250.12", KEYS[2])],
                                             [KEYS[1].public]))

    def test_leases_sharing_a_key_share_one_peer(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1]),
                                   wg_lease("10.5.3.0/24", "192.168.250.13", KEYS[1])))
        self.assertEqual(self.h.calls(), [([WgPeer(
            KEYS[1].public, ("192.168.250.13", 51820),
            (IPv4Network("10.5.2.0/24"), IPv4Network("10.5.3.0/24")), PSK, 25)], [])])
        self.b.handle_events(removed(wg_lease("10.5.3.0/24", "192.168.250.13", KEYS[1])))
        self.assertEqual(self.h.calls()[1], ([peer("10.5.2.0/24", "192.168.250.12", KEYS[1])],
                                             []))
        self.assertEqual(endpoint_text(("fd00::1", 51821)), "[fd00::1]:51821")
        self.assertEqual(endpoint_text(("10.0.0.1", 51820)), "10.0.0.1:51820")

    def test_changed_endpoint_same_key_updates_peer(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.22", KEYS[1])))
        self.assertEqual(self.h.calls()[1], ([peer("10.5.2.0/24", "192.168.250.22", KEYS[1])],
                                             []))

    def test_repeated_event_sets_nothing(self):
        l2 = wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])
        self.b.handle_events(added(l2))
        self.b.handle_events(added(l2))
        self.assertEqual(len(self.h.calls()), 1)

    def test_other_backend_types_ignored_one_warning_per_lease(self):
        other = [wg_lease("10.5.4.0/24", "192.168.250.14", kind="vxlan",
                          data={"VtepMAC": "82:4b:b6:2f:54:4e"}),
                 wg_lease("10.5.5.0/24", "192.168.250.15", kind="")]
        self.b.handle_events(added(*other))
        self.b.handle_events(added(*other))
        self.assertEqual(self.h.calls(), [])
        warnings = [t for lvl, t in self.h.lines if lvl == "warn"]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn("Ignoring non-wireguard subnet 10.5.4.0/24", warnings[0])
        self.assertIn("'udp'", warnings[1])

    def test_lease_without_a_value_is_ignored_with_one_warning(self):
        self.b.handle_events(added(Lease(subnet=IPv4Network("10.5.4.0/24"), attrs=None)))
        self.assertEqual([lvl for lvl, _ in self.h.lines if lvl in ("warn", "error",
                                                                     "critical")], ["warn"])

    def test_lease_turning_into_another_type_removes_its_peer(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", kind="host-gw")))
        self.assertEqual(self.h.calls()[1], ([], [KEYS[1].public]))

    def test_hostile_backend_data_skipped_rest_keeps_working(self):
        good = wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])
        bad = [wg_lease("10.5.6.0/24", "192.168.250.16", data={}),
               wg_lease("10.5.7.0/24", "192.168.250.17", data={"PublicKey": "AAAA"}),
               wg_lease("10.5.8.0/24", "192.168.250.18", data="PublicKey"),
               wg_lease("10.5.9.0/24", "192.168.250.19", data={"PublicKey": 7}),
               # our own public key on another lease
               wg_lease("10.5.10.0/24", "192.168.250.20", key=self.b.key)]
        self.b.handle_events(added(bad[0], good, *bad[1:]))
        self.b.handle_events(added(*bad))
        self.assertEqual(self.h.calls(), [([peer("10.5.2.0/24", "192.168.250.12", KEYS[1])],
                                           [])])
        warnings = [t for lvl, t in self.h.lines if lvl == "warn"]
        self.assertEqual(len(warnings), 5, warnings)
        self.assertIn("no PublicKey", warnings[0])
        self.assertIn("our own public key", warnings[4])
        self.assertEqual(self.b.counters["leases_skipped"], 5)

    def test_lease_turning_bad_removes_its_peer(self):
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", data={})))
        self.assertEqual(self.h.calls()[1], ([], [KEYS[1].public]))

    def test_one_batch_one_call(self):
        leases = [wg_lease("10.5.%d.%d/26" % (10 + i // 4, i % 4 * 64),
                           "192.168.%d.%d" % (i // 200, i % 200 + 2),
                           wgkey.PrivateKey(i.to_bytes(2, "big") * 16)) for i in range(300)]
        self.b.handle_events(added(*leases))
        calls = self.h.calls()
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(calls[0][0]), 300)
        self.assertEqual(len(self.h.device.device_peers), 300)
        info = [t for lvl, t in self.h.lines if "batch of 300 peers" in t]
        self.assertEqual(len(info), 1)
        self.b.handle_events(removed(*leases))
        self.assertEqual(len(self.h.calls()), 2)
        self.assertEqual(len(self.h.calls()[1][1]), 300)

    def test_a_large_first_list_is_planned_in_linear_time(self):
        """6,000 leases in one batch: the same-endpoint rule looks leases up by IP (a scan
        of every wanted lease per event took ~8 s of CPU here; now ~0.05 s)."""
        import time
        n = 6000
        keys = [wgkey.encode(bytes([i >> 8, i & 255]) * 16) for i in range(n)]
        leases = [Lease(subnet=IPv4Network((0x0a050000 + (i << 4), 28)),
                        attrs=LeaseAttrs(IPv4Address(0xc0a80000 + i + 2), "wireguard",
                                         {"PublicKey": keys[i]})) for i in range(n)]
        started = time.process_time()
        self.b.handle_events(added(*leases))
        took = time.process_time() - started
        self.assertEqual(len(self.h.device.device_peers), n)
        self.assertLess(took, 2.0, "%d leases planned in %.2f s of CPU" % (n, took))

    def test_events_while_a_batch_is_in_flight_make_one_more_call(self):
        self.h.device.hold = True
        self.b.handle_events(added(wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])))
        for i, k in ((3, KEYS[2]), (4, KEYS[3])):
            self.b.handle_events(added(wg_lease("10.5.%d.0/24" % i, "192.168.250.%d" % i, k)))
        self.assertEqual(len(self.h.calls()), 1)
        self.h.device.release()
        self.assertEqual(len(self.h.calls()), 2)
        self.assertEqual(len(self.h.calls()[1][0]), 2)
        self.h.device.release()
        self.assertEqual(len(self.h.device.device_peers), 3)

    def test_failed_batch_retried(self):
        self.h.device.fail_next = OSError("uapi: errno=22 preshared_key=%s" % PSK.hex())
        l2 = wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])
        self.b.handle_events(added(l2))
        self.assertEqual(self.h.device.device_peers, {})
        errors = [t for lvl, t in self.h.lines if lvl == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("errno=22", errors[0])
        self.h.clock.advance(5)
        self.assertEqual(list(self.h.device.device_peers), [KEYS[1].public])
        self.assertEqual(self.b.counters["peer_batch_failures"], 1)

    def test_psk_never_logged(self):
        self.h.device.fail_next = OSError("bad: %s %s %r" % (PSK.hex(), PSK_B64, PSK))
        leases = [wg_lease("10.5.%d.0/24" % i, "192.168.250.%d" % i, k)
                  for i, k in ((2, KEYS[1]), (3, KEYS[2]))]
        self.b.handle_events(added(*leases))
        self.h.clock.advance(5)
        self.b.handle_events(removed(leases[0]))
        self.b.handle_events(added(wg_lease("10.5.9.0/24", "192.168.250.9", data={})))
        self.assertTrue(len(self.h.lines) >= 5, self.h.lines)
        for _, text in self.h.lines:
            for secret in (PSK.hex(), PSK_B64, repr(PSK), self.b.key.raw.hex(),
                           wgkey.encode(self.b.key.raw)):
                self.assertNotIn(secret, text)


class ReconcileTests(unittest.TestCase):
    def test_first_list_removes_peers_of_leases_gone(self):
        h = Harness(self)
        dev = h.device
        stale = peer("10.5.9.0/24", "192.168.250.19", KEYS[3])
        kept = peer("10.5.2.0/24", "192.168.250.12", KEYS[1])
        dev.device_peers = {stale.public_key: stale, kept.public_key: kept}
        l2 = wg_lease("10.5.2.0/24", "192.168.250.12", KEYS[1])
        result = self.successResultOf(h.backend.reconcile([h.own, l2]))
        self.assertEqual(result, [("flannel-wg", KEYS[3].public)])
        self.assertEqual(list(dev.device_peers), [KEYS[1].public])
        h.backend.handle_events(added(l2))
        self.assertEqual(list(dev.device_peers), [KEYS[1].public])


class WiringTests(unittest.TestCase):
    def test_daemon_factory_passes_subnet_file(self):
        from flannel_tw.wiring import _backend_factory
        factory = _backend_factory("/srv/h1/subnet.env")
        self.assertEqual(factory("wireguard", None, IFACE).subnet_file, "/srv/h1/subnet.env")
        self.assertEqual(factory("host-gw", None, IFACE).name, "host-gw")


IFACE6 = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                  public_ip=IPv4Address("192.168.250.11"), mtu=1500,
                  addr6=IPv6Address("fd00:250::11"), public_ipv6=IPv6Address("fd00:250::11"))


def config6(backend='{"Type":"wireguard"}'):
    return parse_config('{"Network":"10.5.0.0/16","EnableIPv6":true,'
                        '"IPv6Network":"fc00::/48","Backend":%s}' % backend)


def dual_lease(n, key, ip6="fd00:250::%d"):
    k = {"PublicKey": key.public_b64}
    return Lease(subnet=IPv4Network("10.5.%d.0/24" % n),
                 attrs=LeaseAttrs(public_ip=IPv4Address("192.168.250.%d" % (10 + n)),
                                  backend_type="wireguard", backend_data=k,
                                  public_ipv6=IPv6Address(ip6 % (10 + n)),
                                  backend_v6_data=dict(k)),
                 ttl=86400, ipv6_subnet=IPv6Network("fc00:0:0:%d::/64" % n))


class DualStackTests(unittest.TestCase):
    def make(self, backend='{"Type":"wireguard"}', iface=IFACE6):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        self.opener, self.link = FakeDeviceOpener(), RecordingLink()
        b = WireguardBackend(task.Clock(), iface, subnet_file=os.path.join(d, "subnet.env"),
                             environ={}, open_device=self.opener, configure_link=self.link,
                             to_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        logged(b)
        cfg = config6(backend)
        attrs = self.successResultOf(b.prepare(cfg))
        self.successResultOf(b.start(cfg, dual_lease(1, b.key)))
        return b, attrs

    def test_separate_mode_two_devices_and_the_lease(self):
        b, attrs = self.make()
        self.assertEqual(sorted(self.opener.devices), ["flannel-wg", "flannel-wg-v6"])
        self.assertEqual(self.opener.devices["flannel-wg"].listen_port, 51820)
        self.assertEqual(self.opener.devices["flannel-wg-v6"].listen_port, 51821)
        self.assertEqual(self.opener.devices["flannel-wg-v6"].private_key, b.key.raw)
        k = b.key.public_b64
        self.assertEqual(attrs.to_json(),
                         '{"PublicIP":"192.168.250.11","PublicIPv6":"fd00:250::11",'
                         '"BackendType":"wireguard","BackendData":{"PublicKey":"%s"},'
                         '"BackendV6Data":{"PublicKey":"%s"}}' % (k, k))
        self.assertEqual(self.link.calls, [
            ("flannel-wg", IPv4Interface("10.5.1.0/32"), 1420, IPv4Network("10.5.0.0/16")),
            ("flannel-wg-v6", ip_iface6("fc00:0:0:1::/128"), 1420, IPv6Network("fc00::/48"))])

    def test_separate_mode_peers(self):
        b, _ = self.make()
        b.handle_events(added(dual_lease(2, KEYS[1])))
        v4 = self.opener.devices["flannel-wg"].set_peer_calls()
        v6 = self.opener.devices["flannel-wg-v6"].set_peer_calls()
        self.assertEqual(v4, [([WgPeer(KEYS[1].public, ("192.168.250.12", 51820),
                                       (IPv4Network("10.5.2.0/24"),))], [])])
        self.assertEqual(v6, [([WgPeer(KEYS[1].public, ("fd00:250::12", 51821),
                                       (IPv6Network("fc00:0:0:2::/64"),))], [])])
        b.handle_events(removed(dual_lease(2, KEYS[1])))
        self.assertEqual(self.opener.devices["flannel-wg-v6"].device_peers, {})

    def test_single_device_modes(self):
        both = (IPv4Network("10.5.2.0/24"), IPv6Network("fc00:0:0:2::/64"))
        for mode, ip6, endpoint in [
                ("auto", "fd00:250::%d", ("192.168.250.12", 51820)),       # ULA: v4
                ("auto", "2001:db8::%d", ("192.168.250.12", 51820)),       # ours is ULA
                ("ipv4", "2001:db8::%d", ("192.168.250.12", 51820)),
                ("ipv6", "fd00:250::%d", ("fd00:250::12", 51820))]:
            b, _ = self.make('{"Type":"wireguard","Mode":"%s"}' % mode)
            self.assertEqual(list(self.opener.devices), ["flannel-wg"])
            b.handle_events(added(dual_lease(2, KEYS[1], ip6)))
            self.assertEqual(self.opener.devices["flannel-wg"].set_peer_calls(),
                             [([WgPeer(KEYS[1].public, endpoint, both)], [])], mode)

    def test_auto_prefers_v6_between_global_addresses(self):
        iface = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                         public_ip=IPv4Address("192.168.250.11"), mtu=1500,
                         addr6=IPv6Address("2001:db8::11"), public_ipv6=IPv6Address("2001:db8::11"))
        b, _ = self.make('{"Type":"wireguard","Mode":"auto"}', iface=iface)
        b.handle_events(added(dual_lease(2, KEYS[1], "2001:db8::%d")))
        self.assertEqual(self.opener.devices["flannel-wg"].set_peer_calls()[0][0][0].endpoint,
                         ("2001:db8::12", 51820))
        # a public IPv4 on the peer: IPv4, whatever the IPv6 addresses
        l3 = dual_lease(3, KEYS[2], "2001:db8::%d")
        l3 = Lease(subnet=l3.subnet, ttl=l3.ttl, ipv6_subnet=l3.ipv6_subnet,
                   attrs=LeaseAttrs(IPv4Address("203.0.113.13"), "wireguard",
                                    l3.attrs.backend_data, l3.attrs.public_ipv6,
                                    l3.attrs.backend_v6_data))
        b.handle_events(added(l3))
        self.assertEqual(self.opener.devices["flannel-wg"].set_peer_calls()[1][0][0].endpoint,
                         ("203.0.113.13", 51820))

    def test_mode_ipv6_needs_ipv6(self):
        b = WireguardBackend(task.Clock(), IFACE, subnet_file="/nonexistent/subnet.env",
                             open_device=FakeDeviceOpener())
        f = self.failureResultOf(b.prepare(config('{"Type":"wireguard","Mode":"ipv6"}')),
                                 OptionsError)
        self.assertIn("EnableIPv6", f.getErrorMessage())


def ip_iface6(text):
    from ipaddress import IPv6Interface
    return IPv6Interface(text)


class DualStackWithoutV6AddressTests(unittest.TestCase):
    def test_warning_and_ipv4_only(self):
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        opener = FakeDeviceOpener()
        link = RecordingLink()
        b = WireguardBackend(task.Clock(), IFACE, subnet_file=os.path.join(d, "subnet.env"),
                             environ={}, open_device=opener, configure_link=link,
                             to_thread=lambda f, *a: defer.maybeDeferred(f, *a))
        lines = logged(b)
        cfg = config6()
        attrs = self.successResultOf(b.prepare(cfg))
        self.assertEqual(list(opener.devices), ["flannel-wg"])
        self.assertIsNone(attrs.public_ipv6)
        self.assertEqual(attrs.backend_v6_data, {"PublicKey": b.key.public_b64})
        self.assertEqual(len([t for lvl, t in lines if lvl == "warn"]), 1)
        self.successResultOf(b.start(cfg, dual_lease(1, b.key)))
        self.assertEqual([c[0] for c in link.calls], ["flannel-wg"])
        b.handle_events(added(dual_lease(2, KEYS[1])))
        self.assertEqual(opener.devices["flannel-wg"].set_peer_calls(),
                         [([WgPeer(KEYS[1].public, ("192.168.250.12", 51820),
                                   (IPv4Network("10.5.2.0/24"),))], [])])
        # Mode ipv6 cannot work without one
        b6 = WireguardBackend(task.Clock(), IFACE, subnet_file=os.path.join(d, "subnet.env"),
                              environ={}, open_device=FakeDeviceOpener())
        f = self.failureResultOf(b6.prepare(config6('{"Type":"wireguard","Mode":"ipv6"}')))
        self.assertIn("no IPv6 address", f.getErrorMessage())
