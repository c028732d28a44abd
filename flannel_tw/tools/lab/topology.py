# -*- test-case-name: tests.unit.test_lab_topology, tests.integration.test_lab_topology, tests.lab.test_lab_topology -*-
"""
Synchronous building blocks for a namespace lab: hosts as network namespaces
joined by a bridge in a "switch" namespace, and a docker-like container behind
each host.  Test tooling, not the daemon: it shells out to iproute2.

Layout for prefix ``fl1a2b`` and subnet ``192.168.250.0/24``::

    fl1a2bsw     br0 192.168.250.1/24, ports h1, h2, ...
    fl1a2bh1     eth0 192.168.250.11/24 (peer h1 on br0), default via .1
    fl1a2bh1c    eth0 <FLANNEL_SUBNET .2>, default via .1 on docker0 in fl1a2bh1

With ``subnet6`` (``flannel-tw lab --ipv6``, e.g. ``fd00:250::/64``) the underlay is
dual-stack: br0 also holds ``fd00:250::1/64``, host i ``fd00:250::<10+i>/64`` with a v6
default route via ``::1``; DAD is off in every lab namespace (``accept_dad=0`` before
any device exists, addresses added ``nodad``) so each address is usable at once.  A
container whose subnet.env has ``FLANNEL_IPV6_SUBNET`` gets ::2 of it and a v6 default
route via ::1 on docker0 (docker's ``--ipv6 --fixed-cidr-v6``).

Nothing is created in the current (root) namespace: every device is made
inside a lab namespace, so deleting the namespaces removes everything.
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from ipaddress import (IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface,
                       IPv6Network)
from typing import Dict, List, Optional, Sequence

IP = "ip"


class LabError(Exception):
    """A lab command failed; the message includes the command and its stderr."""


@dataclass(frozen=True)
class Container:
    ns: str                  # container namespace
    host: int                # host number
    addr: IPv4Address        # container eth0 address (.2 of the subnet)
    gateway: IPv4Address     # docker0 address (.1), the default route
    subnet: IPv4Network      # FLANNEL_SUBNET as a network
    mtu: int                 # FLANNEL_MTU
    # dual-stack (subnet.env with FLANNEL_IPV6_SUBNET), else None
    addr6: Optional[IPv6Address] = None      # ::2 of the v6 subnet
    gateway6: Optional[IPv6Address] = None   # docker0's v6 address (::1), the v6 default route
    subnet6: Optional[IPv6Network] = None    # FLANNEL_IPV6_SUBNET as a network

    def addrs(self):
        """The container's addresses: IPv4, then IPv6 when it has one."""
        return [self.addr] + ([self.addr6] if self.addr6 is not None else [])


