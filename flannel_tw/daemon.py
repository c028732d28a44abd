# -*- test-case-name: tests.test_daemon -*-
"""
The daemon: wires the subnet manager, the backend, the lease keeper and the lease
watcher in the order flanneld does (config -> backend -> lease -> data plane ->
subnet.env -> READY=1 -> watch + renew).

Failures while waiting for etcd or for a valid config are retried forever, as
flanneld does; so is lease acquisition (flanneld exits; a restart loop under
systemd does the same with more noise). Failures of the data plane itself (no TUN,
port taken, bad backend options) are fatal: a clear message and exit status 1,
and no lease is taken when they happen before acquisition.
"""
import os
import random
import sys
from dataclasses import dataclass
from typing import Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

import flannel_tw
from flannel_tw.backend.registry import UnknownBackend, make_backend
from flannel_tw.model.config import ConfigError
from flannel_tw.lease.backoff import make_backoff
from flannel_tw.lease.keeper import LeaseKeeper
from flannel_tw.lease.watch import LeaseWatcher
from flannel_tw.host.subnetfile import read_previous_subnet, render_subnet_env, write_atomic
from flannel_tw.observe.logs import redact_url
from flannel_tw.host.sdnotify import sd_notify, sd_status

WAITING_CONFIG, PREPARING, ACQUIRING, STARTING, RUNNING, STOPPED, FAILED = (
    "waiting-config", "preparing", "acquiring", "starting", "running", "stopped", "failed")


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
                 keeper_clock=None, status=None):
        service.MultiService.__init__(self)
        self._reactor = reactor
        # the lease keeper's timers: a MonotonicClock from build_daemon (wall-clock steps)
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
        self.etcd_client = None    # for the start-up line and STATUS= (set by build_daemon)
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
        self._probe_error = None
        self._stopping = False
        # rules_factory(reactor, network, subnet, ip_masq, forward) -> object with start(),
        # update(subnet), stop(): flanneld's iptables rules (FORWARD accept unless
        # --iptables-forward-rules=false, masquerade with --ip-masq); not called at all
        # when neither is wanted, so then iptables is never touched.
        self._rules_factory = rules_factory
        self.rules = None
        self.etcd_ok_at = None
        self._probe = None

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
        if self._probe is not None and self._probe.running:
            self._probe.stop()
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
        return [redact_url(e) for e in getattr(self.etcd_client, "endpoints", None) or ()]

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

        self.phase = ACQUIRING
        previous = read_previous_subnet(self.settings.subnet_file)
        lease = yield self._acquire(config, attrs, previous)

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
            self.rules = self._rules_factory(self._reactor, config.network, lease.subnet,
                                             self.settings.ip_masq,
                                             forward=self.settings.forward_rules)
            yield self.rules.start()
        yield self._write_subnet_env(lease)     # in a thread; READY=1 only once written
        self.phase = RUNNING
        self.ready = True
        self._set_status("running: subnet %s via %s" % (lease.subnet, backend.name))
        self._notify("READY=1")
        listing = self.manager
        if getattr(backend, "reconcile", None) is not None:
            # the backend removes kernel entries of leases gone while we were down
            listing = _FirstList(self.manager, backend.reconcile)
        # only leases that may be routed reach the backend (flannel_tw.model.leasecheck)
        self.watcher = LeaseWatcher(self._reactor, listing, backend.handle_events,
                                    own_subnet=lambda: self.keeper.lease.subnet,
                                    own_sink=self.keeper.own_event,
                                    network=config.network, subnet_len=config.subnet_len,
                                    own_public_ip=attrs.public_ip)
        self.keeper.start()
        self.watcher.start()
        self.etcd_ok_at = self._reactor.seconds()
        self._probe = task.LoopingCall(self._probe_etcd)
        self._probe.clock = self._reactor
        self._probe.start(self.settings.etcd_probe_interval, now=False)
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
                backend = self._backend_factory(config.backend_type, self._reactor,
                                                self.ext_iface)
            except (ConfigError, UnknownBackend) as e:
                problem = "invalid network config at %s/config: %s" % (self.manager.prefix, e)
            except defer.CancelledError:
                raise
            except Exception as e:
                problem = str(e) or e.__class__.__name__
            else:
                self.log.info("Network config: Network={network} SubnetLen={len} "
                              "SubnetMin={min} SubnetMax={max} Backend={backend}",
                              network=config.network, len=config.subnet_len,
                              min=config.subnet_min, max=config.subnet_max,
                              backend=config.backend_type)
                return config, backend
            if problem != self._last_config_error:
                attempt = 0
            delay = self._config_delay(attempt)
            attempt += 1
            self._log_config_problem(problem, delay)
            yield self._sleep(delay)

    @defer.inlineCallbacks
    def _acquire(self, config, attrs, previous):
        attempt = 0
        while True:
            try:
                lease = yield self.manager.acquire_lease(config, attrs, previous)
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
        text = render_subnet_env(self.config.network, lease.subnet, self.backend.mtu,
                                 self.settings.ip_masq)
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

    def _probe_etcd(self):
        """
        A cheap quorum read so that /healthz knows etcd answers even when the watch is
        idle. An etcd error answer (e.g. the config key is gone after a wipe) still
        proves etcd answers; a transport failure does not, nor does a member that
        cannot serve (HTTP 5xx, etcd's 300/301: no leader; the client passes such a
        member over, so it only reaches us when no member could answer). Each distinct
        failure is logged once. The Deferred fires with None.
        """
        from flannel_tw.model.config import ConfigError
        from flannel_tw.etcd.errors import SERVER_CODES, EtcdError

        d = defer.maybeDeferred(self.manager.get_network_config)

        def ok(_):
            self.etcd_ok_at = self._reactor.seconds()
            if self._probe_error is not None:
                self.log.info("etcd answers again")
                self._probe_error = None

        def failed(f):
            if f.check(ConfigError) or (f.check(EtcdError)
                                        and f.value.error_code not in SERVER_CODES):
                self.etcd_ok_at = self._reactor.seconds()
            message = f.getErrorMessage()
            if message != self._probe_error:
                self._probe_error = message
                self.log.warn("etcd health probe failed: {error}", error=message)
        return d.addCallbacks(ok, failed)

    def _new_lease(self, lease, old):
        if lease.subnet == old.subnet:
            return
        if self.rules is not None:
            self.rules.update(lease.subnet)
        reconfigure = getattr(self.backend, "reconfigure", None)
        if reconfigure is not None:
            d = defer.maybeDeferred(reconfigure, self.config, lease)
            d.addErrback(lambda f: self.log.failure("Reconfiguring the backend for {subnet} "
                                                    "failed", f, subnet=lease.subnet))
        self._write_subnet_env(lease).addErrback(
            lambda f: self.log.failure("Writing the subnet file failed", f))
        self._set_status("running: subnet %s via %s" % (lease.subnet, self.backend.name))
        if self.watcher is not None:
            # after reconfigure() has set the backend's own subnet: the old subnet's new
            # holder becomes a peer now, not at its renewal a day later
            self.watcher.own_subnet_changed(old.subnet)

    # -- health ---------------------------------------------------------------

    def health(self):
        """
        A dict for /healthz: C{healthy} is True only while the daemon runs, holds its
        lease (held, renewing, or retrying a renewal that is not late, see
        L{LeaseKeeper.renewal_late}; not after it was found gone or taken, until it is
        re-acquired) and etcd
        answered within C{etcd_stale_after} seconds (the periodic probe, or any other
        request), and the lease watch in flight (if any) showed life within that window
        too (C{watch_silent_for}: the etcd client checks an idle watch's member every
        C{watch_timeout}, 60 s, and leaves a silent one within 60 s + request_timeout, so
        a longer silence means the watch is stuck). The watcher's own failures are
        reported, not judged: an idle long poll that has not answered yet is normal.
        """
        from flannel_tw.lease.keeper import HELD, RENEWING, RETRYING
        lease = self.lease
        now = self._reactor.seconds()
        keeper_ok = (self.keeper is not None and self.keeper.state in (HELD, RENEWING, RETRYING)
                     and not self.keeper.lease_lost and not self.keeper.renewal_late())
        etcd_ok = (self.etcd_ok_at is not None
                   and now - self.etcd_ok_at <= self.settings.etcd_stale_after)
        silence = self.etcd_client.watch_silence() if self.etcd_client is not None else None
        watch_ok = silence is None or silence <= self.settings.etcd_stale_after
        return {
            "healthy": bool(self.phase == RUNNING and keeper_ok and etcd_ok and watch_ok),
            "etcd_ok": bool(etcd_ok),
            "watch_ok": bool(watch_ok),
            "watch_silent_for": silence,
            "etcd_answered_ago": None if self.etcd_ok_at is None else now - self.etcd_ok_at,
            "keeper": self.keeper.state if self.keeper else None,
            "lease_lost": self.keeper.lease_lost if self.keeper else None,
            "watcher": self.watcher.state if self.watcher else None,
            "ready": self.ready,
            "phase": self.phase,
            "lease": str(lease.subnet) if lease else None,
            "public_ip": str(self.ext_iface.public_ip),
            "backend": self.backend.name if self.backend else None,
            "renewals": self.keeper.renewals if self.keeper else 0,
            "last_renewal_at": self.keeper.last_renewal_at if self.keeper else None,
            "renewal_failing_for": self.keeper.renewal_failing_for if self.keeper else None,
            "lease_expires_in": self.keeper.lease_expires_in if self.keeper else None,
            "watch_failures": self.watcher.failures if self.watcher else 0,
            "last_watch_event_at": self.watcher.last_event_at if self.watcher else None,
            "peers": len(self.watcher.known) if self.watcher else 0,
            # the udp backend's route table size (None for backends without one)
            "routes": len(self.backend.routes) if hasattr(self.backend, "routes") else None,
        }


