"""Test helpers (formerly in tests/test_subnet_manager.py), shared by
flannel_tw/testing/harness.py, tests/integration/test_daemon.py,
tests/integration/test_faults.py, tests/integration/test_health.py,
tests/integration/test_lease_cas.py, tests/integration/test_lease_health.py,
tests/integration/test_lease_routing.py, tests/integration/test_subnet_manager.py,
tests/integration/test_tls.py, tests/integration/test_wipe.py, tests/unit/test_fuzz.py.
(No test module imports another: what several need lives here.)"""

import random
from ipaddress import IPv4Address

from twisted.internet import defer, reactor, task

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.lease.manager import SubnetManager


CONFIG_JSON = '{"Network": "10.5.0.0/16"}'


def attrs(ip):
    return LeaseAttrs(IPv4Address(ip))


def wait_until(predicate, timeout=10.0, interval=0.02):
    """Deferred that fires once predicate() is true; fails after timeout seconds."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def poll():
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("condition not met within %.1fs" % timeout)
            yield task.deferLater(reactor, interval, lambda: None)
    return poll()


class ManagerTestMixin:
    def make_manager(self, server=None, prefix=None, seed=None):
        server = server or self.server
        client = EtcdV2Client(reactor, [server.url])
        self.addCleanup(client.close)
        return SubnetManager(EtcdV2Registry(client, prefix=prefix or self.prefix),
                             rand=random.Random(seed))

    def raw(self, subnet_key):
        return self.server.v2_get(self.prefix + "/subnets/" + subnet_key)["node"]
