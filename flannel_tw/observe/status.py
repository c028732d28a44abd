# -*- test-case-name: tests.unit.test_status -*-
"""
The daemon at one moment: L{DaemonStatus}, the one snapshot that ``/healthz`` and the
metrics collector read (L{flannel_tw.daemon.FlannelDaemon.status}), and L{judge}, the
health judgement as a pure function of it. Pure: no reactor, no clock of its own.
"""
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Mapping, NamedTuple, Optional

from flannel_tw.lease.status import KeeperStatus, WatcherStatus

# the daemon's start-up phases, in order (flannel_tw.daemon); only RUNNING can be healthy
WAITING_CONFIG, PREPARING, ACQUIRING, STARTING, RUNNING, STOPPED, FAILED = (
    "waiting-config", "preparing", "acquiring", "starting", "running", "stopped", "failed")


def _frozen(mapping):
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class DaemonStatus:
    """
    @ivar phase: the start-up phase (L{flannel_tw.daemon}: waiting-config ... running).
    @ivar ready: subnet.env written (READY=1 sent).
    @ivar lease: our lease's subnet (None before acquisition).
    @ivar lease_lost: the keeper found the lease gone or taken, until re-acquired.
    @ivar etcd_answered_ago: seconds since etcd last answered (None: not yet running).
    @ivar watch_silent_for: seconds the lease watch in flight has been silent (None: none).
    @ivar etcd_stale_after: the window both of these are judged against.
    @ivar etcd_errors: etcd request errors by kind (L{flannel_tw.etcd.errors.ERROR_KINDS}).
    @ivar skipped: leases not routed, by reason (the manager's and the watcher's).
    @ivar backend_counters: a copy of the backend's counters (None: it has none).
    @ivar routes: the backend's route table size (None: it has none).
    """
    phase: str
    ready: bool = False
    lease: Optional[IPv4Network] = None
    network: Optional[IPv4Network] = None
    public_ip: Optional[IPv4Address] = None
    backend: Optional[str] = None
    keeper: Optional[KeeperStatus] = None
    lease_lost: Optional[bool] = None
    watcher: Optional[WatcherStatus] = None
    etcd_answered_ago: Optional[float] = None
    watch_silent_for: Optional[float] = None
    etcd_stale_after: float = 90.0
    etcd_errors: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)
    backend_counters: Optional[Mapping[str, int]] = None
    routes: Optional[int] = None

    def __post_init__(self):
        # a reader cannot change the daemon (or another reader's view) through a mapping
        object.__setattr__(self, "etcd_errors", _frozen(self.etcd_errors))
        object.__setattr__(self, "skipped", _frozen(self.skipped))
        if self.backend_counters is not None:
            object.__setattr__(self, "backend_counters", _frozen(self.backend_counters))


class Health(NamedTuple):
    healthy: bool
    etcd_ok: bool
    watch_ok: bool


def judge(status):
    """
    The health of C{status}: healthy only while the daemon runs, holds its lease
    (L{KeeperStatus.lease_ok}), etcd answered within C{etcd_stale_after} seconds (the
    periodic probe or any other request), and the lease watch in flight (if any) showed
    life within that window too (the etcd client checks an idle watch's member every 60 s
    and leaves a silent one within 60 s + request_timeout, so a longer silence means the
    watch is stuck). The watcher's own failures are reported, not judged: an idle long
    poll that has not answered yet is normal.

    @rtype: L{Health}
    """
    etcd_ok = (status.etcd_answered_ago is not None
               and status.etcd_answered_ago <= status.etcd_stale_after)
    watch_ok = status.watch_silent_for is None or status.watch_silent_for <= status.etcd_stale_after
    lease_ok = status.keeper is not None and status.keeper.lease_ok
    return Health(healthy=bool(status.phase == RUNNING and lease_ok and etcd_ok and watch_ok),
                  etcd_ok=bool(etcd_ok), watch_ok=bool(watch_ok))


def health_body(status):
    """The JSON body of /healthz for C{status} (every field of flannel-tw's /healthz)."""
    health = judge(status)
    keeper, watcher = status.keeper, status.watcher
    return {
        "healthy": health.healthy,
        "etcd_ok": health.etcd_ok,
        "watch_ok": health.watch_ok,
        "watch_silent_for": status.watch_silent_for,
        "etcd_answered_ago": status.etcd_answered_ago,
        "keeper": keeper.state if keeper else None,
        "lease_lost": status.lease_lost if keeper else None,
        "watcher": watcher.state if watcher else None,
        "ready": status.ready,
        "phase": status.phase,
        "lease": str(status.lease) if status.lease else None,
        "public_ip": str(status.public_ip),
        "backend": status.backend,
        "renewals": keeper.renewals if keeper else 0,
        "last_renewal_at": keeper.last_renewal_at if keeper else None,
        "renewal_failing_for": keeper.renewal_failing_for if keeper else None,
        "lease_expires_in": keeper.lease_expires_in if keeper else None,
        "watch_failures": watcher.failures if watcher else 0,
        "last_watch_event_at": watcher.last_event_at if watcher else None,
        "peers": watcher.peers if watcher else 0,
        "routes": status.routes,     # the udp backend's route table size, else None
    }
