# -*- test-case-name: tests.unit.test_registry_v3, tests.integration.test_etcd_v3 -*-
"""
The registry on etcd v3 (through L{flannel_tw.etcd.v3client.EtcdV3Client}, the JSON
gateway), with flanneld v0.20.2's keys and values (flanneld-v0.20-v3.md, A): config
C{<prefix>/config}, leases C{<prefix>/subnets/A.B.C.D-N}, each value in v0.20's form
(C{"PublicIPv6":null} right after C{PublicIP}).

How L{IRegistry}'s v2-shaped calls map onto v3:
- B{index / cursor}: the store revision. A record's C{modified_index} is the key's
  C{mod_revision}; a list's cursor is the range's C{header.revision}; C{watch(n)}
  watches from revision C{n} (the caller passes cursor + 1).
- B{ttl}: a v3 lease. A write with a ttl grants a new lease of that TTL (86400 for
  flannel) and puts the key with it, as flanneld v0.20 does on every create and every
  renewal (no KeepAlive; the old lease is left to expire). A write with ttl None puts
  the key without a lease: a reservation, never renewed by anyone. A record's C{ttl}
  is the lease's remaining TTL (C{/v3/lease/timetolive}), None for a key without a
  lease. A list asks it once per distinct lease ID; with C{exact_list_ttls=False}
  (the daemon) it asks nothing and reports L{LIST_TTL_BOUND} for every leased key: the
  daemon only needs "leased or reservation" from a list (the watcher's retention of a
  peer that vanished without an event is the only other use, and the bound of every
  lease flannel writes is safe there), and real daemons give every key its own lease, so exact TTLs cost one
  round trip per key (about 4 s for 10,000 keys). A watch event asks its lease's TTL
  as flanneld does, except, with C{exact_list_ttls=False}, for keys this registry has
  never written: another host's lease event reports the bound too (one round trip
  less per event, for every daemon), while events on our own keys (the keeper times
  its renewal and a foreign write's validity by them) keep their exact TTL.
- B{create}: a txn C{version(key) == 0 -> put}; a failed compare is C{NodeExist}.
- B{compare_and_set}: C{prev_index} -> a txn C{mod_revision(key) == prev_index -> put};
  C{prev_value} -> C{value(key) == prev_value -> put}. On failure the txn's else branch
  reads the key: absent -> C{KeyNotFound}, present -> C{TestFailed}. A lease granted
  for a write that did not happen is revoked.
- B{delete}: C{deleterange}; nothing deleted -> C{KeyNotFound}.
- B{watch}: a watch on the subnets range from C{wait_index}; every event of the
  response is kept, and the next C{watch(revision + 1)} hands out the rest (several
  events may share a revision) before opening a new watch. A compacted start revision
  fails with L{WatchCompacted} (an C{EventIndexCleared}: list again); a store whose
  revision is below the cursor with C{EtcdIndexWentBack}. DELETE events (admin delete
  and lease expiry alike) are removals, with the previous value when etcd still has it.
"""
import re
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.etcd.errors import (EtcdIndexWentBack, EtcdProtocolError, KeyNotFound,
                                    NodeExist, TestFailed)
from flannel_tw.etcd.registry import Change, Record
from flannel_tw.etcd.v3client import as_int, b64, unb64
from flannel_tw.interfaces import IRegistry
from flannel_tw.model.config import DEFAULT_PREFIX

__all__ = ["EtcdV3Registry", "v3_value"]

TTL_CONCURRENCY = 16     # TimeToLive requests in flight at once while listing
#: the TTL a list reports for a leased key when it does not ask etcd: the longest lease
#: flannel writes (flanneld's subnetTTL, 24 h), an upper bound of what is left
LIST_TTL_BOUND = 86400
_V2_HEAD = re.compile(r'\{"PublicIP":"[0-9.]*"')


def v3_value(text):
    """
    flanneld v0.20's value form of a lease value: C{"PublicIPv6":null} inserted right
    after C{PublicIP} (Go emits it: no omitempty). A value already carrying PublicIPv6,
    or not in the v2 writer's form, is returned unchanged.
    """
    m = _V2_HEAD.match(text)
    if m is None or '"PublicIPv6"' in text:
        return text
    return text[:m.end()] + ',"PublicIPv6":null' + text[m.end():]


def _text(data):
    return data.decode("utf-8", errors="replace")


