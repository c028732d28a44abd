"""
The vxlan backend: options and lease attrs (pure), the backend's event logic against a
recording fake kernel, and the netlink helpers of flannel_tw.net.kernel on a real kernel
inside a private network namespace (root only).
"""
import errno
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings, strategies as st
from pyroute2.netlink.exceptions import NetlinkError
from twisted.internet import defer
from twisted.logger import Logger, formatEvent
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.backend.registry import make_backend
from flannel_tw.backend.vxlan import (
    VxlanBackend, VxlanOptions, lease_attrs, parse_options, peer_from_lease)
from flannel_tw.config import parse_config
from flannel_tw.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.interfaces import IBackend
from flannel_tw.lease import Lease, LeaseAttrs
from flannel_tw.net.iface import ExtIface
from flannel_tw.net.kernel import (
    HostGwRoute, Kernel, KernelError, RouteEntry, VxlanPeer, VxlanSpec, fdb_request,
    neigh_request, route_request)

IFACE = ExtIface(name="eth0", index=7, addr=IPv4Address("192.168.250.11"),
                 public_ip=IPv4Address("192.168.250.11"), mtu=1500)
MAC1 = "82:4b:b6:2f:54:4e"
MAC2 = "82:4b:b6:2f:54:4f"


def config(backend='{"Type":"vxlan"}'):
    return parse_config('{"Network":"10.5.0.0/16","Backend":%s}' % backend)


def lease(subnet, ip, kind="vxlan", data=None):
    if kind == "vxlan" and data is None:
        data = {"VtepMAC": MAC1}
    return Lease(subnet=IPv4Network(subnet),
                 attrs=LeaseAttrs(public_ip=IPv4Address(ip), backend_type=kind,
                                  backend_data=data), ttl=86400)


def sync(f, *args):
    return defer.maybeDeferred(f, *args)


def logged(obj):
    """Replace obj.log with a Logger collecting formatted messages into the returned list."""
    events = []
    obj.log = Logger(observer=lambda e: events.append((e["log_level"].name, formatEvent(e))))
    return events


class FakeKernel:
    """
    Records every call of the Kernel methods the backends use; keeps routes in a dict.
    Batches (apply_*) record one "install"/"remove" per entry and their sizes in
    C{batches}; C{fail_for} fails only the entries of the given subnets.
    """

    def __init__(self):
        self.events = []
        self.fail = {}          # method name -> exception to raise
        self.fail_for = {}      # subnet -> exception for that entry's install only
        self.routes_now = {}    # subnet -> RouteEntry
        self.batches = []       # size of each apply_* call

    def _call(self, name, *args):
        self.events.append((name,) + args)
        if name in self.fail:
            raise self.fail[name]

    def ensure_vxlan(self, spec):
        self._call("ensure_vxlan", spec)
        return 12, "0a:0b:0c:0d:0e:0f", "created"

    def configure_vxlan(self, index, address):
        self._call("configure_vxlan", index, address)

    def _batch(self, changes, install, remove):
        self.batches.append(len(changes))
        out = []
        for have, target in changes:
            try:
                if have is not None:
                    self._call("remove", have)
                    remove(have)
                if target is not None:
                    self._call("install", target)
                    if target.subnet in self.fail_for:
                        raise self.fail_for[target.subnet]
                    install(target)
            except Exception as e:
                out.append(e)
            else:
                out.append(target)
        return out

    def apply_vxlan_peers(self, index, ext_index, changes, direct_routing=False):
        return self._batch(changes, lambda p: None, lambda p: None)

    def apply_hostgw(self, oif, changes):
        def install(route):
            self.routes_now[route.subnet] = RouteEntry(route.subnet, route.gateway, oif)
        return self._batch(changes, install,
                           lambda route: self.routes_now.pop(route.subnet, None))

    def routes(self, network):
        return list(self.routes_now.values())

    def remove_stale(self, network, keep_subnets, vxlan_index, ext_index, keep_macs=()):
        self._call("remove_stale", network, sorted(keep_subnets), vxlan_index, ext_index,
                   sorted(keep_macs))
        return ["route 10.5.99.0/24 via None"]


# -- pure parts ---------------------------------------------------------------------

