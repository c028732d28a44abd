# -*- test-case-name: tests.integration.test_subnet_manager, tests.unit.test_registry -*-
"""
The registry on etcd v2: the raw store under flannel's prefix, with flanneld v0.10's
exact requests (flannel-compat.md sections 2 and 3). No policy lives here: which lease
to take, when to renew and what a key or value means are decided by
L{flannel_tw.lease.manager.SubnetManager} on top of any L{IRegistry}.

Requests, as flanneld v0.10 sends them:
- config: C{GET <prefix>/config?quorum=true&recursive=false&sorted=false};
- list: C{GET <prefix>/subnets?quorum=true&recursive=true&sorted=false}; a missing
  directory is an empty list at the error's index;
- one lease: C{GET <prefix>/subnets/<name>?quorum=true&recursive=false&sorted=false};
- create-only: C{PUT ...?prevExist=false} (form C{ttl=N&value=V});
- conditional set: C{PUT ...?prevIndex=N} (or C{?prevValue=V});
- delete: C{DELETE <key>};
- values: each write is in the v2 writer's form (L{v2_value}): the vxlan backend's
  BackendData is flanneld v0.20's C{{"VNI":n,"VtepMAC":...}} (what the v3 keyspace gets),
  and an IPv4-only vxlan value loses the VNI here, as flanneld v0.10 writes it;
- watch: C{GET <prefix>/subnets?recursive=true&wait=true&waitIndex=N}, detecting a
  wiped or restored cluster; nodes deeper than one level, and directories, are stepped
  past here (they are no lease change).
"""
import re
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.etcd.errors import KeyNotFound
from flannel_tw.interfaces import IRegistry
from flannel_tw.model.config import DEFAULT_PREFIX

REMOVAL_ACTIONS = frozenset(["delete", "expire", "compareAndDelete"])

_V020_VXLAN = re.compile(r'(\{"PublicIP":"[0-9.]*","BackendType":"vxlan","BackendData":\{)'
                         r'"VNI":[0-9]+,("VtepMAC":"[0-9a-f:]*"\}\})\Z')


def v2_value(text):
    """
    flanneld v0.10's form of one of our values: an IPv4-only vxlan value written with
    v0.20's BackendData C{{"VNI":n,"VtepMAC":"..."}} loses C{"VNI":n} (v0.10 writes
    C{{"VtepMAC":"..."}}; both versions read both forms). Anything else is unchanged.
    """
    m = _V020_VXLAN.match(text)
    return text if m is None else m.group(1) + m.group(2)


@dataclass(frozen=True)
class Record:
    """
    One key under subnets/ as stored: C{key} the full key, C{value} the text (None when
    the store has none), C{ttl} the seconds left (None: no TTL), C{modified_index} the
    store's index of the last write to it.
    """
    key: str
    value: Optional[str]
    ttl: Optional[int]
    modified_index: int


@dataclass(frozen=True)
class Change:
    """One change under subnets/: C{removed} (deleted or expired; C{record.value} is
    None) or written; C{prev_value} the value before a removal (None: unknown)."""
    removed: bool
    record: Record
    prev_value: Optional[str] = None


def _record(node):
    return Record(key=node.key, value=node.value, ttl=node.ttl,
                  modified_index=node.modified_index)


def _answer(response):
    return _record(response.node)


@implementer(IRegistry)
class EtcdV2Registry:
    """L{IRegistry} on an L{flannel_tw.etcd.client.EtcdV2Client}."""

    def __init__(self, client, prefix=DEFAULT_PREFIX):
        self._client = client
        self.prefix = prefix.rstrip("/") or "/"

    @property
    def subnets_key(self):
        return self.prefix + "/subnets"

    def key(self, name):
        return "%s/%s" % (self.subnets_key, name)

    def _is_direct_child(self, key):
        parent, _, name = (key or "").rstrip("/").rpartition("/")
        return parent == self.subnets_key and bool(name)

    @defer.inlineCallbacks
    def get_config(self):
        resp = yield self._client.get(self.prefix + "/config", quorum=True, recursive=False,
                                      sorted=False)
        return resp.node.value if resp.node.value is not None else ""

    @defer.inlineCallbacks
    def list(self):
        try:
            resp = yield self._client.get(self.subnets_key, recursive=True, quorum=True,
                                          sorted=False)
        except KeyNotFound as e:
            return [], e.index
        records = [_record(node) for node in resp.node.nodes or ()
                   if not node.dir and self._is_direct_child(node.key)]
        return records, (resp.etcd_index if resp.etcd_index is not None
                         else resp.node.modified_index)

    def get(self, name):
        return self._client.get(self.key(name), quorum=True).addCallback(_answer)

    def create(self, name, value, ttl):
        return self._client.create(self.key(name), v2_value(value),
                                   ttl=ttl).addCallback(_answer)

    def compare_and_set(self, name, value, ttl, prev_index=None, prev_value=None):
        return self._client.set(self.key(name), v2_value(value), ttl=ttl,
                                prev_index=prev_index,
                                prev_value=prev_value).addCallback(_answer)

    def set(self, name, value, ttl):
        return self._client.set(self.key(name), v2_value(value), ttl=ttl).addCallback(_answer)

    def delete(self, name, prev_index=None):
        d = self._client.delete(self.key(name), prev_index=prev_index)
        return d.addCallback(lambda response: response.node.modified_index)

    @defer.inlineCallbacks
    def watch(self, wait_index):
        while True:
            resp = yield self._client.watch(self.subnets_key, wait_index, recursive=True,
                                            detect_reset=True)
            node = resp.node
            if self._is_direct_child(node.key) and not node.dir:
                break
            wait_index = node.modified_index + 1  # a deeper or dir node: not a lease change
        if resp.action in REMOVAL_ACTIONS:
            prev = resp.prev_node.value if resp.prev_node is not None else None
            return Change(True, Record(node.key, None, None, node.modified_index), prev or None)
        return Change(False, _record(node))