def _run(argv: Sequence[str], check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    try:
        cp = subprocess.run(list(argv), timeout=timeout, **kw)
    except FileNotFoundError as e:
        raise LabError("cannot run %s: %s" % (argv[0], e))
    except subprocess.TimeoutExpired:
        raise LabError("timed out after %ss: %s" % (timeout, " ".join(argv)))
    if check and cp.returncode != 0:
        raise LabError("%s failed (exit %d): %s" % (
            " ".join(argv), cp.returncode, (cp.stderr or "").strip()))
    return cp


def list_netns() -> List[str]:
    """Names from ``ip netns list`` (the first word of each line)."""
    out = _run([IP, "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _lab_ns_pattern(prefix: str):
    return re.compile(r"^%s(sw|h\d+c?)$" % re.escape(prefix))


def parse_subnet_env(path: str) -> Dict[str, str]:
    """Read a subnet.env file (the daemon's own parser: godotenv-like, errors name the file)."""
    from flannel_tw.host.subnetfile import read_env
    return read_env(path)


def stop_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """TERM, wait up to ``grace`` seconds, then KILL; only the given process ids."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        still = []
        for pid in alive:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:   # not our child: poll for existence
                done = 0
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
            if done == 0:
                still.append(pid)
        alive = still
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _netns_pids(ns: str) -> List[int]:
    cp = _run([IP, "netns", "pids", ns], check=False)
    return [int(p) for p in cp.stdout.split() if p.isdigit()]


def cleanup_stale(prefix: str) -> List[str]:
    """
    Remove a lab left behind (``flannel-tw lab down``): stop every process in
    the namespaces ``<prefix>sw``, ``<prefix>h<i>`` and ``<prefix>h<i>c`` (all
    of them were started by the lab) and delete those namespaces.  Returns the
    names deleted.  Only exact lab names are touched, never other namespaces.
    """
    if not prefix:
        raise ValueError("cleanup_stale needs a lab prefix")
    pat = _lab_ns_pattern(prefix)
    names = [n for n in list_netns() if pat.match(n)]
    # containers first, then hosts, then the switch
    names.sort(key=lambda n: (0 if n.endswith("c") else 2 if n.endswith("sw") else 1, n))
    for ns in names:
        stop_pids(_netns_pids(ns))
    for ns in names:
        _run([IP, "netns", "del", ns], check=False)
    return names


class Lab:
    """
    A set of namespaces sharing one unique short prefix.  Every ``add_*`` call
    records what it made before making it, so ``teardown()`` is safe after a
    partial set-up.
    """

    def __init__(self, prefix: Optional[str] = None, subnet: str = "192.168.250.0/24",
                 subnet6: Optional[str] = None):
        if shutil.which(IP) is None:
            raise LabError("iproute2's 'ip' command was not found")
        existing = set(list_netns())
        if prefix is None:
            for _ in range(100):
                prefix = "fl" + secrets.token_hex(2)
                if not any(n.startswith(prefix) for n in existing):
                    break
        if not re.match(r"^[a-z][a-z0-9]{0,7}$", prefix):
            raise ValueError("lab prefix must be 1-8 lowercase letters/digits: %r" % prefix)
        self.prefix = prefix
        self.subnet = IPv4Network(subnet)
        if self.subnet.prefixlen > 26:
            raise ValueError("lab subnet too small: %s" % subnet)
        #: the underlay's IPv6 subnet (dual-stack lab), or None
        self.subnet6 = self.check_subnet6(subnet6) if subnet6 is not None else None
        self.namespaces: List[str] = []
        self.procs: List[subprocess.Popen] = []
        self._logs = []
        self.hosts: Dict[int, str] = {}
        self.containers: Dict[int, Container] = {}
        self.switch: Optional[str] = None

    @staticmethod
    def check_subnet6(subnet6: str) -> IPv6Network:
        """The underlay IPv6 subnet C{subnet6}; ValueError unless a network of /120 or
        wider."""
        net = IPv6Network(subnet6)
        if net.prefixlen > 120:
            raise ValueError("lab IPv6 subnet too small: %s" % subnet6)
        return net

    # -- names and addresses -------------------------------------------------

    @property
    def switch_ns(self) -> str:
        return self.prefix + "sw"

    def host_ns(self, i: int) -> str:
        return "%sh%d" % (self.prefix, i)

    def container_ns(self, i: int) -> str:
        return "%sh%dc" % (self.prefix, i)

    @property
    def gateway(self) -> IPv4Address:
        """The switch's br0 address (.1)."""
        return self.subnet.network_address + 1

    def host_ip(self, i: int) -> IPv4Address:
        return self.subnet.network_address + 10 + i

    @property
    def gateway6(self) -> Optional[IPv6Address]:
        """The switch's br0 IPv6 address (::1), or None (IPv4-only lab)."""
        return self.subnet6.network_address + 1 if self.subnet6 is not None else None

    def host_ip6(self, i: int) -> Optional[IPv6Address]:
        """Host i's underlay IPv6 address (::<10+i>, as the v4 one), or None."""
        return self.subnet6.network_address + 10 + i if self.subnet6 is not None else None

    # -- plumbing ------------------------------------------------------------

    def _ip(self, ns: str, *args: str) -> subprocess.CompletedProcess:
        return _run([IP, "-n", ns] + list(args))

    def _new_ns(self, ns: str) -> None:
        if ns in self.namespaces:
            raise LabError("namespace %s already made" % ns)
        self.namespaces.append(ns)
        _run([IP, "netns", "add", ns])
        if self.subnet6 is not None:
            # no DAD in the lab: every v6 address (link-local ones too) usable at once
            self.exec(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                           "net.ipv6.conf.default.accept_dad=0"])
        self._ip(ns, "link", "set", "lo", "up")

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        self.exec(ns, ["sysctl", "-q", "-w", "%s=%s" % (key, value)])

    # -- building blocks -----------------------------------------------------

    def add_switch(self) -> str:
        """Namespace ``<p>sw`` with bridge br0 holding .1; returns the namespace."""
        ns = self.switch_ns
        self._new_ns(ns)
        self._ip(ns, "link", "add", "br0", "type", "bridge")
        self._ip(ns, "addr", "add", "%s/%d" % (self.gateway, self.subnet.prefixlen),
                 "dev", "br0")
        if self.subnet6 is not None:
            self._ip(ns, "addr", "add", "%s/%d" % (self.gateway6, self.subnet6.prefixlen),
                     "dev", "br0", "nodad")
        self._ip(ns, "link", "set", "br0", "up")
        self.switch = ns
        return ns

    def add_host(self, i: int) -> str:
        """
        Namespace ``<p>h<i>`` with eth0 = .(10+i), mtu 1500, default route via
        .1, its veth peer ``h<i>`` on the switch's br0.  Returns the namespace.
        """
        if self.switch is None:
            raise LabError("add_switch() first")
        if not 1 <= i <= 200:
            raise ValueError("host number must be 1..200")
        ns = self.host_ns(i)
        self._new_ns(ns)
        port = "h%d" % i
        self._ip(self.switch, "link", "add", port, "type", "veth",
                 "peer", "name", "eth0", "netns", ns)
        self._ip(self.switch, "link", "set", port, "master", "br0", "up")
        self._ip(ns, "link", "set", "eth0", "mtu", "1500", "up")
        self._ip(ns, "addr", "add", "%s/%d" % (self.host_ip(i), self.subnet.prefixlen),
                 "dev", "eth0")
        self._ip(ns, "route", "add", "default", "via", str(self.gateway))
        if self.subnet6 is not None:
            self._ip(ns, "addr", "add", "%s/%d" % (self.host_ip6(i), self.subnet6.prefixlen),
                     "dev", "eth0", "nodad")
            self._ip(ns, "-6", "route", "add", "default", "via", str(self.gateway6))
        self.hosts[i] = ns
        return ns

    def add_container(self, host: int, subnet_env_path: str) -> Container:
        """
        As dockerd with ``--bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU``: bridge
        docker0 in the host namespace holding FLANNEL_SUBNET, ip_forward on,
        and a container namespace ``<p>h<i>c`` whose eth0 has .2 of the subnet,
        mtu FLANNEL_MTU and a default route via .1.  With FLANNEL_IPV6_SUBNET in the
        file (dual-stack), as dockerd with ``--ipv6 --fixed-cidr-v6``: docker0 also
        holds that address (::1), v6 forwarding is on, and eth0 gets ::2 and a v6
        default route via ::1.
        """
        if host not in self.hosts:
            raise LabError("add_host(%d) first" % host)
        env = parse_subnet_env(subnet_env_path)
        try:
            bip = IPv4Interface(env["FLANNEL_SUBNET"])
            mtu = int(env["FLANNEL_MTU"])
            bip6 = (IPv6Interface(env["FLANNEL_IPV6_SUBNET"])
                    if env.get("FLANNEL_IPV6_SUBNET") else None)
        except (KeyError, ValueError) as e:
            raise LabError("bad subnet.env %s (%s): %r" % (subnet_env_path, e, env))
        net = bip.network
        addr = bip.ip + 1
        if addr not in net or addr == net.broadcast_address:
            raise LabError("no room for a container in %s" % bip)
        addr6 = bip6.ip + 1 if bip6 is not None else None
        if bip6 is not None and addr6 not in bip6.network:
            raise LabError("no room for a container in %s" % bip6)
        hns = self.hosts[host]
        cns = self.container_ns(host)
        self._new_ns(cns)
        self._ip(hns, "link", "add", "docker0", "type", "bridge")
        self._ip(hns, "addr", "add", str(bip), "dev", "docker0")
        self._ip(hns, "link", "set", "docker0", "mtu", str(mtu), "up")
        self._sysctl(hns, "net.ipv4.ip_forward", "1")
        self._ip(hns, "link", "add", "veth0", "mtu", str(mtu), "type", "veth",
                 "peer", "name", "eth0", "netns", cns)
        self._ip(hns, "link", "set", "veth0", "master", "docker0", "up")
        self._ip(cns, "link", "set", "eth0", "mtu", str(mtu), "up")
        self._ip(cns, "addr", "add", "%s/%d" % (addr, net.prefixlen), "dev", "eth0")
        self._ip(cns, "route", "add", "default", "via", str(bip.ip))
        if bip6 is not None:
            self._ip(hns, "addr", "add", str(bip6), "dev", "docker0", "nodad")
            self._sysctl(hns, "net.ipv6.conf.all.forwarding", "1")
            self._ip(cns, "addr", "add", "%s/%d" % (addr6, bip6.network.prefixlen),
                     "dev", "eth0", "nodad")
            self._ip(cns, "-6", "route", "add", "default", "via", str(bip6.ip))
        c = Container(ns=cns, host=host, addr=addr, gateway=bip.ip, subnet=net, mtu=mtu,
                      addr6=addr6, gateway6=bip6.ip if bip6 is not None else None,
                      subnet6=bip6.network if bip6 is not None else None)
        self.containers[host] = c
        return c

    # -- running things ------------------------------------------------------

    def exec(self, ns: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """
        Run ``argv`` in namespace ``ns`` and wait.  Keywords go to
        subprocess.run; by default output is captured as text, ``check=True``
        raises LabError, ``timeout=30``.
        """
        return _run([IP, "netns", "exec", ns] + list(argv), **kw)

    def spawn(self, ns: str, argv: Sequence[str], log_path: str,
              env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None
              ) -> subprocess.Popen:
        """Start ``argv`` in the background in ``ns``, stdout+stderr to ``log_path``; tracked for teardown."""
        log = open(log_path, "ab")
        self._logs.append(log)
        p = subprocess.Popen([IP, "netns", "exec", ns] + list(argv),
                             stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def ping(self, ns: str, addr, count: int = 1, timeout: float = 2) -> bool:
        """True if ``ping -c count -W timeout addr`` from ``ns`` gets a reply."""
        cp = self.exec(ns, ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout),
                            str(addr)], check=False, timeout=count * timeout + 10)
        return cp.returncode == 0

    # -- state and teardown --------------------------------------------------

    def state(self) -> dict:
        """JSON-able description (for ``lab --keep`` / ``lab down``)."""
        return {
            "prefix": self.prefix,
            "subnet": str(self.subnet),
            "namespaces": list(self.namespaces),
            "pids": [p.pid for p in self.procs if p.poll() is None],
            "subnet6": str(self.subnet6) if self.subnet6 is not None else None,
            "hosts": {str(i): dict({"ns": ns, "ip": str(self.host_ip(i))},
                                   **({"ip6": str(self.host_ip6(i))} if self.subnet6 else {}))
                      for i, ns in self.hosts.items()},
            "containers": {str(i): dict({"ns": c.ns, "addr": str(c.addr),
                                         "subnet": str(c.subnet), "mtu": c.mtu},
                                        **({"addr6": str(c.addr6), "subnet6": str(c.subnet6)}
                                           if c.addr6 is not None else {}))
                           for i, c in self.containers.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.state(), indent=2, sort_keys=True)

    def teardown(self) -> None:
        """
        Stop tracked processes (TERM, then KILL), then any process left in a lab
        namespace, then delete the namespaces (and with them their devices).
        Idempotent; safe after a partial set-up.
        """
        procs, self.procs = self.procs, []
        pids = [p.pid for p in procs if p.poll() is None]
        stop_pids(pids, grace=8.0)
        for p in procs:
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        logs, self._logs = self._logs, []
        for f in logs:
            f.close()
        made, self.namespaces = self.namespaces, []
        present = set(list_netns())
        pat = _lab_ns_pattern(self.prefix)
        names = [n for n in reversed(made) if n in present]
        names += sorted(n for n in present if pat.match(n) and n not in names)
        for ns in names:
            stop_pids(_netns_pids(ns))
        for ns in names:
            _run([IP, "netns", "del", ns], check=False)
        self.hosts.clear()
        self.containers.clear()
        self.switch = None
