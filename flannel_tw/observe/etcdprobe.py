# -*- test-case-name: tests.unit.test_etcd_health -*-
"""
The etcd health probe: a cheap quorum read every C{interval} seconds, so that /healthz
knows etcd answers even when the lease watch is idle (L{EtcdProbe.answered_at}).
"""
from twisted.internet import defer, task
from twisted.logger import Logger

from flannel_tw.etcd.errors import SERVER_CODES, EtcdError
from flannel_tw.model.config import ConfigError


class EtcdProbe:
    """
    @ivar answered_at: the reactor time etcd last answered (None before L{start}).
    """

    log = Logger()

    def __init__(self, reactor, manager, interval):
        self._reactor = reactor
        self._manager = manager
        self._interval = interval
        self._loop = None
        self._error = None
        self.answered_at = None

    def start(self):
        """Count etcd as answering now (the daemon just reached it), probe periodically."""
        self.answered_at = self._reactor.seconds()
        self._loop = task.LoopingCall(self.probe)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def answered_ago(self):
        """Seconds since etcd last answered (None before L{start})."""
        if self.answered_at is None:
            return None
        return self._reactor.seconds() - self.answered_at

    def probe(self):
        """
        One probe. An etcd error answer (e.g. the config key is gone after a wipe) still
        proves etcd answers; a transport failure does not, nor does a member that cannot
        serve (HTTP 5xx, etcd's 300/301: no leader; the client passes such a member over,
        so it only reaches us when no member could answer). Each distinct failure is
        logged once. The Deferred fires with None.
        """
        d = defer.maybeDeferred(self._manager.get_network_config)

        def ok(_):
            self.answered_at = self._reactor.seconds()
            if self._error is not None:
                self.log.info("etcd answers again")
                self._error = None

        def failed(f):
            if f.check(ConfigError) or (f.check(EtcdError)
                                        and f.value.error_code not in SERVER_CODES):
                self.answered_at = self._reactor.seconds()
            message = f.getErrorMessage()
            if message != self._error:
                self._error = message
                self.log.warn("etcd health probe failed: {error}", error=message)
        return d.addCallbacks(ok, failed)
