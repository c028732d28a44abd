"""Test helpers (formerly in tests/test_netconfig.py), shared by
tests/integration/test_netconfig.py, tests/integration/test_netconfig_ipv6.py,
tests/unit/test_netconfig.py.
(No test module imports another: what several need lives here.)"""

import io

from twisted.internet import defer, reactor

from flannel_tw.tools import netconfig
from flannel_tw.testing.etcd import EtcdHTTPError, shared_etcd, unique_prefix


CONFIG = '{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan"}}'


class Runner:
    """Helpers shared by the test classes: run the command in-process, read etcd."""

    @defer.inlineCallbacks
    def config(self, *argv, env=None, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        code = yield netconfig.run(reactor, list(argv), out, err,
                                   environ=dict(env or {}), stdin=io.StringIO(stdin))
        return code, out.getvalue(), err.getvalue()

    def stored(self, server, prefix):
        try:
            return server.v2_get(prefix + "/config")["node"]
        except EtcdHTTPError as e:
            if e.status == 404:
                return None
            raise


class SharedEtcdRunner(Runner):
    """L{Runner} on the suite's shared etcd, under a key prefix of the test's own: C{server},
    C{prefix}, and the C{env} that points the command at both. List it before
    C{unittest.TestCase} in the bases, so that its C{setUp} is the one that runs."""

    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.env = {"FLANNELD_ETCD_ENDPOINTS": self.server.url,
                    "FLANNELD_ETCD_PREFIX": self.prefix}
