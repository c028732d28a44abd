# -*- test-case-name: tests.unit.test_keyspace, tests.integration.test_keyspace -*-
"""
C{--etcd-api=auto}: the subnet manager that, while the daemon waits for its config,
looks in both etcd keyspaces (v2 C{/v2/keys<prefix>/config}, v3 key C{<prefix>/config}),
chooses one with L{flannel_tw.model.keyspace.choose_keyspace}, and from then on is the
L{SubnetManager} on that keyspace's registry (the keeper, the watcher and the etcd probe
all run over it). Each keyspace's client and registry are built only when first asked
for, by the C{build} callable given (L{flannel_tw.wiring}).

An etcd without v2 (3.6+, or 3.5 without C{--enable-v2}: HTTP 404 on C{/v2/keys}) holds
no v2 config; that is not an error.
"""
import collections

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.etcd.errors import EtcdProtocolError, KeyNotFound
from flannel_tw.interfaces import ISubnetManager
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.model.config import parse_config
from flannel_tw.model.keyspace import V2, V3, choose_keyspace


class NoConfig(Exception):
    """Neither keyspace holds the network config (yet)."""


class NotChosen(Exception):
    """A lease operation before the keyspace was chosen (a bug in the caller)."""


@implementer(ISubnetManager)
class KeyspaceManager:
    """
    @param build: C{api -> (client, registry)} for C{"v2"} and C{"v3"}; called at most once
        per api.
    @param prefix: the etcd prefix (both keyspaces use it).
    @param where: C{(api, key) -> str}, where a key lives, for messages (e.g. a URL).
    @ivar chosen: C{"v2"}, C{"v3"} or None until a valid config was found.
    @ivar reason: why C{chosen} was chosen (the start-up line says it).
    """

    log = Logger()

    def __init__(self, build, prefix, where=None):
        self._build = build
        self.prefix = prefix
        self._where = where or (lambda api, key: "%s key %s" % (api, key))
        self._parts = {}
        self.chosen = None
        self.reason = None
        self.manager = None

    def part(self, api):
        """C{(client, registry)} of C{api}, built on first use."""
        if api not in self._parts:
            self._parts[api] = self._build(api)
        return self._parts[api]

    def built_clients(self):
        return [self._parts[api][0] for api in (V2, V3) if api in self._parts]

    def _chosen(self):
        if self.manager is None:
            raise NotChosen("the etcd keyspace is not chosen yet")
        return self.manager

    # -- choosing ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def _text(self, api):
        """The config text in C{api}'s keyspace, or None when it holds none."""
        try:
            text = yield self.part(api)[1].get_config()
        except KeyNotFound:
            return None
        except EtcdProtocolError as e:
            if api == V2 and e.status == 404:     # no v2 API on this etcd
                return None
            raise
        return text

    @defer.inlineCallbacks
    def get_network_config(self):
        """Deferred L{NetworkConfig}. Until chosen: both keyspaces are read and one chosen
        (fails with L{KeyspaceConflict}, L{NoConfig}, ConfigError or a transport error,
        and nothing is chosen); once chosen, the chosen keyspace's config."""
        if self.manager is not None:
            config = yield self.manager.get_network_config()
            return config
        key = self.prefix.rstrip("/") + "/config"
        v2_where, v3_where = self._where(V2, key), self._where(V3, key)
        v2_text = yield self._text(V2)
        v3_text = yield self._text(V3)
        choice = choose_keyspace(v2_text, v3_text, v2_where, v3_where)
        if choice is None:
            raise NoConfig("no network config in either etcd keyspace (v2 %s, v3 %s)"
                           % (v2_where, v3_where))
        config = parse_config(choice.text)    # an invalid config chooses nothing yet
        self.chosen, self.reason = choice.api, choice.reason
        self.manager = SubnetManager(self.part(choice.api)[1])
        self.log.info("Using etcd's {api} keyspace (--etcd-api=auto): {reason}",
                      api=choice.api, reason=choice.reason)
        return config

    # -- the chosen manager ------------------------------------------------------------

    @property
    def reused_leases(self):
        return self.manager.reused_leases if self.manager is not None else {}

    def skipped_counts(self):
        return self.manager.skipped_counts() if self.manager is not None else {}

    def acquire_lease(self, config, attrs, previous_subnet=None, previous_ipv6_subnet=None):
        return self._chosen().acquire_lease(config, attrs, previous_subnet,
                                            previous_ipv6_subnet=previous_ipv6_subnet)

    def renew_lease(self, lease):
        return self._chosen().renew_lease(lease)

    def list_leases(self):
        return self._chosen().list_leases()

    def watch_leases(self, wait_index):
        return self._chosen().watch_leases(wait_index)

    def get_lease(self, subnet, ipv6_subnet=None):
        return self._chosen().get_lease(subnet, ipv6_subnet)


class KeyspaceClient:
    """
    The daemon's view of the etcd client under a L{KeyspaceManager}: the chosen
    keyspace's client once chosen; before, the v2 client's attributes (the same
    endpoints and TLS files); error counts summed over every client built.
    """

    def __init__(self, keyspace):
        self._keyspace = keyspace

    def _current(self):
        return self._keyspace.part(self._keyspace.chosen or V2)[0]

    @property
    def error_counts(self):
        # summed over every client built, before and after the choice: a counter for
        # /metrics never goes down (the other keyspace's client is no longer used)
        total = collections.Counter()
        for client in self._keyspace.built_clients():
            total.update(client.error_counts)
        return total

    def watch_silence(self):
        if self._keyspace.chosen is None:
            return None
        return self._current().watch_silence()

    def close(self):
        return defer.gatherResults([defer.maybeDeferred(c.close)
                                    for c in self._keyspace.built_clients()]
                                   ).addCallback(lambda _: None)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._current(), name)
