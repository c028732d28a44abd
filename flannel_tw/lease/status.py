# -*- test-case-name: tests.unit.test_keeper, tests.unit.test_watch -*-
"""
Snapshots of the lease stage for the daemon's status (L{flannel_tw.observe}): frozen
values, so a reader cannot change the keeper or the watcher through them.
"""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class KeeperStatus:
    """
    The lease keeper at one moment.

    @ivar state: the keeper's state name (L{flannel_tw.lease.keeper}).
    @ivar lease_ok: what /healthz judges: the lease is held, being renewed, or a renewal
        is being retried; not lost, not in conflict, the renewal round not late.
    """
    state: str
    lease_ok: bool
    renewals: int
    renewal_failures: int
    last_renewal_at: Optional[float]
    renewal_failing_for: Optional[float]
    lease_expires_in: Optional[float]


@dataclass(frozen=True)
class WatcherStatus:
    """The lease watcher at one moment (C{peers}: leases routed; C{retained}: routes kept
    after a wiped etcd)."""
    state: str
    failures: int
    resyncs: int
    last_event_at: Optional[float]
    peers: int
    retained: int