class OptionsTests(unittest.TestCase):
    def test_defaults(self):
        self.assertEqual(parse_options({"Type": "vxlan"}), VxlanOptions(1, 0, False, False))
        self.assertEqual(parse_options({}), VxlanOptions())
        self.assertEqual(parse_options(None), VxlanOptions())

    def test_all_keys(self):
        self.assertEqual(parse_options({"Type": "vxlan", "VNI": 42, "Port": 4789, "GBP": True,
                                        "DirectRouting": True}),
                         VxlanOptions(42, 4789, True, True))

    def test_keys_without_regard_to_case(self):
        self.assertEqual(parse_options({"vni": 7, "PORT": 4789, "gbp": True,
                                        "directrouting": True}),
                         VxlanOptions(7, 4789, True, True))

    def test_last_matching_key_wins(self):
        # Go decodes keys in order, each onto the field it matches: the last one wins
        self.assertEqual(parse_options({"vni": 7, "VNI": 9}).vni, 9)
        self.assertEqual(parse_options({"VNI": 9, "vni": 7}).vni, 7)

    def test_null_keeps_default_zero_is_kept(self):
        self.assertEqual(parse_options({"VNI": None}).vni, 1)
        self.assertEqual(parse_options({"VNI": 0}).vni, 0)   # Go: an explicit 0 stays 0

    def test_bad_values_name_the_key(self):
        for backend, key in [({"VNI": "1"}, "VNI"), ({"VNI": 1 << 24}, "VNI"),
                             ({"VNI": -1}, "VNI"), ({"Port": 70000}, "Port"),
                             ({"Port": True}, "Port"), ({"GBP": 1}, "GBP"),
                             ({"DirectRouting": "yes"}, "DirectRouting")]:
            e = self.assertRaises(ValueError, parse_options, backend)
            self.assertIn("Backend.%s" % key, str(e))

    @given(st.integers(0, (1 << 24) - 1), st.integers(0, 65535), st.booleans(),
           st.booleans(), st.lists(st.booleans(), min_size=13, max_size=13))
    def test_any_case_any_value(self, vni, port, gbp, direct, upper):
        def case(name, flags):
            return "".join(c.upper() if u else c.lower() for c, u in zip(name, flags))
        backend = {case("VNI", upper[:3]): vni, case("Port", upper[3:7]): port,
                   case("GBP", upper[7:10]): gbp, case("DirectRouting", upper): direct}
        self.assertEqual(parse_options(backend), VxlanOptions(vni, port, gbp, direct))


class LeaseAttrsTests(unittest.TestCase):
    def test_exactly_as_flanneld(self):
        attrs = lease_attrs("10.0.0.1", "82:4B:B6:2F:54:4E")
        self.assertEqual(attrs.to_json(), '{"PublicIP":"10.0.0.1","BackendType":"vxlan",'
                                          '"BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}')
        self.assertEqual(LeaseAttrs.from_json(attrs.to_json()), attrs)

    def test_peer_from_flanneld_lease(self):
        text = ('{"PublicIP":"192.168.250.12","BackendType":"vxlan",'
                '"BackendData":{"VtepMAC":"82:4B:B6:2F:54:4E"}}')
        peer = peer_from_lease(Lease(IPv4Network("10.5.7.0/24"), LeaseAttrs.from_json(text)))
        self.assertEqual(peer, VxlanPeer(IPv4Network("10.5.7.0/24"),
                                         IPv4Address("192.168.250.12"), MAC1))
        self.assertEqual(peer.gateway, IPv4Address("10.5.7.0"))

    def test_peer_vtepmac_any_case(self):
        peer = peer_from_lease(lease("10.5.7.0/24", "1.2.3.4", data={"vtepmac": MAC2}))
        self.assertEqual(peer.mac, MAC2)

    def test_peer_without_mac(self):
        for data in (None, {}, {"VtepMAC": "nope"}, {"VtepMAC": 5}, "x"):
            self.assertRaises(ValueError, peer_from_lease,
                              lease("10.5.7.0/24", "1.2.3.4", data=data or {"x": 1}
                                    if data is None else data))

    @given(st.binary(min_size=6, max_size=6))
    def test_any_mac_round_trips(self, raw):
        mac = ":".join("%02X" % b for b in raw)
        attrs = lease_attrs("10.0.0.1", mac)
        back = LeaseAttrs.from_json(attrs.to_json())
        self.assertEqual(peer_from_lease(Lease(IPv4Network("10.5.1.0/24"), back)).mac,
                         mac.lower())


# -- the backend against a fake kernel ---------------------------------------------------

