# -*- test-case-name: tests.test_subnetfile -*-
"""
subnet.env (flannel-compat.md section 5): rendering, parsing, atomic writing, and
the Docker options that mk-docker-opts.sh derives from it. Pure apart from file I/O.
"""
from ipaddress import IPv4Network
from typing import Dict, Optional


class SubnetFileError(ValueError):
    """A missing or malformed subnet.env; the message names the file and the problem."""


def render_subnet_env(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> str:
    """FLANNEL_NETWORK, FLANNEL_SUBNET (lease address + 1 / prefix), FLANNEL_MTU, FLANNEL_IPMASQ."""
    raise NotImplementedError


def parse_env(text: str) -> Dict[str, str]:
    """KEY=VALUE lines (godotenv-like: comments, blank lines, optional quotes, ``export``)."""
    raise NotImplementedError


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Create the directory (0755), write ``<dir>/.<name>`` then rename over ``path``."""
    raise NotImplementedError


def read_previous_subnet(path: str) -> Optional[IPv4Network]:
    """FLANNEL_SUBNET from an earlier run, masked (10.5.72.1/24 -> 10.5.72.0/24); None if absent/bad."""
    raise NotImplementedError


def render_docker_opts(env: Dict[str, str], individual: bool = True, combined: bool = True,
                       key: str = "DOCKER_OPTS", ipmasq: bool = True, existing: str = "") -> str:
    """mk-docker-opts.sh's output for a parsed subnet.env; raises SubnetFileError."""
    raise NotImplementedError
