# -*- test-case-name: tests.test_config -*-
"""
The network config stored at ``<prefix>/config``: parsing and validation with
flanneld's rules and defaults (flannel-compat.md section 1 and 13). Pure: no reactor.
"""
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Optional


class ConfigError(ValueError):
    """
    The config is not usable. ``key`` names the offending field ("Network",
    "SubnetLen", "SubnetMin", "SubnetMax", "Backend") or is None for a JSON error.
    str(err) is a full sentence that names the key and what is wrong.
    """

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str          # lower-cased, "udp" when Backend is absent
    backend: dict = field(default_factory=dict, compare=False, hash=False)  # raw Backend object

    @property
    def subnet_size(self) -> int:
        return 2 ** (32 - self.subnet_len)


def parse_config(text) -> NetworkConfig:
    """Parse and validate config JSON (str or bytes). Raises ConfigError."""
    raise NotImplementedError
