# -*- test-case-name: tests.unit.test_hostgw, tests.unit.test_routed_dualstack, tests.lab.test_vxlan, tests.unit.test_kernel_seam -*-
"""
The host-gw backend (flannel-compat.md section 8): no encapsulation, one route per
remote host-gw lease, C{<subnet> via <PublicIP> dev <ext iface>}; the hosts must share
an L2 segment.

- prepare() fails when our PublicIP differs from the interface address (flanneld's NAT
  message; the daemon exits 1);
- MTU = the ext iface MTU; lease C{{"PublicIP":...,"BackendType":"host-gw"}};
- a peer whose PublicIP is not directly reachable: the route add fails and an error naming
  the peer is logged (and retried quietly every 10 s);
- every 10 s (on the injected reactor) routes of installed peers that someone deleted are
  put back ("Route recovered").

IPv6 (issue 15), when the config has EnableIPv6: our lease publishes PublicIPv6 (the ext
iface's IPv6 address); each remote dual-stack host-gw lease also gets
C{<v6 subnet> via <PublicIPv6> dev <ext iface>}, checked and recovered like the IPv4
routes. The NAT check covers IPv4 only (as flanneld's). An IPv6 part that cannot be
routed (no PublicIPv6, a subnet outside IPv6Network) is skipped with one warning; its
IPv4 part is routed (L{flannel_tw.backend.routed}).
"""
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Union

from twisted.internet import defer, task
from zope.interface import implementer

from flannel_tw.backend.routed import PeerBackend
from flannel_tw.interfaces import IBackend, IReconcilingBackend, IReconfiguringBackend
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.interfaces import IHostGwKernel
from flannel_tw.kernel.batch import Job, Kernel
from flannel_tw.kernel.rtnetlink import RouteEntry, route_request

ROUTE_CHECK_INTERVAL = 10.0     # seconds (flanneld's routeCheckRetries loop)

NAT_MESSAGE = ("your PublicIP differs from interface IP, meaning that probably you're on a "
               "NAT, which is not supported by host-gw backend")


class HostGwError(Exception):
    """The host-gw backend cannot run here."""


@dataclass(frozen=True)
class HostGwRoute:
    """C{subnet via gateway dev <oif>}: one remote host-gw lease (one family of it)."""
    subnet: Union[IPv4Network, IPv6Network]
    gateway: Union[IPv4Address, IPv6Address]

    def __str__(self):
        return "%s via %s" % (self.subnet, self.gateway)


@implementer(IHostGwKernel)
class HostGwKernel(Kernel):
    """The batch engine plus host-gw routes (blocking: run it in a thread)."""

    def apply_hostgw(self, oif: int, changes) -> list:
        """
        C{changes}: C{(have, target)} pairs of L{HostGwRoute} or None: delete C{have} (a
        missing route is fine), then C{route replace <target>} via the ext iface.

        @return: per change, in order, the route installed (None when only removing) or
            the exception (NetlinkError, KernelError) that failed it.
        """
        jobs = []
        for have, target in changes:
            removes = [] if have is None else [
                route_request("del", have.subnet, have.gateway, oif)]
            steps = [] if target is None else [
                (route_request("replace", target.subnet, target.gateway, oif), None)]
            jobs.append(Job(removes, steps, target))
        return self.run_jobs(jobs)