class _FirstList:
    """
    The subnet manager as the lease watcher sees it: the leases of the first successful
    list also go to C{on_first} (a backend's C{reconcile}), before the watcher turns them
    into events.
    """

    log = Logger()

    def __init__(self, manager, on_first):
        self._manager = manager
        self._on_first = on_first

    def __getattr__(self, name):
        return getattr(self._manager, name)

    def list_leases(self):
        d = defer.maybeDeferred(self._manager.list_leases)
        return d.addCallback(self._listed)

    def _listed(self, result):
        on_first, self._on_first = self._on_first, None
        if on_first is not None:
            try:
                on_first(result[0])
            except Exception:
                self.log.failure("Reconciling the data plane with the lease list failed")
        return result


def build_daemon(options, reactor):
    """
    From parsed L{flannel_tw.tap.Options}: the interface lookup (exits with a clear
    message when nothing matches), the etcd client, and the L{FlannelDaemon}.
    """
    from flannel_tw.etcd.client import EtcdV2Client
    from flannel_tw.kernel.iface import IfaceError, lookup_ext_iface
    from flannel_tw.lease.manager import EtcdSubnetManager

    try:
        ext_iface = lookup_ext_iface(options["iface"], options["iface-regex"],
                                     options["public-ip"] or None)
    except (IfaceError, ValueError) as e:
        raise SystemExit("Failed to find interface to use: %s" % (e,))
    from flannel_tw.etcd.tls import TLSFileError, tls_files, tls_policy
    cafile, certfile, keyfile = tls_files(options["etcd-cafile"], options["etcd-certfile"],
                                          options["etcd-keyfile"], os.environ)
    tls = None
    if cafile or certfile:
        try:
            tls = tls_policy(cafile, certfile, keyfile)
        except TLSFileError as e:
            raise SystemExit("Failed to create SubnetManager: %s" % (e,))
    client = EtcdV2Client(reactor, options["etcd-endpoints"],
                          username=options["etcd-username"] or None,
                          password=options["etcd-password"] or None, tls=tls)
    manager = EtcdSubnetManager(client, prefix=options["etcd-prefix"])
    settings = DaemonSettings(subnet_file=options["subnet-file"], ip_masq=options["ip-masq"],
                              forward_rules=options["iptables-forward-rules"],
                              renew_margin=options["subnet-lease-renew-margin"] * 60.0,
                              healthz_ip=options["healthz-ip"],
                              healthz_port=options["healthz-port"])
    from flannel_tw.kernel.monoclock import MonotonicClock
    daemon = FlannelDaemon(reactor, manager, ext_iface, settings, rules_factory=_rules_factory(),
                           keeper_clock=MonotonicClock(reactor))
    for warning in getattr(options, "warnings", ()):   # insecure or unused etcd flags
        daemon.log.warn("{problem}", problem=warning)
    daemon.etcd_client = client
    from flannel_tw.observe.logs import install as install_logging
    install_logging(daemon, options, reactor)   # --log-format text|json, rate-limited errors
    if options["metrics-port"]:
        from flannel_tw.observe.metrics import metrics_service
        metrics_service(daemon, reactor, options["metrics-ip"], options["metrics-port"]
                        ).setServiceParent(daemon)
    if settings.healthz_port:
        from flannel_tw.observe.health import health_service
        health_service(daemon, reactor, settings.healthz_ip, settings.healthz_port
                       ).setServiceParent(daemon)
    return daemon


def _rules_factory():
    """flanneld's iptables rules, when this build has them (flannel_tw.host.iptables)."""
    try:
        from flannel_tw.host.iptables import TrafficRules
    except ImportError:
        return None
    return TrafficRules
