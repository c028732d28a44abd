# -*- test-case-name: tests.unit.test_wiring, tests.integration.test_daemon -*-
"""
The object graph of ``twistd flannel``, built in one place from the parsed options
(L{flannel_tw.tap.Options}), as C{twisted.names.tap.makeService} does: the interface
lookup, the etcd client (TLS, basic auth), the subnet manager, the keeper's monotonic
clock, the iptables rules, the daemon, and the services beside it (/healthz, /metrics,
the log observer). L{flannel_tw.daemon.FlannelDaemon} only runs what is built here.
"""
import os

from flannel_tw.daemon import DaemonSettings, FlannelDaemon


def build_daemon(options, reactor):
    """
    The L{FlannelDaemon} for C{options}, with its health and metrics services as
    children (when their ports are set) and the log observer installed.

    @raise SystemExit: with a clear message when no interface matches or a TLS file is
        unusable.
    """
    ext_iface = _ext_iface(options)
    from flannel_tw.kernel.monoclock import MonotonicClock
    client, manager = _etcd_keyspace(options, reactor)
    settings = DaemonSettings(subnet_file=options["subnet-file"], ip_masq=options["ip-masq"],
                              forward_rules=options["iptables-forward-rules"],
                              renew_margin=options["subnet-lease-renew-margin"] * 60.0,
                              healthz_ip=options["healthz-ip"],
                              healthz_port=options["healthz-port"])
    daemon = FlannelDaemon(reactor, manager, ext_iface, settings, rules_factory=_rules_factory(),
                           keeper_clock=MonotonicClock(reactor), etcd_client=client,
                           iface_v6=lambda: _ext_iface(options, ipv6=True),
                           backend_factory=_backend_factory(settings.subnet_file))
    for warning in options.warnings:    # insecure or unused etcd flags
        daemon.log.warn("{problem}", problem=warning)
    if options["etcd-api"] != "auto":
        daemon.log.info("Using etcd's {api} keyspace (--etcd-api={api})", api=options["etcd-api"])
    from flannel_tw.observe.logs import install as install_logging
    install_logging(daemon, options, reactor)   # --log-format text|json, rate-limited errors
    if options["metrics-port"]:
        from flannel_tw.observe.metrics import metrics_service
        metrics_service(daemon.status, reactor, options["metrics-ip"], options["metrics-port"]
                        ).setServiceParent(daemon)
    if settings.healthz_port:
        from flannel_tw.observe.health import health_service
        health_service(daemon.status, reactor, settings.healthz_ip, settings.healthz_port
                       ).setServiceParent(daemon)
    return daemon


def _backend_factory(subnet_file):
    """make_backend, telling the backends that keep state beside the subnet file (the
    wireguard key, C{wgkey}) where it is."""
    from flannel_tw.backend.registry import make_backend

    def factory(name, reactor, ext_iface):
        return make_backend(name, reactor, ext_iface, subnet_file=subnet_file)
    return factory


def _ext_iface(options, ipv6=False):
    """The interface to use (--iface, --iface-regex, --public-ip); with C{ipv6} (the
    daemon asks once the config enables IPv6) flanneld v0.20's dual-stack choice, with
    --public-ipv6 (raises IfaceError/ValueError then: the daemon exits 1)."""
    from flannel_tw.kernel.iface import IfaceError, lookup_ext_iface
    if ipv6:
        return lookup_ext_iface(options["iface"], options["iface-regex"],
                                options["public-ip"] or None,
                                public_ipv6=options["public-ipv6"] or None, ipv6=True)
    try:
        return lookup_ext_iface(options["iface"], options["iface-regex"],
                                options["public-ip"] or None)
    except (IfaceError, ValueError) as e:
        raise SystemExit("Failed to find interface to use: %s" % (e,))


def _etcd_keyspace(options, reactor):
    """
    C{(client, manager)} for --etcd-api: v2 or v3, that keyspace's client and a
    L{SubnetManager} on its registry; auto, a L{KeyspaceManager} that builds each
    keyspace's client and registry when first asked and chooses while the daemon waits
    for its config, with a L{KeyspaceClient} in front of the clients.
    """
    from flannel_tw.lease.manager import SubnetManager
    prefix = options["etcd-prefix"]
    api = options["etcd-api"]
    tls = _tls(options)     # an unusable TLS file exits now, not at the first request
    if api != "auto":
        client = _etcd_client(options, reactor, api, tls)
        return client, SubnetManager(_registry(client, api, prefix))
    from flannel_tw.lease.keyspace import KeyspaceClient, KeyspaceManager
    from flannel_tw.observe.logs import redact_url

    def build(which):
        client = _etcd_client(options, reactor, which, tls)
        return client, _registry(client, which, prefix)

    endpoint = redact_url(options["etcd-endpoints"][0])

    def where(which, key):
        return ("%s/v2/keys%s" % (endpoint, key) if which == "v2"
                else "key %s at %s" % (key, endpoint))
    manager = KeyspaceManager(build, prefix, where)
    return KeyspaceClient(manager), manager


def _registry(client, api, prefix):
    if api == "v3":
        from flannel_tw.etcd.registry_v3 import EtcdV3Registry
        # the daemon needs no exact TTLs from a list (EtcdV3Registry's docstring)
        return EtcdV3Registry(client, prefix=prefix, exact_list_ttls=False)
    from flannel_tw.etcd.registry import EtcdV2Registry
    return EtcdV2Registry(client, prefix=prefix)


def _tls(options):
    """The TLS policy of the TLS files (flags or ETCD_* in the env), or None."""
    from flannel_tw.etcd.tls import TLSFileError, tls_files, tls_policy
    cafile, certfile, keyfile = tls_files(options["etcd-cafile"], options["etcd-certfile"],
                                          options["etcd-keyfile"], os.environ)
    tls = None
    if cafile or certfile:
        try:
            tls = tls_policy(cafile, certfile, keyfile)
        except TLSFileError as e:
            raise SystemExit("Failed to create SubnetManager: %s" % (e,))
    return tls


def _etcd_client(options, reactor, api, tls):
    """The etcd client of C{api} (v2, or v3 on the JSON gateway): endpoints, auth
    (v2 basic auth, v3 token auth), the TLS policy C{tls}."""
    from flannel_tw.etcd.client import EtcdV2Client
    from flannel_tw.etcd.v3client import EtcdV3Client
    client = EtcdV3Client if api == "v3" else EtcdV2Client
    return client(reactor, options["etcd-endpoints"],
                  username=options["etcd-username"] or None,
                  password=options["etcd-password"] or None, tls=tls)


def _rules_factory():
    """flanneld's iptables rules, when this build has them (flannel_tw.host.iptables)."""
    try:
        from flannel_tw.host.iptables import TrafficRules
    except ImportError:
        return None
    return TrafficRules
