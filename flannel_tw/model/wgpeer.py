# -*- test-case-name: tests.unit.test_wg_uapi -*-
"""
A WireGuard peer as the wireguard backend wants it set up, independent of how the device
is driven (the kernel module over generic netlink, or wireguard-go over its UAPI socket).
Pure: no reactor.
"""
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Optional, Tuple, Union

Network = Union[IPv4Network, IPv6Network]


@dataclass(frozen=True)
class WgPeer:
    public_key: bytes                         # 32 raw bytes (not base64)
    endpoint: Optional[Tuple[str, int]]       # (IP text, port); None = no endpoint
    allowed_ips: Tuple[Network, ...]          # replaces the peer's AllowedIPs when set
    # 32 raw bytes; None = no PSK. A secret: never in the repr (logs, errors)
    preshared_key: Optional[bytes] = field(default=None, repr=False)
    keepalive: int = 0                        # persistent keepalive in seconds, 0 = off
