# -*- test-case-name: tests.unit.test_hostgw, tests.lab.test_vxlan, tests.unit.test_kernel_seam -*-
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
"""
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

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
    """C{subnet via gateway dev <oif>}: one remote host-gw lease."""
    subnet: IPv4Network
    gateway: IPv4Address

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
        """@return: Deferred firing with the L{LeaseAttrs}; fails with L{HostGwError} behind NAT."""
        if self.ext_iface.public_ip != self.ext_iface.addr:
            return defer.fail(HostGwError("%s (PublicIP %s, %s has %s)" % (
                NAT_MESSAGE, self.ext_iface.public_ip, self.ext_iface.name,
                self.ext_iface.addr)))
        self.mtu = self.ext_iface.mtu
        return defer.succeed(LeaseAttrs(public_ip=self.ext_iface.public_ip,
                                        backend_type="host-gw"))

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

    def _apply_batch(self, changes):
        return self.kernel.apply_hostgw(self.ext_iface.index, changes)

    def _remove_stale(self, leases):
        return self.kernel.remove_stale(self.network, [l.subnet for l in leases], None,
                                        self.ext_iface.index)

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
