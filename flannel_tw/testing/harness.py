"""Test helpers (formerly in tests/test_faults.py), shared by
tests/integration/test_daemon.py, tests/integration/test_faults.py,
tests/integration/test_fuzz.py, tests/integration/test_health.py,
tests/integration/test_lease_cas.py, tests/integration/test_lease_health.py,
tests/integration/test_lease_routing.py, tests/integration/test_tls.py,
tests/integration/test_wipe.py, tests/unit/test_fuzz.py, tests/unit/test_tls.py.
(No test module imports another: what several need lives here.)"""

import collections
import os
import socket
from ipaddress import IPv4Address

from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from flannel_tw import daemon as daemon_mod
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.model.events import REMOVED
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.etcd.registry import DEFAULT_PREFIX, EtcdV2Registry
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.testing.fakes import RecordingBackend
from flannel_tw.testing.polling import wait_until


PREFIX = DEFAULT_PREFIX
CONFIG = '{"Network": "10.5.0.0/16"}'
IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500)


def capture_logs(testcase):
    """Every twisted.logger event from now until the test ends, in a list."""
    events = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def logged(events, text, level=None):
    """The formatted messages among C{events} that contain C{text} (at C{level})."""
    out = []
    for e in events:
        if level is not None and e.get("log_level") != level:
            continue
        message = formatEvent(e) if "log_format" in e else ""
        if text in message:
            out.append(message)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingManager(SubnetManager):
    """The real subnet manager on etcd v2 (or on C{registry_class}'s keyspace), counting
    calls by name (for 'no tight loop' checks)."""

    def __init__(self, client, prefix=DEFAULT_PREFIX, rand=None, registry_class=EtcdV2Registry):
        SubnetManager.__init__(self, registry_class(client, prefix), rand=rand)
        self.calls = collections.Counter()

    def get_network_config(self):
        self.calls["get_network_config"] += 1
        return SubnetManager.get_network_config(self)

    def watch_leases(self, wait_index):
        self.calls["watch_leases"] += 1
        return SubnetManager.watch_leases(self, wait_index)

    def list_leases(self):
        self.calls["list_leases"] += 1
        return SubnetManager.list_leases(self)

    def acquire_lease(self, *a, **kw):
        self.calls["acquire_lease"] += 1
        return SubnetManager.acquire_lease(self, *a, **kw)


class DaemonHarness:
    """Builds an in-process FlannelDaemon on a real etcd with a RecordingBackend."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.subnet_file = os.path.join(self.dir, "run", "subnet.env")
        self.notified = []
        self.exits = []
        self.backends = []
        self.logs = capture_logs(self)

    def make_daemon(self, endpoints, prefix=PREFIX, tls=None, username=None, password=None,
                    iface=IFACE, notify=None, backoff=None, manager_class=CountingManager,
                    client_kw=None, api="v2", **settings):
        """C{api="v3"}: the v3 client (JSON gateway) and registry instead of v2's."""
        client_kw = dict(client_kw or {})
        client_kw.setdefault("request_timeout", 3.0)
        client_class, registry_class = EtcdV2Client, EtcdV2Registry
        if api == "v3":
            from flannel_tw.etcd.registry_v3 import EtcdV3Registry
            from flannel_tw.etcd.v3client import EtcdV3Client
            client_class, registry_class = EtcdV3Client, EtcdV3Registry
        client = client_class(reactor, endpoints, tls=tls, username=username,
                              password=password, **client_kw)
        self.addCleanup(client.close)
        manager = manager_class(client, prefix=prefix, registry_class=registry_class)

        def factory(name, reactor_, ext_iface):
            backend = RecordingBackend(ext_iface.public_ip, mtu=ext_iface.mtu - 28)
            self.backends.append(backend)
            return backend
        settings.setdefault("subnet_file", self.subnet_file)
        settings.setdefault("config_retry", 0.05)
        settings.setdefault("config_retry_max", 0.4)
        d = daemon_mod.FlannelDaemon(
            reactor, manager, iface, daemon_mod.DaemonSettings(**settings),
            backend_factory=factory, notify=notify or self.notified.append,
            exit=self.exits.append, backoff=backoff, etcd_client=client)
        return d

    def run_daemon(self, daemon):
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon

    def running(self, daemon):
        return wait_until(lambda: daemon.phase == daemon_mod.RUNNING
                          and daemon.watcher.state == "watching", timeout=20)

    @staticmethod
    def key(subnet, prefix=PREFIX):
        return "%s/subnets/%s-%d" % (prefix, subnet.network_address, subnet.prefixlen)

    def removed_events(self, backend):
        return [ev for e in backend.events if e[0] == "events" for ev in e[1]
                if ev.kind == REMOVED]

    def added_subnets(self, backend):
        return [str(ev.lease.subnet) for e in backend.events if e[0] == "events"
                for ev in e[1] if ev.kind != REMOVED]


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def exists(server, key):
    try:
        server.v2_get(key)
        return True
    except Exception:
        return False