@implementer(IBackend, IReconcilingBackend, IReconfiguringBackend)
class HostGwBackend(PeerBackend):
    """L{IBackend} for the host-gw type."""

    name = "host-gw"
    kernel_class = HostGwKernel

    def __init__(self, reactor, ext_iface, kernel=None, to_thread=None,
                 check_interval=ROUTE_CHECK_INTERVAL):
        PeerBackend.__init__(self, reactor, ext_iface, kernel, to_thread)
        self.check_interval = check_interval
        self.recovered = 0
        self._check = None

    def prepare(self, config):
        """
        @return: Deferred firing with the L{LeaseAttrs}; fails with L{HostGwError} behind
            NAT. EnableIPv6 without an IPv6 address chosen: a warning, no PublicIPv6.
        """
        if self.ext_iface.public_ip != self.ext_iface.addr:
            return defer.fail(HostGwError("%s (PublicIP %s, %s has %s)" % (
                NAT_MESSAGE, self.ext_iface.public_ip, self.ext_iface.name,
                self.ext_iface.addr)))
        public_ipv6 = None
        if getattr(config, "enable_ipv6", False):
            public_ipv6 = self.ext_iface.public_ipv6 or self.ext_iface.addr6
            if public_ipv6 is None:
                self.log.warn("host-gw backend: EnableIPv6 is set but {iface} has no IPv6 "
                              "address chosen: no PublicIPv6, peers route IPv4 only to us",
                              iface=self.ext_iface.name)
        self.mtu = self.ext_iface.mtu
        return defer.succeed(LeaseAttrs(public_ip=self.ext_iface.public_ip,
                                        backend_type="host-gw", public_ipv6=public_ipv6))

    def start(self, config, lease):
        """Nothing to configure for our own lease; starts the 10 s route check. Deferred."""
        self._own(config, lease)
        if self._check is None:
            self._check = task.LoopingCall(self.check_routes)
            self._check.clock = self._reactor
            self._check.start(self.check_interval, now=False)
        self.log.info("host-gw backend: routes via {iface}, MTU {mtu}",
                      iface=self.ext_iface.name, mtu=self.mtu)
        return defer.succeed(None)

    def reconfigure(self, config, lease):
        """Our lease moved: only our own subnet changes. Deferred."""
        self._own(config, lease)
        return defer.succeed(None)

    def stop(self):
        if self._check is not None and self._check.running:
            self._check.stop()
        self._check = None
        return defer.succeed(None)

    # -- PeerBackend ------------------------------------------------------------

    def _peer(self, lease):
        return HostGwRoute(subnet=lease.subnet, gateway=lease.attrs.public_ip)

    def _peer6(self, lease):
        problem = self.v6_problem(lease)
        if problem is None and lease.attrs.public_ipv6 is None:
            problem = "the lease has no PublicIPv6"
        if problem is not None:
            raise ValueError(problem)
        return HostGwRoute(subnet=lease.ipv6_subnet, gateway=lease.attrs.public_ipv6)

    def _apply_batch(self, changes):
        return self.kernel.apply_hostgw(self.ext_iface.index, changes)

    def _remove_stale(self, leases):
        removed = self.kernel.remove_stale(self.network, [l.subnet for l in leases], None,
                                           self.ext_iface.index)
        if self.network6 is not None:
            keep6 = []
            for lease in leases:
                try:
                    keep6.append(self._peer6(lease).subnet)
                except ValueError:
                    pass
            removed += self.kernel.remove_stale(self.network6, keep6, None,
                                                self.ext_iface.index)
        return removed

    # -- the route check ----------------------------------------------------------

    def check_routes(self):
        """
        Put back routes of installed peers that are missing from the kernel, then retry
        peers whose route could not be added.

        @return: Deferred firing with the list of L{HostGwRoute}s recovered.
        """
        d = self._serial(self._kernel, self._recover, list(self.installed.values()))

        def done(result):
            recovered, errors = result
            for route in recovered:
                self.recovered += 1
                self.log.info("Route recovered: {subnet} via {gw} dev {iface}",
                              subnet=route.subnet, gw=route.gateway, iface=self.ext_iface.name)
            for route, error in errors:
                self.log.error("host-gw backend: cannot put back the route to {subnet} via "
                               "{gw}: {error}", subnet=route.subnet, gw=route.gateway,
                               error=error)
            return self.resync().addCallback(lambda _: recovered)

        def failed(f):
            self.log.error("host-gw backend: route check failed: {error}",
                           error=f.getErrorMessage())
            return []
        return d.addCallbacks(done, failed)

    def _recover(self, routes):
        """
        In a thread: re-add (in one batch) each route the kernel lacks, after one route
        dump; returns C{(re-added, errors)}.
        """
        oif = self.ext_iface.index
        present = set(self.kernel.routes(self.network)) if routes else set()
        if self.network6 is not None and any(r.subnet.version == 6 for r in routes):
            present |= set(self.kernel.routes(self.network6))
        missing = [r for r in routes if RouteEntry(r.subnet, r.gateway, oif) not in present]
        recovered, errors = [], []
        if missing:
            results = self.kernel.apply_hostgw(oif, [(None, r) for r in missing])
            for route, result in zip(missing, results):
                if isinstance(result, Exception):
                    errors.append((route, result))
                else:
                    recovered.append(route)
        return recovered, errors
