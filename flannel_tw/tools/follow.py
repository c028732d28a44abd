# -*- test-case-name: tests.integration.test_migrate -*-
"""
C{flannel-tw etcd migrate --follow}: after the copy (L{flannel_tw.tools.migrate}), lease
changes are mirrored between etcd's v2 and v3 keyspaces until stopped, so hosts on
v2-era flanneld and on v3-era flanneld see each other during a rolling move.
"""
from twisted.internet import defer, task

from flannel_tw.etcd.errors import KeyNotFound, NodeExist, TestFailed
from flannel_tw.model.lease import LeaseParseError, parse_canonical_key
from flannel_tw.model.leasecheck import SkipMemory
from flannel_tw.tools.migrate import PROG, plan_lease, v2_lease_value


class Follower:
    """
    C{--follow}: mirror lease changes both ways until L{stop}. A change seen in one
    keyspace (created, renewed, deleted, expired) is done in the other, conditionally:
    written only where the other side's key is absent (create-only) or still at the
    version this follower last saw in sync with (C{synced}), else left alone and said;
    deleted only at that version. The follower's own writes are remembered by
    C{(name, version)} and not mirrored back (no ping-pong); events are handled one at a
    time under one lock, so the event of a write is looked at only once the write is
    remembered.
    """

    RETRY = 1.0

    def __init__(self, reactor, v2reg, v3reg, config, stdout):
        self.reactor, self.config, self.stdout = reactor, config, stdout
        self.regs = {"v2": v2reg, "v3": v3reg}
        self.synced = {}                 # name -> {"v2": index, "v3": revision}
        self.ours = {"v2": set(), "v3": set()}
        self.lock = defer.DeferredLock()
        self.counts = {"mirrored": 0, "deleted": 0, "left": 0, "skipped": 0}
        self.skips = SkipMemory()        # each bad lease said once, however often rewritten
        self._watches = {}
        self._stopped = False

    def say(self, text, *args):
        self.stdout.write(("%s: " + text + "\n") % ((PROG,) + args))
        if hasattr(self.stdout, "flush"):
            self.stdout.flush()

    def mirrored(self, to, name, from_version, to_version):
        """Remember a write of ours: C{to}'s key C{name} is now at C{to_version}, in sync
        with the other side's C{from_version}."""
        other = "v2" if to == "v3" else "v3"
        self.ours[to].add((name, to_version))
        self.synced[name] = {to: to_version, other: from_version}

    @defer.inlineCallbacks
    def seed(self, v2records, v3records):
        """Before following: keys holding the same lease in both keyspaces are in sync;
        valid leases only in v3 (v3-era hosts) are created in v2."""
        v2 = {r.key.rsplit("/", 1)[-1]: r for r in v2records}
        for record in v3records:
            name = record.key.rsplit("/", 1)[-1]
            if name in self.synced:
                continue
            plan = plan_lease(record.key, record.value, record.ttl, self.config)
            if plan[0] == "skip":
                continue
            if name in v2:
                other = plan_lease(v2[name].key, v2[name].value, v2[name].ttl, self.config)
                if other[0] == "copy" and other[2] == plan[2]:
                    self.synced[name] = {"v2": v2[name].modified_index,
                                         "v3": record.modified_index}
                continue
            yield self._write("v3", name, plan, record.modified_index)

    def follow(self, v2index, v3revision):
        """Watch both keyspaces (v2 from C{v2index}, v3 from C{v3revision}) until L{stop};
        the Deferred fires then."""
        self.say("following both keyspaces (v2 from index %d, v3 from revision %d) until "
                 "stopped", v2index, v3revision)
        return defer.gatherResults([self._loop("v2", v2index), self._loop("v3", v3revision)],
                                   consumeErrors=True)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        for d in list(self._watches.values()):
            d.cancel()
        self.say("stopped following: %d written, %d deleted, %d left alone, %d skipped as "
                 "invalid", self.counts["mirrored"], self.counts["deleted"],
                 self.counts["left"], self.counts["skipped"])

    @defer.inlineCallbacks
    def _loop(self, side, index):
        from flannel_tw.etcd.errors import EventIndexCleared
        while not self._stopped:
            d = self._watches[side] = self.regs[side].watch(index)
            try:
                change = yield d
            except defer.CancelledError:
                if self._stopped:
                    return
                raise
            except EventIndexCleared as e:
                if self._stopped:
                    return
                self.say("warning: the %s watch fell behind (%s); reading the keyspace "
                         "again", side, e)
                index = yield self._catch_up(side)
                continue
            except Exception as e:
                if self._stopped:
                    return
                self.say("warning: watching %s failed: %s; trying again", side, e)
                yield task.deferLater(self.reactor, self.RETRY, lambda: None)
                continue
            finally:
                self._watches.pop(side, None)
            index = change.record.modified_index + 1
            yield self.lock.run(self._handle_safely, side, change)

    @defer.inlineCallbacks
    def _catch_up(self, side):
        """A watch that fell behind (compacted / cleared): handle the listed state as
        changes, and the synced keys no longer there as removals; the next cursor."""
        from flannel_tw.etcd.registry import Change, Record
        records, cursor = yield self.regs[side].list()
        names = set()
        for record in records:
            names.add(record.key.rsplit("/", 1)[-1])
            yield self.lock.run(self._handle_safely, side, Change(False, record))
        for name in [n for n, v in self.synced.items() if n not in names and v.get(side)]:
            yield self.lock.run(self._handle_safely, side, Change(
                True, Record(self.regs[side].key(name), None, None, 0)))
        return cursor + 1

    @defer.inlineCallbacks
    def _handle_safely(self, side, change):
        try:
            yield self._handle(side, change)
        except Exception as e:
            self.say("warning: could not mirror %s from %s: %s", change.record.key, side, e)

    @defer.inlineCallbacks
    def _handle(self, side, change):
        key, version = change.record.key, change.record.modified_index
        name = key.rsplit("/", 1)[-1]
        if (name, version) in self.ours[side]:
            self.ours[side].discard((name, version))
            return
        if change.removed:
            self.skips.forget(side + key)
            try:
                parse_canonical_key(key)
            except LeaseParseError:
                return               # never mirrored, so nothing to remove
            yield self._delete(side, name)
            return
        if self.synced.get(name, {}).get(side) == version:
            return                   # mirrored at this version already (a catch-up)
        plan = plan_lease(key, change.record.value, change.record.ttl, self.config)
        if plan[0] == "skip":
            if self.skips.note(side + key, plan[1]):
                self.counts["skipped"] += 1
                self.say("skipped %r in %s (%s): %s", key, side, plan[1], plan[2])
            return
        self.skips.forget(side + key)
        yield self._write(side, name, plan, version)

    @defer.inlineCallbacks
    def _current(self, side, name):
        try:
            record = yield self.regs[side].get(name)
        except KeyNotFound:
            return None
        return record.modified_index

    @defer.inlineCallbacks
    def _write(self, side, name, plan, version):
        """Write the lease seen in C{side} (at C{version}) to the other keyspace."""
        to = "v3" if side == "v2" else "v2"
        _, _, value, ttl = plan
        if to == "v2":
            value = v2_lease_value(value)
        reg = self.regs[to]
        current = yield self._current(to, name)
        known = self.synced.get(name, {}).get(to)
        try:
            if current is None:
                record = yield reg.create(name, value, ttl)
            elif current == known:
                record = yield reg.compare_and_set(name, value, ttl, prev_index=current)
            else:
                raise TestFailed(101, "Compare failed", reg.key(name), current)
        except (NodeExist, TestFailed, KeyNotFound):
            self.counts["left"] += 1
            self.say("%s changed in %s on its own: left alone (not overwritten with %s's)",
                     reg.key(name), to, side)
            return
        self.mirrored(to, name, version, record.modified_index)
        self.counts["mirrored"] += 1
        self.say("%s %s in %s (%s)", "created" if current is None else "renewed",
                 reg.key(name), to, "no TTL" if ttl is None else "TTL %ds" % ttl)

    @defer.inlineCallbacks
    def _delete(self, side, name):
        """Delete in the other keyspace the lease removed from C{side}."""
        to = "v3" if side == "v2" else "v2"
        reg = self.regs[to]
        known = self.synced.pop(name, {}).get(to)
        current = yield self._current(to, name)
        if current is None:
            return
        if current != known:
            self.counts["left"] += 1
            self.say("%s changed in %s on its own: left alone (not deleted)", reg.key(name), to)
            return
        try:
            done = yield reg.delete(name, prev_index=current)
        except (KeyNotFound, TestFailed):
            self.counts["left"] += 1
            return
        self.ours[to].add((name, done))
        self.counts["deleted"] += 1
        self.say("deleted %s in %s", reg.key(name), to)