class BackendTests(unittest.TestCase):
    def setUp(self):
        self.kernel = FakeKernel()
        self.backend = VxlanBackend(None, IFACE, kernel=self.kernel, to_thread=sync)
        self.log = logged(self.backend)

    @defer.inlineCallbacks
    def started(self, backend_json='{"Type":"vxlan"}'):
        attrs = yield self.backend.prepare(config(backend_json))
        yield self.backend.start(config(backend_json), lease("10.5.1.0/24", "192.168.250.11"))
        del self.kernel.events[:]
        return attrs

    def test_interface_and_registry(self):
        verifyObject(IBackend, self.backend)
        self.assertIsInstance(make_backend("VXLAN", None, IFACE), VxlanBackend)

    @defer.inlineCallbacks
    def test_prepare_and_start(self):
        attrs = yield self.backend.prepare(config('{"Type":"vxlan","VNI":3,"Port":4789,'
                                                  '"GBP":true}'))
        self.assertEqual(attrs, lease_attrs("192.168.250.11", "0a:0b:0c:0d:0e:0f"))
        self.assertEqual(self.backend.mtu, 1450)
        self.assertEqual(self.kernel.events, [("ensure_vxlan", VxlanSpec(
            vni=3, link_index=7, local=IPv4Address("192.168.250.11"), port=4789, gbp=True))])
        yield self.backend.start(config(), lease("10.5.1.0/24", "192.168.250.11"))
        self.assertEqual(self.kernel.events[-1], ("configure_vxlan", 12, IPv4Address("10.5.1.0")))
        yield self.backend.reconfigure(config(), lease("10.5.9.0/24", "192.168.250.11"))
        self.assertEqual(self.kernel.events[-1], ("configure_vxlan", 12, IPv4Address("10.5.9.0")))
        self.assertEqual(self.backend.own_subnet, IPv4Network("10.5.9.0/24"))

    def test_bad_options_fail_prepare(self):
        d = self.backend.prepare(config('{"Type":"vxlan","VNI":"x"}'))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.kernel.events, [])

    @defer.inlineCallbacks
    def test_add_change_remove(self):
        yield self.started()
        a = lease("10.5.2.0/24", "192.168.250.12")
        peer = VxlanPeer(a.subnet, a.attrs.public_ip, MAC1)
        self.backend.handle_events([LeaseEvent(ADDED, a)])
        self.backend.handle_events([LeaseEvent(ADDED, a)])       # same again: nothing to do
        moved = lease("10.5.2.0/24", "192.168.250.13", data={"VtepMAC": MAC2})
        peer2 = VxlanPeer(a.subnet, IPv4Address("192.168.250.13"), MAC2)
        self.backend.handle_events([LeaseEvent(ADDED, moved)])
        self.backend.handle_events([LeaseEvent(REMOVED, moved)])
        yield self.backend.settle()
        self.assertEqual(self.kernel.events, [("install", peer), ("remove", peer),
                                              ("install", peer2), ("remove", peer2)])
        self.assertEqual(self.backend.installed, {})

    @defer.inlineCallbacks
    def test_own_and_other_types_ignored(self):
        yield self.started()
        udp = lease("10.5.3.0/24", "192.168.250.13", kind="")
        hostgw = lease("10.5.4.0/24", "192.168.250.14", kind="host-gw")
        own = lease("10.5.1.0/24", "192.168.250.11")
        for _ in range(3):
            self.backend.handle_events([LeaseEvent(ADDED, udp), LeaseEvent(ADDED, hostgw),
                                        LeaseEvent(ADDED, own)])
        yield self.backend.settle()
        self.assertEqual(self.kernel.events, [])
        ignored = [m for _, m in self.log if m.startswith("Ignoring non-vxlan")]
        self.assertEqual(len(ignored), 2, ignored)
        self.assertIn("10.5.3.0/24", ignored[0])
        self.assertIn("type 'udp'", ignored[0])

    @defer.inlineCallbacks
    def test_lease_changing_type_is_removed(self):
        yield self.started()
        a = lease("10.5.2.0/24", "192.168.250.12")
        self.backend.handle_events([LeaseEvent(ADDED, a)])
        self.backend.handle_events([LeaseEvent(ADDED, lease("10.5.2.0/24", "192.168.250.12",
                                                            kind="host-gw"))])
        yield self.backend.settle()
        self.assertEqual([e[0] for e in self.kernel.events], ["install", "remove"])

    @defer.inlineCallbacks
    def test_failure_logged_naming_the_peer_then_retried(self):
        yield self.started()
        self.kernel.fail["install"] = NetlinkError(101, "Network is unreachable")
        a = lease("10.5.2.0/24", "192.168.250.12")
        self.backend.handle_events([LeaseEvent(ADDED, a)])
        yield self.backend.resync()
        yield self.backend.resync()
        errors = [m for level, m in self.log if level == "error"]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("10.5.2.0/24", errors[0])
        self.assertIn("192.168.250.12", errors[0])
        self.assertEqual(self.backend.installed, {})
        del self.kernel.fail["install"]
        yield self.backend.resync()
        self.assertIn(a.subnet, self.backend.installed)
        self.assertTrue(any("after an earlier failure" in m for _, m in self.log))

    @defer.inlineCallbacks
    def test_bad_backend_data(self):
        yield self.started()
        self.backend.handle_events([LeaseEvent(ADDED, lease("10.5.2.0/24", "192.168.250.12",
                                                            data={"VtepMAC": "zz"}))])
        yield self.backend.settle()
        self.assertEqual(self.kernel.events, [])
        self.assertTrue(any("no valid VtepMAC" in m for level, m in self.log if level == "error"))

    @defer.inlineCallbacks
    def test_reconcile_keeps_listed_vxlan_leases(self):
        yield self.started()
        leases = [lease("10.5.1.0/24", "192.168.250.11"),                     # our own
                  lease("10.5.2.0/24", "192.168.250.12", data={"VtepMAC": MAC2}),
                  lease("10.5.3.0/24", "192.168.250.13", kind="host-gw")]
        removed = yield self.backend.reconcile(leases)
        self.assertEqual(removed, ["route 10.5.99.0/24 via None"])
        self.assertEqual(self.kernel.events, [
            ("remove_stale", IPv4Network("10.5.0.0/16"), [IPv4Network("10.5.2.0/24")], 12, 7,
             [MAC2])])
        self.assertTrue(any("left from an earlier run" in m for _, m in self.log))


