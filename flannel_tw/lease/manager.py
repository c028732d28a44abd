# -*- test-case-name: tests.integration.test_subnet_manager, tests.unit.test_registry -*-
"""
The subnet manager: the lease policy (network config, lease acquisition, renewal,
listing and watching) on any L{IRegistry} (the raw store; etcd v2 in
L{flannel_tw.etcd.registry}), with flanneld v0.10's schema (flannel-compat.md sections
2 and 3) and flannel-tw's decisions (section 13):

- a previous subnet from subnet.env is reused only if no other host holds it;
- only etcd error 105 (node exists) means "lost the race, try another subnet";
- renewal never overwrites another host's lease: it is a compare-and-swap on the
  modifiedIndex of our own last write (on our value when that is unknown);
- reusing the lease that carries our PublicIP is a compare-and-swap on the
  modifiedIndex we listed, so a key changed between our list and our write is never
  overwritten (we list again and decide again). A reuse is recorded in
  C{reused_leases}: the lease keeper stands down if another live holder with our
  PublicIP shows up right after it (see L{flannel_tw.lease.keeper}).
"""
import random

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.lease.allocate import (choose_ipv6_subnet, choose_subnet, fits, fits_ipv6,
                                      holds_allocation, holds_ipv6_allocation)
from flannel_tw.model.config import parse_config
from flannel_tw.etcd.errors import KeyNotFound, NodeExist, TestFailed
from flannel_tw.model.events import ADDED, REMOVED, LeaseEvent
from flannel_tw.interfaces import IRegistry, ISubnetManager
from flannel_tw.model.lease import (Lease, LeaseAttrs, LeaseParseError, key_name, key_to_subnet,
                                    key_to_subnets, subnet_to_key)
from flannel_tw.model.leasecheck import SkipMemory

SUBNET_TTL = 86400
RACE_RETRIES = 10


class AcquireError(Exception):
    """Lease acquisition gave up (e.g. max retries reached)."""


def node_to_lease(node):
    """
    A registry record under subnets/ -> L{Lease}, with the key's last component as stored in
    C{key} (flanneld's lenient parse: see L{Lease.is_canonical} before routing it).

    @raise LeaseParseError: the key or value is not a lease, as flanneld would skip it.
    """
    subnet, ipv6_subnet = key_to_subnets(node.key)
    attrs = LeaseAttrs.from_json(node.value if node.value is not None else "")
    return Lease(subnet=subnet, attrs=attrs, ttl=node.ttl, modified_index=node.modified_index,
                 key=key_name(node.key), ipv6_subnet=ipv6_subnet)


def _describe(subnet, ipv6_subnet):
    """A lease's subnets for a log line: C{10.5.1.0/24}, or C{10.5.1.0/24 and fc00::/64}."""
    return str(subnet) if ipv6_subnet is None else "%s and %s" % (subnet, ipv6_subnet)


