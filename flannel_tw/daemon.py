# -*- test-case-name: tests.integration.test_daemon, tests.unit.test_etcd_health, tests.unit.test_status -*-
"""
The daemon: sequences start-up in the order flanneld does (config -> backend -> lease
-> data plane -> subnet.env -> READY=1 -> watch + renew) over parts built elsewhere
(L{flannel_tw.wiring}), and publishes one snapshot of itself, L{FlannelDaemon.status}.

Failures while waiting for etcd or for a valid config are retried forever, as
flanneld does; so is lease acquisition (flanneld exits; a restart loop under
systemd does the same with more noise). Failures of the data plane itself (no TUN,
port taken, bad backend options) are fatal: a clear message and exit status 1,
and no lease is taken when they happen before acquisition.
"""
import os
import random
import sys
from dataclasses import dataclass, replace

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

import flannel_tw
from flannel_tw.backend.reconcile import FirstList
from flannel_tw.backend.registry import UnknownBackend, make_backend
from flannel_tw.interfaces import (ICountingBackend, IReconcilingBackend,
                                   IReconfiguringBackend, IRoutesBackend)
from flannel_tw.model.config import ConfigError
from flannel_tw.model.leasecheck import public_ipv6_problem
from flannel_tw.model.backoff import make_backoff
from flannel_tw.lease.keeper import LeaseKeeper
from flannel_tw.lease.watch import LeaseWatcher
from flannel_tw.host.subnetfile import read_previous_subnets, render_subnet_env, write_atomic
from flannel_tw.observe.logs import redact_url
from flannel_tw.host.sdnotify import sd_notify, sd_status
from flannel_tw.observe.etcdprobe import EtcdProbe
from flannel_tw.observe.status import (  # noqa: F401 (the phases are part of this API)
    ACQUIRING, FAILED, PREPARING, RUNNING, STARTING, STOPPED, WAITING_CONFIG, DaemonStatus)


class FatalError(Exception):
    """The daemon cannot run: logged and the process exits with status 1."""


@dataclass
class DaemonSettings:
    subnet_file: str = "/run/flannel/subnet.env"
    ip_masq: bool = False
    forward_rules: bool = True      # --iptables-forward-rules
    renew_margin: float = 3600.0     # seconds
    renew_grace: float = 300.0       # /healthz fails once renewal has failed this long (at most)
    config_retry: float = 1.0        # first delay between config fetches (flanneld: 1 s) ...
    config_retry_max: float = 10.0   # ... doubling (plus up to 20% jitter) up to this cap
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    etcd_probe_interval: float = 30.0  # seconds between etcd health probes
    etcd_stale_after: float = 90.0     # /healthz fails when etcd has not answered for this long


def exit_process(reactor, code):
    """Stop the reactor, then leave with C{code} (twistd itself always exits 0)."""
    def _exit():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    reactor.addSystemEventTrigger("after", "shutdown", _exit)
    reactor.stop()