class ManualThread:
    """A to_thread that holds each call until run() (a batch "in the kernel")."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def run(self):
        f, args, d = self.calls.pop(0)
        d.callback(f(*args))


def vxlan_lease(i, ip="192.168.250.12"):
    return lease("10.5.%d.0/24" % i, ip, data={"VtepMAC": "02:00:00:00:00:%02x" % i})


class BatchTests(unittest.TestCase):
    """Lease events reach the kernel in batches: one thread call each, in order."""

    def setUp(self):
        self.kernel = FakeKernel()
        self.backend = VxlanBackend(None, IFACE, kernel=self.kernel, to_thread=sync)
        self.log = logged(self.backend)
        self.successResultOf(self.backend.prepare(config()))
        self.successResultOf(self.backend.start(config(), lease("10.5.1.0/24",
                                                                "192.168.250.11")))
        del self.kernel.events[:]
        del self.log[:]
        self.thread = ManualThread()
        self.backend._to_thread = self.thread

    def test_one_thread_call_per_list_in_order(self):
        events = [LeaseEvent(ADDED, vxlan_lease(i)) for i in range(2, 202)]
        self.backend.handle_events(events)
        self.assertEqual(len(self.thread.calls), 1)
        self.thread.run()
        self.assertEqual(self.kernel.batches, [200])
        self.assertEqual([e[1].subnet for e in self.kernel.events],
                         [e.lease.subnet for e in events])
        self.assertEqual(len(self.backend.installed), 200)
        self.assertEqual(self.backend.batches, 1)
        info = [m for level, m in self.log if level == "info"]
        self.assertEqual(len(info), 1, info)          # a summary, not 200 lines
        self.assertIn("batch of 200 changes", info[0])
        self.assertIn("200 installed, 0 removed, 0 failed", info[0])

    def test_events_during_a_batch_make_the_next_one(self):
        a, b, c = vxlan_lease(2), vxlan_lease(3), vxlan_lease(4)
        self.backend.handle_events([LeaseEvent(ADDED, a)])
        self.assertEqual(len(self.thread.calls), 1)               # in the kernel
        moved = vxlan_lease(2, ip="192.168.250.99")
        self.backend.handle_events([LeaseEvent(ADDED, b)])
        self.backend.handle_events([LeaseEvent(ADDED, moved), LeaseEvent(ADDED, c)])
        self.backend.handle_events([LeaseEvent(REMOVED, b)])
        self.assertEqual(len(self.thread.calls), 1)               # the rest waits
        d = self.backend.settle()
        self.thread.run()
        self.assertEqual(len(self.thread.calls), 1)               # one batch for the rest
        self.thread.run()
        self.successResultOf(d)
        peer = peer_from_lease
        # b came and went before its batch: nothing for it; a replaced; c added
        self.assertEqual(self.kernel.batches, [1, 2])
        self.assertEqual(self.kernel.events, [
            ("install", peer(a)), ("remove", peer(a)), ("install", peer(moved)),
            ("install", peer(c))])
        self.assertEqual(sorted(self.backend.installed), [a.subnet, c.subnet])

    def test_a_failed_entry_fails_alone_and_is_retried(self):
        leases = [vxlan_lease(i) for i in (2, 3, 4)]
        self.kernel.fail_for[leases[1].subnet] = NetlinkError(22, "Invalid argument")
        self.backend.handle_events([LeaseEvent(ADDED, l) for l in leases])
        self.thread.run()
        self.assertEqual(sorted(self.backend.installed), [leases[0].subnet, leases[2].subnet])
        self.assertIn(leases[1].subnet, self.backend.failed)
        errors = [m for level, m in self.log if level == "error"]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("10.5.3.0/24", errors[0])
        self.assertIn("Invalid argument", errors[0])
        del self.kernel.fail_for[leases[1].subnet]
        d = self.backend.resync()
        self.thread.run()
        self.successResultOf(d)
        self.assertEqual(self.kernel.batches, [3, 1])             # only the failed one again
        self.assertEqual(len(self.backend.installed), 3)

    def test_many_failures_log_a_bounded_number_of_lines(self):
        leases = [vxlan_lease(i) for i in range(2, 52)]
        for l in leases:
            self.kernel.fail_for[l.subnet] = NetlinkError(22, "Invalid argument")
        self.backend.handle_events([LeaseEvent(ADDED, l) for l in leases])
        self.thread.run()
        errors = [m for level, m in self.log if level == "error"]
        self.assertEqual(len(errors), 10)
        self.assertEqual(len(self.backend.failed), 50)
        self.assertTrue(any("50 failed (the first 10 named above)" in m for _, m in self.log))

    def test_a_failed_thread_call_fails_the_batch_only(self):
        self.backend.handle_events([LeaseEvent(ADDED, vxlan_lease(2))])
        f, args, d = self.thread.calls.pop(0)
        d.errback(RuntimeError("socket gone"))
        self.assertEqual(self.backend.installed, {})
        self.assertTrue(any("a batch of 1 changes failed: socket gone" in m
                            for level, m in self.log if level == "error"))
        self.backend.handle_events([LeaseEvent(ADDED, vxlan_lease(3))])
        self.thread.run()                                          # the queue goes on
        self.assertEqual(list(self.backend.installed), [IPv4Network("10.5.3.0/24")])


# -- the netlink requests, byte for byte as pyroute2 packs them ------------------------

class EncodingTests(unittest.TestCase):
    """Our packed requests equal pyroute2's (IPBatch compiles without sending)."""

    ipb = None

    def pyroute2(self, call):
        if EncodingTests.ipb is None:
            from pyroute2 import IPBatch
            EncodingTests.ipb = IPBatch()
        ipb = EncodingTests.ipb
        ipb.reset()
        call(ipb)
        data = bytes(ipb.batch)
        # nlmsghdr: our sequence numbers and flags are compared apart from pyroute2's
        return data[4:8], data[16:]

    def ours(self, request):
        kind, flags, payload = request
        return kind.to_bytes(2, "little") + flags.to_bytes(2, "little"), payload

    def check(self, request, call):
        self.assertEqual(self.ours(request), self.pyroute2(call))

    # 0.0.0.0 is left out: pyroute2 omits an all-zero RTA_DST / RTA_GATEWAY (never ours)
    @settings(max_examples=40)
    @given(st.integers(1 << 24, (1 << 32) - 1), st.integers(8, 32),
           st.integers(1, (1 << 32) - 1), st.integers(1, (1 << 31) - 1), st.booleans())
    def test_routes(self, net, plen, gw, oif, onlink):
        subnet = IPv4Network((net, plen), strict=False)
        gw = IPv4Address(gw)
        kw = dict(dst=str(subnet.network_address), dst_len=plen, gateway=str(gw), oif=oif,
                  table=254)
        self.check(route_request("replace", subnet, gw, oif, onlink),
                   lambda i: i.route("replace", proto=3, flags=4 if onlink else 0, **kw))
        self.check(route_request("del", subnet, gw, oif), lambda i: i.route("del", **kw))

    def test_route_del_without_gateway(self):
        subnet = IPv4Network("10.5.2.0/24")
        self.check(route_request("del", subnet, None, 5),
                   lambda i: i.route("del", dst="10.5.2.0", dst_len=24, oif=5, table=254))

    @settings(max_examples=40)
    @given(st.integers(1, (1 << 31) - 1), st.integers(1, (1 << 32) - 1),
           st.binary(min_size=6, max_size=6))
    def test_neighbours_and_fdb(self, index, ip, raw):
        mac = ":".join("%02x" % b for b in raw)
        ip = IPv4Address(ip)
        for command in ("replace", "del"):
            self.check(neigh_request(command, index, ip, mac),
                       lambda i: i.neigh(command, ifindex=index, dst=str(ip), lladdr=mac,
                                         state=0x80))
            self.check(fdb_request(command, index, mac, ip),
                       lambda i: i.neigh(command, family=socket.AF_BRIDGE, ifindex=index,
                                         lladdr=mac, dst=str(ip), state=0xc0, flags=2))