@implementer(ISubnetManager)
class SubnetManager:
    """
    L{ISubnetManager}: the lease policy on an L{IRegistry}.

    @param rand: a C{random.Random} for choosing among free subnets.
    @ivar skipped: the L{SkipMemory} of nodes skipped as bad (reasons C{bad-key}: no
        lease key at all, C{bad-value}), bounded, for one warning per node and metrics.
    """

    log = Logger()

    def __init__(self, registry, rand=None):
        self._registry = IRegistry(registry)
        self._rand = rand if rand is not None else random.SystemRandom()
        self.skipped = SkipMemory()
        # subnet -> modifiedIndex of our write when acquire_lease reused an existing lease
        self.reused_leases = {}

    @property
    def prefix(self):
        return self._registry.prefix

    def skipped_counts(self):
        """Nodes under subnets/ skipped as bad, by reason (C{bad-key}, C{bad-value})."""
        return dict(self.skipped.counts)

    @defer.inlineCallbacks
    def get_network_config(self):
        """Deferred L{NetworkConfig}; fails with ConfigError, KeyNotFound or a transport error."""
        text = yield self._registry.get_config()
        return parse_config(text)

    def _warn_bad_node(self, node, err):
        """One warning per bad node (not per event: a renewal with the same fault is
        quiet); the memory is bounded and forgets deleted nodes."""
        try:
            key_to_subnet(node.key)
        except LeaseParseError:
            reason = "bad-key"
        else:
            reason = "bad-value"
        if self.skipped.note(node.key, reason):
            # the node's key goes in "error" too: the log rate limit (flannel_tw.observe.logs) keys
            # on format and error, and two nodes with the same bad value are two warnings
            self.log.warn("Ignoring bad subnet node {error}", key=node.key,
                          index=node.modified_index, reason=reason,
                          error="%s (index %s): %s" % (node.key, node.modified_index, err))

    @defer.inlineCallbacks
    def list_leases(self):
        """Deferred C{(leases, index)}; bad nodes are skipped with one warning each."""
        records, index = yield self._registry.list()
        leases = []
        for record in records:
            try:
                leases.append(node_to_lease(record))
            except LeaseParseError as e:
                self._warn_bad_node(record, e)
        self.skipped.retain([r.key for r in records])  # a complete list: forget the gone
        return leases, index

    @defer.inlineCallbacks
    def get_lease(self, subnet, ipv6_subnet=None):
        """Deferred L{Lease} under the key of C{subnet} (and C{ipv6_subnet}, dual-stack)."""
        record = yield self._registry.get(subnet_to_key(subnet, ipv6_subnet))
        return node_to_lease(record)

    def _written_lease(self, record, subnet, attrs, ipv6_subnet=None):
        return Lease(subnet=subnet, attrs=attrs, ttl=record.ttl,
                     modified_index=record.modified_index, ipv6_subnet=ipv6_subnet)

    @defer.inlineCallbacks
    def acquire_lease(self, config, attrs, previous_subnet=None, previous_ipv6_subnet=None):
        """
        Deferred L{Lease}. Fails with L{OutOfSubnets}, L{AcquireError} after
        C{RACE_RETRIES} lost races, or any other etcd error at once.

        With IPv6 on (C{config.enable_ipv6}) the lease is dual-stack: key
        C{A.B.C.D-N&<ipv6>-M}. A lease is reused only if both parts fit the config
        (flanneld v0.20's rules, a v6 part present with IPv6 on and absent with it off);
        when only the v6 part does not fit (the config turned IPv6 on or off, or changed
        the IPv6 range), the old key is deleted and its v4 subnet is leased again with a
        fitting v6 part (flanneld would pick a new v4 subnet too: flannel-tw keeps the v4
        traffic where it is). The previous subnets from subnet.env are used likewise.
        """
        value = attrs.to_json()
        for attempt in range(RACE_RETRIES):
            leases, _ = yield self.list_leases()

            # Only leases under flanneld's exact key form can be ours to reuse (a key such
            # as x10.5.7.0-24 holding our PublicIP is not), and only those a valid config
            # hands out keep a subnet from being allocated (allocate.holds_allocation).
            canonical = [l for l in leases if l.is_canonical]
            mine = next((l for l in canonical if l.attrs.public_ip == attrs.public_ip), None)
            kept_v4 = None
            if mine is not None:
                v4_fits = fits(config, mine.subnet)
                if v4_fits and fits_ipv6(config, mine.ipv6_subnet):
                    ttl = None if mine.is_reservation else SUBNET_TTL
                    try:
                        record = yield self._registry.compare_and_set(
                            mine.key_name, value, ttl, prev_index=mine.modified_index)
                    except (TestFailed, KeyNotFound) as e:
                        self.log.warn("Lease {subnet} with our PublicIP changed in etcd between "
                                      "our list and our write ({error}); not overwritten, "
                                      "looking again (attempt {attempt})", subnet=mine.subnet,
                                      error=e, attempt=attempt + 1)
                        continue
                    self.log.info("Reusing our lease {subnet} (reservation: {res})",
                                  subnet=_describe(mine.subnet, mine.ipv6_subnet),
                                  res=mine.is_reservation)
                    lease = self._written_lease(record, mine.subnet, attrs, mine.ipv6_subnet)
                    self.reused_leases = {lease.subnet: lease.modified_index}  # the last only
                    return lease
                if v4_fits:
                    self.log.warn("Our lease {key}: its IPv6 part does not fit the config ("
                                  "{ipv6}); deleting it and leasing {subnet} again with "
                                  "an IPv6 part that fits", key=mine.key_name,
                                  subnet=mine.subnet,
                                  ipv6="IPv6 is off" if not config.enable_ipv6 else
                                  "IPv6 network %s, IPv6SubnetLen %d" % (
                                      config.ipv6_network, config.ipv6_subnet_len))
                    kept_v4, kept_v6 = mine.subnet, mine.ipv6_subnet
                else:
                    self.log.warn("Our lease {subnet} does not fit the config any more; "
                                  "deleting it", subnet=_describe(mine.subnet, mine.ipv6_subnet))
                yield self._delete_quietly(mine.key_name)
                leases = [l for l in leases if l is not mine]
                if kept_v4 is not None:
                    previous_subnet, previous_ipv6_subnet = kept_v4, kept_v6

            candidate = None
            if previous_subnet is not None:
                holder = next((l for l in leases if l.subnet == previous_subnet), None)
                if not fits(config, previous_subnet):
                    self.log.warn("Previous subnet {subnet} does not fit the config; ignoring it",
                                  subnet=previous_subnet)
                elif holder is not None:
                    self.log.warn("Previous subnet {subnet} is held by {holder}; not taking it over",
                                  subnet=previous_subnet, holder=holder.attrs.public_ip)
                else:
                    candidate = previous_subnet
                previous_subnet = None if candidate is None else previous_subnet

            if candidate is None:
                candidate = choose_subnet(
                    config, [l.subnet for l in leases
                             if l.is_canonical and holds_allocation(config, l.subnet)],
                    self._rand)
            candidate6 = self._choose_ipv6(config, leases, previous_ipv6_subnet)

            try:
                record = yield self._registry.create(subnet_to_key(candidate, candidate6),
                                                     value, SUBNET_TTL)
            except NodeExist:
                self.log.info("Subnet {subnet} was taken by another host meanwhile; retrying "
                              "(attempt {attempt})", subnet=_describe(candidate, candidate6),
                              attempt=attempt + 1)
                previous_subnet = previous_ipv6_subnet = None
                continue
            lease = self._written_lease(record, candidate, attrs, candidate6)
            if candidate6 is not None or any(l.ipv6_subnet is not None for l in leases):
                # keys of several forms: create-only guards our key, not our subnets
                earlier = yield self._created_before_us(config, lease)
                if earlier is not None:
                    self.log.info("Subnet {subnet} was taken by another host at the same "
                                  "time ({other}, created first); giving way (attempt "
                                  "{attempt})", subnet=_describe(candidate, candidate6),
                                  other=earlier.key_name, attempt=attempt + 1)
                    yield self._delete_ours(lease)
                    previous_subnet = previous_ipv6_subnet = None
                    continue
            self.log.info("Acquired lease {subnet}", subnet=_describe(candidate, candidate6))
            return lease
        raise AcquireError("Max retries reached trying to acquire a subnet (%d attempts)"
                           % RACE_RETRIES)

    def _choose_ipv6(self, config, leases, previous):
        """
        The v6 part of a new lease: None with IPv6 off; else C{previous} when it fits the
        config and no listed lease's v6 part overlaps it; else a free one chosen as
        flanneld does, independently of the v4 choice (leases without a v6 part take no
        v6 subnet).
        """
        if not config.enable_ipv6:
            return None
        taken = [l.ipv6_subnet for l in leases
                 if l.is_canonical and holds_ipv6_allocation(config, l.ipv6_subnet)]
        if previous is not None:
            holder = next((l for l in leases if l.ipv6_subnet is not None
                           and l.ipv6_subnet.overlaps(previous)), None)
            if not fits_ipv6(config, previous):
                self.log.warn("Previous IPv6 subnet {subnet} does not fit the config; "
                              "ignoring it", subnet=previous)
            elif holder is not None:
                self.log.warn("Previous IPv6 subnet {subnet} is held by {holder}; not taking "
                              "it over", subnet=previous, holder=holder.attrs.public_ip)
            else:
                return previous
        return choose_ipv6_subnet(config, taken, self._rand)

    @defer.inlineCallbacks
    def _created_before_us(self, config, lease):
        """
        A lease under another key whose v4 or v6 subnet overlaps ours and was written
        before our create (a smaller index), or None. Two hosts can create the same v4
        subnet at once under different keys (their v6 parts differ, or one is IPv4-only),
        which a create-only write cannot see; after both creates each host sees the
        other, and the one created later gives way. Only subnets that hold an allocation
        count (a hostile C{...&::-0} key makes no host give way).
        """
        leases, _ = yield self.list_leases()
        for other in leases:
            if (not other.is_canonical or other.key_name == lease.key_name
                    or other.modified_index >= lease.modified_index):
                continue
            if (holds_allocation(config, other.subnet) and other.subnet.overlaps(lease.subnet)
                    or holds_ipv6_allocation(config, other.ipv6_subnet)
                    and lease.ipv6_subnet is not None
                    and other.ipv6_subnet.overlaps(lease.ipv6_subnet)):
                return other
        return None

    @defer.inlineCallbacks
    def _delete_ours(self, lease):
        """Delete the lease we just created, only if it is still our write."""
        try:
            yield self._registry.delete(lease.key_name, prev_index=lease.modified_index)
        except (KeyNotFound, TestFailed):
            pass

    @defer.inlineCallbacks
    def _delete_quietly(self, name):
        try:
            yield self._registry.delete(name)
        except KeyNotFound:
            pass

    @defer.inlineCallbacks
    def renew_lease(self, lease):
        """
        Re-write our lease with ttl 86400 (none for a reservation), only if it is still
        the version C{lease.modified_index} (our own last write), or, when that is not
        known, still holds our value: never another host's lease.

        @return: Deferred L{Lease} with the TTL etcd returned; fails with KeyNotFound
            (gone) or TestFailed (written by someone else since), which the keeper
            looks into (L{get_lease}).
        """
        value = lease.attrs.to_json()
        ttl = None if lease.is_reservation else SUBNET_TTL
        if lease.modified_index is not None:
            cas = {"prev_index": lease.modified_index}
        else:
            cas = {"prev_value": value}
        record = yield self._registry.compare_and_set(lease.key_name, value, ttl, **cas)
        return self._written_lease(record, lease.subnet, lease.attrs, lease.ipv6_subnet)

    @defer.inlineCallbacks
    def watch_leases(self, wait_index):
        """
        Deferred C{(event_or_None, modified_index)}; None for a node that is not a
        lease (stepped past). Fails with EventIndexCleared when the index is too old,
        and with EtcdIndexWentBack when etcd's index is below C{wait_index - 1} (the
        cluster was wiped or restored; both mean: re-list).
        """
        change = yield self._registry.watch(wait_index)
        node = change.record
        index = node.modified_index
        if change.removed:
            self.skipped.forget(node.key)
            try:
                subnet, ipv6_subnet = key_to_subnets(node.key)
            except LeaseParseError:
                return None, index   # it was never a lease: nothing to undo
            attrs = None
            if change.prev_value:
                try:
                    attrs = LeaseAttrs.from_json(change.prev_value)
                except LeaseParseError:
                    attrs = None
            return LeaseEvent(REMOVED, Lease(subnet=subnet, attrs=attrs, ttl=None,
                                             modified_index=index, key=key_name(node.key),
                                             ipv6_subnet=ipv6_subnet)), index
        try:
            lease = node_to_lease(node)
        except LeaseParseError as e:
            self._warn_bad_node(node, e)
            return None, index
        self.skipped.forget(node.key)    # replaced by a good value
        return LeaseEvent(ADDED, lease), index