class FlannelDaemon(service.MultiService):
    """
    @param backend_factory: C{(name, reactor, ext_iface) -> IBackend}; raises UnknownBackend.
    @param exit: C{code -> None}, called on a fatal error (default: L{exit_process}).
    """

    log = Logger()

    def __init__(self, reactor, manager, ext_iface, settings, backend_factory=make_backend,
                 notify=sd_notify, exit=None, backoff=None, rules_factory=None,
                 keeper_clock=None, status=None, etcd_client=None, iface_v6=None):
        service.MultiService.__init__(self)
        self._reactor = reactor
        # the lease keeper's timers: a MonotonicClock from flannel_tw.wiring (wall-clock steps)
        self._keeper_clock = keeper_clock if keeper_clock is not None else reactor
        self.manager = manager
        self.ext_iface = ext_iface
        self.settings = settings
        self._backend_factory = backend_factory
        self._notify = notify
        # STATUS= for systemctl; a daemon given its own notify sends none unless told how
        if status is None:
            status = sd_status if notify is sd_notify else (lambda text: None)
        self._status = status
        # the start-up line, STATUS=, and the status snapshot (error counts, watch silence)
        self.etcd_client = etcd_client
        self._exit = exit if exit is not None else (lambda code: exit_process(reactor, code))
        self._backoff = backoff or make_backoff(initial=1.0, maximum=30.0)
        self._config_backoff = make_backoff(
            initial=settings.config_retry, maximum=settings.config_retry_max, factor=2.0,
            jitter=lambda: 0.0)
        self._jitter = random.Random()
        self.phase = STOPPED
        self.config = None
        self.backend = None
        self.keeper = None
        self.watcher = None
        self.ready = False
        self.subnet_env_written_at = None
        self._subnet_env_lock = defer.DeferredLock()
        self._run = None
        self._last_config_error = None
        self.config_attempts = 0
        self._stopping = False
        # rules_factory(reactor, network, subnet, ip_masq, forward) -> object with start(),
        # update(subnet), stop(): flanneld's iptables rules (FORWARD accept unless
        # --iptables-forward-rules=false, masquerade with --ip-masq); not called at all
        # when neither is wanted, so then iptables is never touched.
        self._rules_factory = rules_factory
        self.rules = None
        self.etcd_probe = EtcdProbe(reactor, manager, settings.etcd_probe_interval)
        # () -> ExtIface: the dual-stack interface choice (flannel_tw.kernel.iface, ipv6=True),
        # made once the config says EnableIPv6 (the first choice, before the config, is v4)
        self._iface_v6 = iface_v6

    @property
    def lease(self):
        return self.keeper.lease if self.keeper is not None else None

    # -- service --------------------------------------------------------------

    def startService(self):
        service.MultiService.startService(self)
        iface = self.ext_iface
        self.log.info("flannel-tw {version} starting: etcd endpoints {endpoints}, "
                      "prefix {prefix}", version=flannel_tw.__version__,
                      endpoints=", ".join(self._endpoints()), prefix=self.manager.prefix)
        self.log.info("Using interface with name {iface} and address {iface_ip} (MTU "
                      "{iface_mtu}), public IP {public_ip}", iface=iface.name,
                      iface_ip=iface.addr, iface_mtu=iface.mtu, public_ip=iface.public_ip)
        self._run = self.run()
        self._run.addErrback(self._crashed)

    @defer.inlineCallbacks
    def stopService(self):
        self._stopping = True
        if self._run is not None:
            self._run.cancel()
        self.etcd_probe.stop()
        for part in (self.watcher, self.keeper, self.rules):
            if part is not None:
                part.stop()
        if self.backend is not None:
            try:
                yield self.backend.stop()
            except Exception:
                self.log.failure("Stopping the backend failed")
        self.phase = STOPPED
        self.log.info("Exiting cleanly; the lease and the data plane stay in place")
        yield service.MultiService.stopService(self)

    def _crashed(self, failure):
        if failure.check(defer.CancelledError):
            return None
        self.phase = FAILED
        if failure.check(FatalError):
            self.log.critical("{error}", error=failure.value)
        else:
            self.log.failure("flannel-tw failed", failure)
        self._exit(1)
        return None

    # -- the start-up sequence --------------------------------------------------

    def _endpoints(self):
        """The etcd endpoints without userinfo (safe to log)."""
        client = self.etcd_client
        return [redact_url(e) for e in (client.endpoints if client is not None else ())]

    def _config_location(self):
        endpoints = self._endpoints() or ["etcd"]
        where = "%s%s/config" % (endpoints[0], self.manager.prefix.rstrip("/"))
        if len(endpoints) > 1:
            where += " (endpoints %s)" % ", ".join(endpoints)
        return where

    def _set_status(self, text):
        """STATUS= for systemd (one line)."""
        self._status(" ".join(text.splitlines()))

    @defer.inlineCallbacks
    def run(self):
        self.phase = WAITING_CONFIG
        self._set_status("waiting for network config at %s" % self._config_location())
        config, backend = yield self._wait_for_config()
        self.config, self.backend = config, backend
        self._set_status("acquiring lease in %s (%s backend)" % (config.network, backend.name))

        self.phase = PREPARING
        try:
            attrs = yield backend.prepare(config)
        except Exception as e:
            raise FatalError("Error registering network: %s backend: %s" % (backend.name, e))
        attrs = self._dual_stack_attrs(config, attrs)

        self.phase = ACQUIRING
        previous = read_previous_subnets(self.settings.subnet_file)
        if previous.problem is not None:
            self.log.warn("Ignoring the previous subnets in {path}: {error}",
                          path=self.settings.subnet_file, error=previous.problem)
        lease = yield self._acquire(config, attrs, previous.subnet, previous.ipv6_subnet)

        self.phase = STARTING
        try:
            yield backend.start(config, lease)
        except Exception as e:
            raise FatalError("Error starting the %s backend for %s: %s"
                             % (backend.name, lease.subnet, e))
        self.keeper = LeaseKeeper(self._reactor, self.manager, config, attrs, lease,
                                  self.settings.renew_margin, on_new_lease=self._new_lease,
                                  clock=self._keeper_clock, grace=self.settings.renew_grace)
        if self._rules_factory is not None and (self.settings.ip_masq
                                                or self.settings.forward_rules):
            v6 = {}     # dual-stack: the ip6tables rules too (--ip-masq covers both)
            if config.enable_ipv6 and lease.ipv6_subnet is not None:
                v6 = dict(network6=config.ipv6_network, subnet6=lease.ipv6_subnet)
            self.rules = self._rules_factory(self._reactor, config.network, lease.subnet,
                                             self.settings.ip_masq,
                                             forward=self.settings.forward_rules, **v6)
            yield self.rules.start()
        yield self._write_subnet_env(lease)     # in a thread; READY=1 only once written
        self.phase = RUNNING
        self.ready = True
        self._set_status("running: subnet %s via %s" % (lease.subnet, backend.name))
        self._notify("READY=1")
        listing = self.manager
        if IReconcilingBackend.providedBy(backend):
            # the backend removes kernel entries of leases gone while we were down
            listing = FirstList(self.manager, backend.reconcile)
        # only leases that may be routed reach the backend (flannel_tw.model.leasecheck)
        self.watcher = LeaseWatcher(self._reactor, listing, backend.handle_events,
                                    own_subnet=lambda: self.keeper.lease.subnet,
                                    own_sink=self.keeper.own_event,
                                    network=config.network, subnet_len=config.subnet_len,
                                    own_public_ip=attrs.public_ip,
                                    # IPv6 on: the leases' v6 parts checked and handed on
                                    ipv6_network=(config.ipv6_network if config.enable_ipv6
                                                  else None),
                                    ipv6_subnet_len=(config.ipv6_subnet_len
                                                     if config.enable_ipv6 else None),
                                    own_ipv6_subnet=lambda: self.keeper.lease.ipv6_subnet,
                                    own_public_ipv6=attrs.public_ipv6)
        self.keeper.start()
        self.watcher.start()
        self.etcd_probe.start()
        self.log.info("Running with lease {subnet} in network {network} ({backend} backend, "
                      "MTU {mtu})", subnet=lease.subnet, network=config.network,
                      backend=backend.name, mtu=backend.mtu)

    def _sleep(self, seconds):
        """Deferred None after C{seconds}; fails with CancelledError once stopping (a
        cancelled request may fail with another error, so the retry loops ask here)."""
        if self._stopping:
            return defer.fail(defer.CancelledError())
        return task.deferLater(self._reactor, seconds, lambda: None)

    def _log_config_problem(self, message, delay):
        """Each distinct cause is logged once (as an error); repeats go to debug."""
        if message != self._last_config_error:
            self._last_config_error = message
            self._set_status("waiting for network config at %s: %s"
                             % (self._config_location(), message))
            self.log.error("Couldn't fetch network config: {error} (retrying in {delay:.1f}s, "
                           "backing off to {cap:.0f}s; logged once until the cause changes)",
                           error=message, delay=delay, cap=self.settings.config_retry_max)
        else:
            self.log.debug("Couldn't fetch network config: {error} (retrying in {delay:.1f}s)",
                           error=message, delay=delay)

    def _config_delay(self, attempt):
        """config_retry doubling up to config_retry_max, plus up to 20% jitter."""
        delay = self._config_backoff(attempt)
        return delay + delay * 0.2 * self._jitter.random()

    @defer.inlineCallbacks
    def _wait_for_config(self):
        """
        Deferred C{(config, backend)}: fetched until valid, with a capped, jittered
        backoff (C{config_retry} doubling to C{config_retry_max}); a new cause of failure
        starts again from C{config_retry}.
        """
        attempt = 0
        self.config_attempts = 0
        while True:
            self.config_attempts += 1
            try:
                config = yield self.manager.get_network_config()
                if config.enable_ipv6 and self._iface_v6 is not None:
                    self.ext_iface = self._dual_stack_iface(config)
                backend = self._backend_factory(config.backend_type, self._reactor,
                                                self.ext_iface)
            except (ConfigError, UnknownBackend) as e:
                problem = "invalid network config at %s/config: %s" % (self.manager.prefix, e)
            except (defer.CancelledError, FatalError):
                raise
            except Exception as e:
                problem = str(e) or e.__class__.__name__
            else:
                self.log.info("Network config: Network={network} SubnetLen={len} "
                              "SubnetMin={min} SubnetMax={max} Backend={backend}",
                              network=config.network, len=config.subnet_len,
                              min=config.subnet_min, max=config.subnet_max,
                              backend=config.backend_type)
                if config.enable_ipv6:
                    self.log.info("Network config: EnableIPv6 IPv6Network={network} "
                                  "IPv6SubnetLen={len} IPv6SubnetMin={min} "
                                  "IPv6SubnetMax={max}", network=config.ipv6_network,
                                  len=config.ipv6_subnet_len, min=config.ipv6_subnet_min,
                                  max=config.ipv6_subnet_max)
                return config, backend
            if problem != self._last_config_error:
                attempt = 0
            delay = self._config_delay(attempt)
            attempt += 1
            self._log_config_problem(problem, delay)
            yield self._sleep(delay)

    def _dual_stack_iface(self, config):
        """The config enables IPv6: the interface and both addresses chosen again, as
        flanneld v0.20 does. @raise FatalError: no interface fits (flanneld exits 1)."""
        try:
            iface = self._iface_v6()
        except Exception as e:
            raise FatalError("Failed to find interface to use (IPv6 enabled): %s" % (e,))
        self.log.info("IPv6 enabled: using interface {iface} with addresses {iface_ip} and "
                      "{iface_ip6}, public IPs {public_ip} and {public_ipv6}",
                      iface=iface.name, iface_ip=iface.addr, iface_ip6=iface.addr6,
                      public_ip=iface.public_ip, public_ipv6=iface.public_ipv6)
        if iface.public_ipv6 is None:
            self.log.warn("IPv6 enabled but no public IPv6 address: --iface {iface} is an IPv4 "
                          "address, which takes its IPv6 address only from --public-ipv6; "
                          "the lease will have no PublicIPv6", iface=iface.addr)
            return iface
        why = public_ipv6_problem(iface.public_ipv6, config.ipv6_network)
        if why is not None:      # e.g. only a link-local address on the interface
            self.log.warn("The public IPv6 address {public_ipv6} is {why}: other hosts will "
                          "not route the IPv6 part of our lease (give --public-ipv6 or a "
                          "global address on {iface})", public_ipv6=iface.public_ipv6,
                          why=why, iface=iface.name)
        return iface

    def _dual_stack_attrs(self, config, attrs):
        """Our lease attrs with the PublicIPv6 of the interface choice (--public-ipv6 or
        the interface's v6 address) when the config enables IPv6 and the backend left it
        unset; IPv4 only: as the backend made them."""
        if (config.enable_ipv6 and attrs.public_ipv6 is None
                and self.ext_iface.public_ipv6 is not None):
            attrs = replace(attrs, public_ipv6=self.ext_iface.public_ipv6)
        return attrs

    @defer.inlineCallbacks
    def _acquire(self, config, attrs, previous, previous6=None):
        attempt = 0
        while True:
            try:
                v6 = {} if previous6 is None else {"previous_ipv6_subnet": previous6}
                lease = yield self.manager.acquire_lease(config, attrs, previous, **v6)
            except defer.CancelledError:
                raise
            except Exception as e:
                delay = self._backoff(attempt)
                attempt += 1
                self.log.error("Error registering network: failed to acquire lease: {error} "
                               "(retrying in {delay:.1f}s)", error=e, delay=delay)
                self._set_status("acquiring lease in %s: %s (retrying)" % (config.network, e))
                yield self._sleep(delay)
            else:
                return lease

    def _write_subnet_env(self, lease):
        """
        Write subnet.env for C{lease}. The write (fsync of the file and the directory:
        unbounded on a slow disk) runs in the reactor's thread pool; writes run one at a
        time, in call order, so the last lease's file wins.

        @return: Deferred firing with None once written; a failure to write is logged
            (as flanneld, only an error), not raised.
        """
        v6 = {}       # FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET when dual-stack
        if self.config.enable_ipv6 and lease.ipv6_subnet is not None:
            v6 = dict(ipv6_network=self.config.ipv6_network, ipv6_subnet=lease.ipv6_subnet)
        text = render_subnet_env(self.config.network, lease.subnet, self.backend.mtu,
                                 self.settings.ip_masq, **v6)
        path = self.settings.subnet_file
        d = self._subnet_env_lock.run(self._in_thread, write_atomic, path, text)

        def written(_):
            self.subnet_env_written_at = self._reactor.seconds()
            self.log.info("Wrote {path}", path=path)

        def failed(f):
            f.trap(OSError)
            self.log.error("Failed to write subnet file {path}: {error}", path=path,
                           error=f.value)
        return d.addCallbacks(written, failed)

    def _in_thread(self, f, *args):
        """Deferred result of C{f(*args)} run in the reactor's thread pool (inline for a
        reactor without threads, e.g. a test's Clock)."""
        if IReactorThreads.providedBy(self._reactor):
            return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                             f, *args)
        return defer.maybeDeferred(f, *args)

    def _new_lease(self, lease, old):
        if lease.subnet == old.subnet and lease.ipv6_subnet == old.ipv6_subnet:
            return
        if self.rules is not None:
            if self.config.enable_ipv6 and lease.ipv6_subnet is not None:
                self.rules.update(lease.subnet, lease.ipv6_subnet)
            else:
                self.rules.update(lease.subnet)
        if IReconfiguringBackend.providedBy(self.backend):
            d = defer.maybeDeferred(self.backend.reconfigure, self.config, lease)
            d.addErrback(lambda f: self.log.failure("Reconfiguring the backend for {subnet} "
                                                    "failed", f, subnet=lease.subnet))
        self._write_subnet_env(lease).addErrback(
            lambda f: self.log.failure("Writing the subnet file failed", f))
        self._set_status("running: subnet %s via %s" % (lease.subnet, self.backend.name))
        if self.watcher is not None:
            # after reconfigure() has set the backend's own subnet: the old subnet's new
            # holder becomes a peer now, not at its renewal a day later
            self.watcher.own_subnet_changed(old.subnet)

    # -- status ---------------------------------------------------------------

    def status(self):
        """The daemon now, as one frozen L{DaemonStatus} (what /healthz and /metrics read)."""
        keeper, watcher, backend, client = self.keeper, self.watcher, self.backend, self.etcd_client
        skipped = dict(self.manager.skipped_counts())
        if watcher is not None:
            for reason, n in watcher.skipped_counts().items():
                skipped[reason] = skipped.get(reason, 0) + n
        return DaemonStatus(
            phase=self.phase, ready=self.ready,
            lease=keeper.lease.subnet if keeper is not None else None,
            network=self.config.network if self.config is not None else None,
            public_ip=self.ext_iface.public_ip,
            backend=backend.name if backend is not None else None,
            keeper=keeper.status() if keeper is not None else None,
            lease_lost=keeper.lease_lost if keeper is not None else None,
            watcher=watcher.status() if watcher is not None else None,
            etcd_answered_ago=self.etcd_probe.answered_ago(),
            watch_silent_for=client.watch_silence() if client is not None else None,
            etcd_stale_after=self.settings.etcd_stale_after,
            etcd_errors=client.error_counts if client is not None else {},
            skipped=skipped,
            backend_counters=(backend.counters if ICountingBackend.providedBy(backend)
                              else None),
            routes=len(backend.routes) if IRoutesBackend.providedBy(backend) else None)
