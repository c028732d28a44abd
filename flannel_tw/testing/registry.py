"""
An in-memory L{IRegistry} with etcd-like indexes, for unit tests of the lease policy
(L{flannel_tw.lease.manager.SubnetManager}) without etcd. Checked with verifyObject
beside L{flannel_tw.etcd.registry.EtcdV2Registry}.

One index for the store, raised by every write; each record keeps the index of its
last write; a watch answers from a history of the last C{history} changes (older:
EventIndexCleared) or waits for the next write; L{wipe} empties the store and sets its
index back (a pending or later watch past it fails with EtcdIndexWentBack).
"""
from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.etcd.errors import (EtcdIndexWentBack, EventIndexCleared, KeyNotFound,
                                    NodeExist, TestFailed)
from flannel_tw.etcd.registry import DEFAULT_PREFIX, Change, Record
from flannel_tw.interfaces import IRegistry


@implementer(IRegistry)
class FakeRegistry:
    def __init__(self, prefix=DEFAULT_PREFIX, config=None, history=1000):
        self.prefix = prefix
        self.config = config
        self.index = 1
        self.records = {}       # name -> Record
        self.changes = []       # Change, oldest first (at most C{history})
        self.writes = []        # (operation, name, value, ttl, condition) in order
        self._history = history
        self._watchers = []     # (wait_index, Deferred)

    def _key(self, name):
        return "%s/subnets/%s" % (self.prefix, name)

    def _write(self, name, value, ttl):
        self.index += 1
        record = Record(self._key(name), value, ttl, self.index)
        self.records[name] = record
        self._changed(Change(False, record))
        return record

    def _changed(self, change):
        self.changes = (self.changes + [change])[-self._history:]
        waiting, self._watchers = self._watchers, []
        for wait_index, d in waiting:
            self.watch(wait_index).chainDeferred(d)

    # -- IRegistry -------------------------------------------------------------

    def get_config(self):
        if self.config is None:
            return defer.fail(KeyNotFound(100, "Key not found", self.prefix + "/config",
                                          self.index))
        return defer.succeed(self.config)

    def list(self):
        return defer.succeed((sorted(self.records.values(), key=lambda r: r.key), self.index))

    def get(self, name):
        if name not in self.records:
            return defer.fail(KeyNotFound(100, "Key not found", self._key(name), self.index))
        return defer.succeed(self.records[name])

    def create(self, name, value, ttl):
        self.writes.append(("create", name, value, ttl, None))
        if name in self.records:
            return defer.fail(NodeExist(105, "Key already exists", self._key(name), self.index))
        return defer.succeed(self._write(name, value, ttl))

    def compare_and_set(self, name, value, ttl, prev_index=None, prev_value=None):
        self.writes.append(("compare_and_set", name, value, ttl, prev_index or prev_value))
        have = self.records.get(name)
        if have is None:
            return defer.fail(KeyNotFound(100, "Key not found", self._key(name), self.index))
        if ((prev_index is not None and have.modified_index != prev_index)
                or (prev_value is not None and have.value != prev_value)):
            return defer.fail(TestFailed(101, "Compare failed", self._key(name), self.index))
        return defer.succeed(self._write(name, value, ttl))

    def set(self, name, value, ttl):
        self.writes.append(("set", name, value, ttl, None))
        return defer.succeed(self._write(name, value, ttl))

    def delete(self, name, prev_index=None):
        self.writes.append(("delete", name, None, None, prev_index))
        have = self.records.get(name)
        if have is not None and prev_index is not None and have.modified_index != prev_index:
            return defer.fail(TestFailed(101, "Compare failed", self._key(name), self.index))
        return self.remove(name).addCallback(lambda _: self.index)

    def watch(self, wait_index):
        if self.index < wait_index - 1:
            return defer.fail(EtcdIndexWentBack(wait_index, self.index))
        if self.changes and wait_index < self.changes[0].record.modified_index:
            return defer.fail(EventIndexCleared(401, "The event in requested index is outdated "
                                                "and cleared", "", self.index))
        for change in self.changes:
            if change.record.modified_index >= wait_index:
                return defer.succeed(change)
        d = defer.Deferred(lambda d: self._watchers.remove((wait_index, d)))
        self._watchers.append((wait_index, d))
        return d

    # -- test controls ------------------------------------------------------------

    def remove(self, name):
        """Delete or expire C{name} (a removal change)."""
        have = self.records.pop(name, None)
        if have is None:
            return defer.fail(KeyNotFound(100, "Key not found", self._key(name), self.index))
        self.index += 1
        self._changed(Change(True, Record(have.key, None, None, self.index), have.value))
        return defer.succeed(None)

    def put_raw(self, name, value, ttl=None):
        """Another writer's unconditional write."""
        return self._write(name, value, ttl)

    def wipe(self, index=1):
        """The store is replaced by an empty one at C{index}."""
        self.records, self.changes, self.index = {}, [], index
        waiting, self._watchers = self._watchers, []
        for wait_index, d in waiting:
            self.watch(wait_index).chainDeferred(d)