# -- flannel_tw.net.kernel on a real kernel -------------------------------------------------

def _root_skip():
    if os.geteuid() != 0:
        return "needs root (a private network namespace)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


def sh(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


class NamespaceCase(unittest.TestCase):
    """A fresh namespace with a veth pair, eth0 = 192.168.250.11/24 (peer 'peer' .12)."""

    skip = _root_skip()

    def setUp(self):
        self.ns = "fltk" + uuid.uuid4().hex[:8]
        sh("ip", "netns", "add", self.ns)
        self.addCleanup(sh, "ip", "netns", "del", self.ns)
        self.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer")
        self.ip("addr", "add", "192.168.250.11/24", "dev", "eth0")
        self.ip("link", "set", "eth0", "up")
        self.ip("link", "set", "peer", "up")
        self.ip("link", "set", "lo", "up")
        self.kernel = Kernel(netns=self.ns)
        self.addCleanup(self.kernel.close)
        self.eth0 = self.kernel.link_index("eth0")

    def ip(self, *args):
        return sh("ip", "-n", self.ns, *args)

    def bridge(self, *args):
        return sh("bridge", "-n", self.ns, *args)


class KernelVxlanTests(NamespaceCase):
    def spec(self, **kw):
        kw.setdefault("vni", 1)
        kw.setdefault("link_index", self.eth0)
        kw.setdefault("local", IPv4Address("192.168.250.11"))
        return VxlanSpec(**kw)

    def test_create_reuse_recreate(self):
        index, mac, what = self.kernel.ensure_vxlan(self.spec())
        self.assertEqual(what, "created")
        details = self.ip("-d", "link", "show", "flannel.1")
        self.assertIn("vxlan id 1 local 192.168.250.11 dev eth0", details)
        self.assertIn("dstport 8472 nolearning", details)
        self.assertIn("mtu 1450", details)
        self.assertIn("link/ether %s" % mac, details)
        again = self.kernel.ensure_vxlan(self.spec())
        self.assertEqual(again, (index, mac, "reused"))
        _, mac2, what = self.kernel.ensure_vxlan(self.spec(port=4789))
        self.assertTrue(what.startswith("recreated"), what)
        self.assertIn("port 8472 (want 4789)", what)
        self.assertIn("dstport 4789", self.ip("-d", "link", "show", "flannel.1"))

    def test_gbp_and_learning_make_it_incompatible(self):
        self.ip("link", "add", "flannel.5", "type", "vxlan", "id", "5", "dev", "eth0",
                "local", "192.168.250.11", "dstport", "0")      # learning on
        _, _, what = self.kernel.ensure_vxlan(self.spec(vni=5, gbp=True))
        self.assertIn("learning 1 (want 0)", what)
        self.assertIn("gbp False (want True)", what)
        self.assertIn(" gbp ", self.ip("-d", "link", "show", "flannel.5"))
        self.assertEqual(self.kernel.ensure_vxlan(self.spec(vni=5, gbp=True))[2], "reused")

    def test_not_a_vxlan_device(self):
        self.ip("link", "add", "flannel.1", "type", "bridge")
        _, _, what = self.kernel.ensure_vxlan(self.spec())
        self.assertIn("link type bridge", what)

    def test_address(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        out = self.ip("-4", "addr", "show", "dev", "flannel.1")
        self.assertEqual(out.count("inet "), 1)
        self.assertIn("inet 10.5.1.0/32", out)
        self.assertIn("UP", self.ip("link", "show", "flannel.1"))
        self.kernel.configure_vxlan(index, IPv4Address("10.5.2.0"))      # one other: replaced
        out = self.ip("-4", "addr", "show", "dev", "flannel.1")
        self.assertEqual(out.count("inet "), 1)
        self.assertIn("inet 10.5.2.0/32", out)
        self.ip("addr", "add", "10.9.9.9/32", "dev", "flannel.1")
        self.ip("addr", "add", "10.9.9.8/32", "dev", "flannel.1")
        e = self.assertRaises(KernelError, self.kernel.configure_vxlan, index,
                              IPv4Address("10.5.3.0"))
        self.assertIn("incompatible addresses", str(e))

    def entries(self):
        return (self.ip("route", "show", "dev", "flannel.1"),
                self.ip("neigh", "show", "dev", "flannel.1"),
                self.bridge("fdb", "show", "dev", "flannel.1"))

    def test_peer_entries_exactly_once(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        peer = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        for _ in range(2):
            got = self.kernel.install_vxlan_peer(index, self.eth0, peer)
        self.assertFalse(got.direct)
        routes, neigh, fdb = self.entries()
        self.assertEqual(routes.strip(), "10.5.2.0/24 via 10.5.2.0 onlink")
        self.assertEqual(neigh.strip(), "10.5.2.0 lladdr %s PERMANENT" % MAC1)
        self.assertEqual([l for l in fdb.splitlines() if "dst" in l],
                         ["%s dst 192.168.250.12 self permanent" % MAC1])
        self.assertEqual(self.kernel.fdb(index), [(MAC1, IPv4Address("192.168.250.12"))])
        self.assertEqual(self.kernel.neighbours(index), [(IPv4Address("10.5.2.0"), MAC1)])
        self.kernel.remove_vxlan_peer(index, self.eth0, peer)
        self.kernel.remove_vxlan_peer(index, self.eth0, peer)          # already gone: fine
        routes, neigh, fdb = self.entries()
        self.assertEqual((routes.strip(), neigh.strip()), ("", ""))
        self.assertNotIn("dst", fdb)

    def test_direct_routing(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        near = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        got = self.kernel.install_vxlan_peer(index, self.eth0, near, direct_routing=True)
        self.assertTrue(got.direct)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(),
                         "10.5.2.0/24 via 192.168.250.12 dev eth0")
        self.assertEqual(self.entries()[1].strip(), "")
        self.ip("route", "add", "10.77.0.0/16", "via", "192.168.250.1")
        far = VxlanPeer(IPv4Network("10.5.3.0/24"), IPv4Address("10.77.0.1"), MAC2)
        self.assertFalse(self.kernel.install_vxlan_peer(index, self.eth0, far,
                                                        direct_routing=True).direct)
        self.kernel.remove_vxlan_peer(index, self.eth0, got)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(), "")

    def test_failed_route_undoes_neighbour_and_fdb(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))

        class Failing(Kernel):
            def _peer_route(self, peer, index):     # a device that does not exist
                return route_request("replace", peer.subnet, peer.gateway, 999999,
                                     onlink=True)
        peer = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        failing = Failing(self.ns)
        self.addCleanup(failing.close)
        e = self.assertRaises(NetlinkError, failing.install_vxlan_peer, index, self.eth0,
                              peer)
        self.assertEqual(e.code, errno.ENODEV)
        routes, neigh, fdb = self.entries()
        self.assertEqual((routes.strip(), neigh.strip()), ("", ""))
        self.assertNotIn("dst", fdb)

    def test_batch_failure_undoes_only_that_entry(self):
        """One batch, three peers; the middle one's route fails: only its entries go."""
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        bad = IPv4Network("10.5.3.0/24")

        class Failing(Kernel):
            def _peer_route(self, peer, index):
                if peer.subnet == bad:
                    index = 999999
                return Kernel._peer_route(self, peer, index)
        peers = [VxlanPeer(IPv4Network("10.5.%d.0/24" % i), IPv4Address("192.168.250.%d" % i),
                           "02:00:00:00:00:%02x" % i) for i in (2, 3, 4)]
        failing = Failing(self.ns)
        self.addCleanup(failing.close)
        results = failing.apply_vxlan_peers(index, self.eth0, [(None, p) for p in peers])
        self.assertEqual(results[0], peers[0])
        self.assertIsInstance(results[1], NetlinkError)
        self.assertEqual(results[2], peers[2])
        self.assertEqual(sorted(r.subnet for r in self.kernel.routes(IPv4Network("10.5.0.0/16"))),
                         [peers[0].subnet, peers[2].subnet])
        self.assertEqual(sorted(self.kernel.neighbours(index)),
                         [(p.gateway, p.mac) for p in (peers[0], peers[2])])
        self.assertEqual(sorted(self.kernel.fdb(index)),
                         [(p.mac, p.public_ip) for p in (peers[0], peers[2])])

    def test_big_batch_one_socket_few_datagrams(self):
        """1,000 peers in one call: every entry in place, a handful of datagrams."""
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        peers = [VxlanPeer(IPv4Network("10.%d.%d.0/24" % (6 + i // 256, i % 256)),
                           IPv4Address("192.168.250.%d" % (100 + i % 100)),
                           "02:00:00:00:%02x:%02x" % (i >> 8, i & 255)) for i in range(1000)]
        before = self.kernel.netlink.sends
        results = self.kernel.apply_vxlan_peers(index, self.eth0, [(None, p) for p in peers])
        self.assertEqual(results, peers)
        self.assertLessEqual(self.kernel.netlink.sends - before, 3 * 4)   # 4 windows
        self.assertEqual(len(self.kernel.routes(IPv4Network("10.0.0.0/8"))), 1000)
        self.assertEqual(len(self.kernel.neighbours(index)), 1000)
        self.assertEqual(len(self.kernel.fdb(index)), 1000)
        # moved: remove + install in the same batch, and removals only
        moved = [replace(p, public_ip=IPv4Address("192.168.250.9")) for p in peers[:10]]
        changes = [(p, m) for p, m in zip(peers[:10], moved)] + [(p, None) for p in peers[10:]]
        results = self.kernel.apply_vxlan_peers(index, self.eth0, changes)
        self.assertEqual(results, moved + [None] * 990)
        self.assertEqual(sorted(self.kernel.fdb(index)),
                         sorted((m.mac, m.public_ip) for m in moved))
        self.assertEqual(len(self.kernel.routes(IPv4Network("10.0.0.0/8"))), 10)

    def test_remove_stale(self):
        index, _, _ = self.kernel.ensure_vxlan(self.spec())
        self.kernel.configure_vxlan(index, IPv4Address("10.5.1.0"))
        keep = VxlanPeer(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"), MAC1)
        gone = VxlanPeer(IPv4Network("10.5.3.0/24"), IPv4Address("192.168.250.13"), MAC2)
        self.kernel.install_vxlan_peer(index, self.eth0, keep)
        self.kernel.install_vxlan_peer(index, self.eth0, gone)
        self.ip("route", "add", "10.5.4.0/24", "via", "192.168.250.14", "dev", "eth0")
        self.ip("route", "add", "10.6.0.0/24", "via", "192.168.250.14", "dev", "eth0")  # not ours
        removed = self.kernel.remove_stale(IPv4Network("10.5.0.0/16"), [keep.subnet], index,
                                           self.eth0, [MAC1])
        self.assertEqual(sorted(removed), sorted([
            "route 10.5.3.0/24 via 10.5.3.0", "route 10.5.4.0/24 via 192.168.250.14",
            "neighbour 10.5.3.0 lladdr %s" % MAC2, "fdb %s dst 192.168.250.13" % MAC2]))
        routes, neigh, fdb = self.entries()
        self.assertEqual(routes.strip(), "10.5.2.0/24 via 10.5.2.0 onlink")
        self.assertNotIn(MAC2, neigh + fdb)
        self.assertIn("10.6.0.0/24", self.ip("route"))
        self.assertNotIn("10.5.4.0", self.ip("route"))


class KernelHostGwTests(NamespaceCase):
    def test_route_replace_and_check(self):
        route = HostGwRoute(IPv4Network("10.5.2.0/24"), IPv4Address("192.168.250.12"))
        for _ in range(2):
            self.kernel.install_hostgw(route, self.eth0)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(),
                         "10.5.2.0/24 via 192.168.250.12 dev eth0")
        self.assertTrue(self.kernel.has_route(route.subnet, route.gateway, self.eth0))
        moved = HostGwRoute(route.subnet, IPv4Address("192.168.250.13"))
        self.kernel.install_hostgw(moved, self.eth0)
        self.assertEqual(self.ip("route", "show", "10.5.2.0/24").strip(),
                         "10.5.2.0/24 via 192.168.250.13 dev eth0")
        self.assertFalse(self.kernel.has_route(route.subnet, route.gateway, self.eth0))
        self.kernel.remove_hostgw(route, self.eth0)      # not that gateway: stays
        self.assertIn("10.5.2.0/24", self.ip("route"))
        self.kernel.remove_hostgw(moved, self.eth0)
        self.assertNotIn("10.5.2.0/24", self.ip("route"))

    def test_unreachable_gateway(self):
        route = HostGwRoute(IPv4Network("10.5.2.0/24"), IPv4Address("10.77.0.1"))
        e = self.assertRaises(NetlinkError, self.kernel.install_hostgw, route, self.eth0)
        self.assertEqual(e.code, 101)   # ENETUNREACH: not on the link
