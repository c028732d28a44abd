"""Test helpers (formerly in tests/test_netconfig.py), shared by
tests/integration/test_netconfig.py, tests/unit/test_netconfig.py.
(No test module imports another: what several need lives here.)"""

import io

from twisted.internet import defer, reactor

from flannel_tw.tools import netconfig
from flannel_tw.testing.etcd import EtcdHTTPError


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