@implementer(IRegistry)
class EtcdV3Registry:
    """L{IRegistry} on an L{flannel_tw.etcd.v3client.EtcdV3Client}."""

    log = Logger()

    def __init__(self, client, prefix=DEFAULT_PREFIX, exact_list_ttls=True):
        self._client = client
        self._exact_list_ttls = exact_list_ttls
        self.prefix = prefix.rstrip("/") or "/"
        self._own_names = set()     # names this registry has written (or tried to)
        self._pending = []          # Changes of the last watch response not handed out
        self._next_index = None     # the wait_index that continues with _pending

    @property
    def subnets_key(self):
        return self.prefix + "/subnets"

    def key(self, name):
        return "%s/%s" % (self.subnets_key, name)

    def _range(self):
        """flanneld's list range: C{<prefix>/subnets} .. C{<prefix>/subnett}."""
        key = self.subnets_key
        return key, key[:-1] + chr(ord(key[-1]) + 1)

    def _is_direct_child(self, key):
        parent, _, name = key.rpartition("/")
        return parent == self.subnets_key and bool(name)

    @defer.inlineCallbacks
    def _ttl(self, kv):
        lease = as_int(kv.get("lease"))
        if not lease:
            return None
        answer = yield self._client.lease_time_to_live(lease)
        return max(as_int(answer.get("TTL"), -1), 0)

    @defer.inlineCallbacks
    def _record(self, kv):
        key = _text(unb64(kv.get("key")))
        ttl = yield self._ttl(kv)
        return Record(key=key, value=_text(unb64(kv.get("value"))), ttl=ttl,
                      modified_index=as_int(kv.get("mod_revision")))

    @defer.inlineCallbacks
    def get_config(self):
        answer = yield self._client.range(self.prefix + "/config")
        kvs = answer.get("kvs") or []
        if not kvs:
            raise KeyNotFound(100, "Key not found", self.prefix + "/config",
                              _revision(answer))
        return _text(unb64(kvs[0].get("value")))

    @defer.inlineCallbacks
    def list(self):
        key, end = self._range()
        answer = yield self._client.range(key, end)
        kvs = []
        for kv in answer.get("kvs") or []:
            try:
                if not isinstance(kv, dict):
                    raise EtcdProtocolError("not an object")
                if self._is_direct_child(_text(unb64(kv.get("key")))):
                    as_int(kv.get("mod_revision")), as_int(kv.get("lease"))
                    unb64(kv.get("value"))
                    kvs.append(kv)
            except EtcdProtocolError as e:
                self.log.warn("Ignoring a malformed key-value from etcd under {key}: "
                              "{error}", key=key, error=e)
        # one TimeToLive per distinct lease (keys sharing a lease share its TTL; flanneld
        # asks per key), up to TTL_CONCURRENCY at a time
        leases = (sorted({as_int(kv.get("lease")) for kv in kvs} - {0})
                  if self._exact_list_ttls else [])
        limit = defer.DeferredSemaphore(TTL_CONCURRENCY)
        results = yield defer.DeferredList(
            [limit.run(self._client.lease_time_to_live, lease) for lease in leases],
            consumeErrors=True)
        ttls = {}
        for lease, (ok, result) in zip(leases, results):
            if not ok:
                result.raiseException()
            ttls[lease] = max(as_int(result.get("TTL"), -1), 0)
        records = [Record(key=_text(unb64(kv.get("key"))), value=_text(unb64(kv.get("value"))),
                          ttl=self._list_ttl(ttls, as_int(kv.get("lease"))),
                          modified_index=as_int(kv.get("mod_revision"))) for kv in kvs]
        return records, _revision(answer)

    def _exact_event_ttl(self, key):
        """Whether a watch event on C{key} asks its lease's TTL (the module's docstring)."""
        return self._exact_list_ttls or key.rpartition("/")[2] in self._own_names

    def _list_ttl(self, ttls, lease):
        if not lease:
            return None
        return ttls.get(lease) if self._exact_list_ttls else LIST_TTL_BOUND

    @defer.inlineCallbacks
    def get(self, name):
        answer = yield self._client.range(self.key(name))
        kvs = answer.get("kvs") or []
        if not kvs:
            raise KeyNotFound(100, "Key not found", self.key(name), _revision(answer))
        return (yield self._record(kvs[0]))

    @defer.inlineCallbacks
    def _write(self, name, value, ttl, compare):
        key = self.key(name)
        # before the write: its watch event may arrive before the write's answer
        self._own_names.add(name)
        value = v3_value(value)
        lease, granted = 0, None
        if ttl is not None and int(ttl) > 0:
            grant = yield self._client.lease_grant(int(ttl))
            lease, granted = as_int(grant.get("ID")), as_int(grant.get("TTL"), int(ttl))
        put = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        try:
            if compare is None:
                answer = yield self._client.put(key, value, lease)
                succeeded = True
            else:
                answer = yield self._client.txn(
                    [dict(compare, key=b64(key))], [{"request_put": put}],
                    [{"request_range": {"key": b64(key)}}])
                succeeded = bool(answer.get("succeeded"))
        except defer.CancelledError:
            raise
        except Exception:
            if lease:
                yield self._revoke(lease)
            raise
        if not succeeded:
            if lease:
                yield self._revoke(lease)
            revision = _revision(answer)
            if compare.get("target") == "VERSION":
                raise NodeExist(105, "Key already exists", key, revision)
            if not _txn_range_kvs(answer):
                raise KeyNotFound(100, "Key not found", key, revision)
            raise TestFailed(101, "Compare failed", key, revision)
        return Record(key=key, value=value, ttl=granted, modified_index=_revision(answer))

    def _revoke(self, lease):
        """Revoke a lease granted for a write that did not happen (flanneld does too);
        a failure is only logged (the lease expires unattached anyway)."""
        d = self._client.lease_revoke(lease)
        d.addErrback(lambda f: self.log.warn("Could not revoke unused etcd lease {lease}: "
                                             "{error}", lease=lease, error=f.value))
        return d

    def create(self, name, value, ttl):
        return self._write(name, value, ttl, {"target": "VERSION", "result": "EQUAL",
                                              "version": "0"})

    def compare_and_set(self, name, value, ttl, prev_index=None, prev_value=None):
        if prev_index is not None:
            compare = {"target": "MOD", "result": "EQUAL", "mod_revision": str(int(prev_index))}
        elif prev_value is not None:
            compare = {"target": "VALUE", "result": "EQUAL", "value": b64(prev_value)}
        else:
            return defer.fail(ValueError("compare_and_set needs prev_index or prev_value"))
        return self._write(name, value, ttl, compare)

    def set(self, name, value, ttl):
        return self._write(name, value, ttl, None)

    @defer.inlineCallbacks
    def delete(self, name, prev_index=None):
        key = self.key(name)
        if prev_index is None:
            answer = yield self._client.delete_range(key)
            if not as_int(answer.get("deleted")):
                raise KeyNotFound(100, "Key not found", key, _revision(answer))
            return _revision(answer)
        answer = yield self._client.txn(
            [{"key": b64(key), "target": "MOD", "result": "EQUAL",
              "mod_revision": str(int(prev_index))}],
            [{"request_delete_range": {"key": b64(key)}}],
            [{"request_range": {"key": b64(key)}}])
        if not answer.get("succeeded"):
            if not _txn_range_kvs(answer):
                raise KeyNotFound(100, "Key not found", key, _revision(answer))
            raise TestFailed(101, "Compare failed", key, _revision(answer))
        return _revision(answer)

    @defer.inlineCallbacks
    def watch(self, wait_index):
        wait_index = int(wait_index)
        if self._pending and wait_index == self._next_index:
            change = self._pending.pop(0)
            self._next_index = change.record.modified_index + 1
            return change
        self._pending = []
        key, end = self._range()

        def created(revision):
            if revision and revision < wait_index - 1:
                raise EtcdIndexWentBack(wait_index, revision)

        while True:
            result = yield self._client.watch_once(key, end, wait_index, created)
            changes, seen = [], []
            for event in result.get("events") or []:
                try:
                    change = self._change(event)
                except EtcdProtocolError as e:
                    self.log.warn("Ignoring a malformed watch event from etcd: {error}",
                                  error=e)
                    continue
                if change is None:
                    continue
                seen.append(change.record.modified_index)
                if change.lease_key and change.record.modified_index >= wait_index:
                    ttl = change.record.ttl
                    if not change.removed and ttl is not None:
                        ttl = ((yield self._ttl(event["kv"])) if self._exact_event_ttl(
                            change.record.key) else LIST_TTL_BOUND)
                    changes.append(Change(change.removed, Record(
                        change.record.key, change.record.value, ttl,
                        change.record.modified_index), change.prev_value))
            if changes:
                break
            # events outside the lease keys only (deeper keys, subnets-prefixed names) or
            # malformed ones: watch on past them
            # (every event of the response is at wait_index or later: progress is safe)
            wait_index = max(seen + [_revision(result), wait_index]) + 1
        self._pending = changes[1:]
        self._next_index = changes[0].record.modified_index + 1
        return changes[0]

    def _change(self, event):
        """A watch event -> C{_Event} (C{lease_key}: directly under subnets/); raises
        L{EtcdProtocolError} for a malformed one."""
        if not isinstance(event, dict) or not isinstance(event.get("kv"), dict):
            raise EtcdProtocolError("watch event without kv: %r" % (str(event)[:200],))
        kv = event["kv"]
        key = _text(unb64(kv.get("key")))
        revision = as_int(kv.get("mod_revision"))
        if not self._is_direct_child(key):
            return _Event(False, Record(key, None, None, revision), lease_key=False)
        if event.get("type") == "DELETE":
            prev = event.get("prev_kv")
            prev_value = _text(unb64(prev.get("value"))) if isinstance(prev, dict) else None
            return _Event(True, Record(key, None, None, revision), prev_value or None)
        lease = as_int(kv.get("lease"))
        # ttl 0 marks "has a lease" here; watch() asks the lease's TTL (as flanneld does)
        return _Event(False, Record(key, _text(unb64(kv.get("value"))),
                                    None if not lease else 0, revision))


@dataclass(frozen=True)
class _Event:
    removed: bool
    record: Record
    prev_value: Optional[str] = None
    lease_key: bool = True


def _revision(answer):
    return as_int((answer.get("header") or {}).get("revision"))


def _txn_range_kvs(answer):
    for response in answer.get("responses") or []:
        rng = response.get("response_range") if isinstance(response, dict) else None
        if isinstance(rng, dict):
            return rng.get("kvs") or []
    return []
