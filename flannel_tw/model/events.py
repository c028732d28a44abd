"""Lease events passed from the watcher to backends. Pure."""
from dataclasses import dataclass

from flannel_tw.model.lease import Lease

ADDED = "added"
REMOVED = "removed"


@dataclass(frozen=True)
class LeaseEvent:
    kind: str       # ADDED or REMOVED
    lease: Lease
