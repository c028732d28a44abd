# -*- test-case-name: tests.unit.test_metrics, tests.unit.test_etcd_metrics -*-
"""
A Prometheus endpoint (``--metrics-port``, ``--metrics-ip``; flannel-tw only).

L{DaemonCollector} reads the daemon's status snapshot
(L{flannel_tw.observe.status.DaemonStatus}) at scrape time, nothing else of the daemon
(nothing is counted twice and nothing is copied on the data path):

=====================================================  =========================================
``flannel_up``                                          1 (the process answers)
``flannel_ready``                                       1 once subnet.env is written
``flannel_lease_info{subnet,public_ip,backend}``        1 while a lease is held
``flannel_leases_known``                                other hosts' leases the watcher knows
``flannel_lease_renewals_total``                        successful renewals
``flannel_lease_renewal_failures_total``                failed renewal attempts
``flannel_watch_resyncs_total``                         re-lists after etcd's 401 (index cleared)
``flannel_watch_failures``                              consecutive watch failures now
``flannel_leases_skipped_total{reason}``               leases from etcd not routed, by reason
``flannel_leases_retained``                             peers kept routed after an etcd wipe
``flannel_etcd_errors_total{kind}``                     etcd request errors by kind
``flannel_udp_packets_total{direction}``                udp backend: datagrams in/out
``flannel_udp_bytes_total{direction}``                  udp backend: payload bytes in/out
``flannel_udp_tun_packets_total{direction}``            udp backend: packets read from/written to the TUN
``flannel_udp_tun_bytes_total{direction}``              the same in bytes
``flannel_udp_icmp_unreachable_total``                  ICMP net-unreachable replies written
``flannel_udp_dropped_packets_total{reason}``           packets dropped, by reason
``flannel_backend_counter_total{backend,name}``         any other backend counter
=====================================================  =========================================

The page is rendered on the reactor thread by a small twisted.web resource rather
than C{prometheus_client.twisted.MetricsResource}, which runs the WSGI app in the
reactor's thread pool: the collector would then read dicts the reactor thread is
changing.
"""
import collections

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.application import strports
from twisted.web import resource

from flannel_tw.etcd.errors import ERROR_KINDS
from flannel_tw.observe.logs import QuietSite

# udp backend counter name -> (metric, direction label)
_UDP_DIRECTIONAL = {
    "packets_in": ("flannel_udp_packets", "in"),
    "packets_out": ("flannel_udp_packets", "out"),
    "bytes_in": ("flannel_udp_bytes", "in"),
    "bytes_out": ("flannel_udp_bytes", "out"),
    "tun_packets_in": ("flannel_udp_tun_packets", "in"),
    "tun_packets_out": ("flannel_udp_tun_packets", "out"),
    "tun_bytes_in": ("flannel_udp_tun_bytes", "in"),
    "tun_bytes_out": ("flannel_udp_tun_bytes", "out"),
}
_UDP_HELP = {
    "flannel_udp_packets": "UDP datagrams carrying overlay packets, received (in) and sent (out)",
    "flannel_udp_bytes": "Bytes of overlay packets in UDP datagrams, received (in) and sent (out)",
    "flannel_udp_tun_packets": "Packets read from (in) and written to (out) the TUN device",
    "flannel_udp_tun_bytes": "Bytes read from (in) and written to (out) the TUN device",
}


def _drop_reasons():
    try:
        from flannel_tw.backend.udp.backend import DROP_REASONS
    except Exception:           # pragma: no cover - the udp module needs pytun
        return ()
    return DROP_REASONS


class DaemonCollector:
    """
    A prometheus_client collector over C{status}, a callable returning the daemon's
    L{flannel_tw.observe.status.DaemonStatus} (e.g. C{FlannelDaemon.status}), called
    once per scrape.
    """

    def __init__(self, status):
        self._status = status

    def describe(self):
        # No fixed description: label sets depend on the backend and on errors seen.
        return []

    def collect(self):
        st = self._status()
        yield GaugeMetricFamily("flannel_up", "1 while the flannel-tw process answers", value=1)
        yield GaugeMetricFamily("flannel_ready", "1 once subnet.env has been written",
                                value=1 if st.ready else 0)
        yield from self._lease(st)
        yield from self._subnet(st)
        yield from self._etcd(st)
        yield from self._backend(st)

    def _lease(self, st):
        info = GaugeMetricFamily("flannel_lease_info", "The lease held (1), by subnet",
                                 labels=["subnet", "public_ip", "backend"])
        if st.lease is not None:
            info.add_metric([str(st.lease), str(st.public_ip or ""), st.backend or ""], 1)
        yield info

    def _subnet(self, st):
        watcher, keeper = st.watcher, st.keeper
        yield GaugeMetricFamily("flannel_leases_known",
                                "Other hosts' leases known to the lease watcher",
                                value=watcher.peers if watcher is not None else 0)
        yield GaugeMetricFamily("flannel_watch_failures",
                                "Consecutive failures of the etcd lease watch",
                                value=watcher.failures if watcher is not None else 0)
        yield CounterMetricFamily("flannel_watch_resyncs",
                                  "Re-lists of the leases after etcd cleared the watch index",
                                  value=watcher.resyncs if watcher is not None else 0)
        # the fixed label set of flannel_tw.model.leasecheck.REASONS: the manager counts bad
        # keys and values, the watcher the leases it would not route
        from flannel_tw.model.leasecheck import REASONS
        skipped = CounterMetricFamily("flannel_leases_skipped",
                                      "Leases from etcd that are not routed (each warned "
                                      "about once), by reason", labels=["reason"])
        for reason in REASONS:
            skipped.add_metric([reason], st.skipped.get(reason, 0))
        yield skipped
        yield GaugeMetricFamily("flannel_leases_retained",
                                "Peers whose routes are kept after etcd was wiped, until "
                                "their leases would have expired",
                                value=watcher.retained if watcher is not None else 0)
        yield CounterMetricFamily("flannel_lease_renewals", "Successful lease renewals",
                                  value=keeper.renewals if keeper is not None else 0)
        yield CounterMetricFamily("flannel_lease_renewal_failures", "Failed lease renewals",
                                  value=keeper.renewal_failures if keeper is not None else 0)

    def _etcd(self, st):
        errors = CounterMetricFamily("flannel_etcd_errors", "etcd request errors, by kind",
                                     labels=["kind"])
        by_kind = collections.Counter()
        for kind, n in st.etcd_errors.items():
            # a fixed label set (flannel_tw.etcd.errors.ERROR_KINDS), whatever etcd sent
            by_kind[kind if kind in ERROR_KINDS else "other"] += n
        for kind, n in sorted(by_kind.items()):
            errors.add_metric([kind], n)
        yield errors

    def _backend(self, st):
        counters = st.backend_counters
        if counters is None:
            return
        name = st.backend or ""
        families = {}
        other = CounterMetricFamily("flannel_backend_counter",
                                    "Other counters of the backend, by name",
                                    labels=["backend", "name"])
        drops = CounterMetricFamily("flannel_udp_dropped_packets",
                                    "Packets the udp backend dropped, by reason",
                                    labels=["reason"])
        reasons = set(_drop_reasons()) if name == "udp" else set()
        for key, value in sorted(counters.items()):
            if name == "udp" and key in _UDP_DIRECTIONAL:
                metric, direction = _UDP_DIRECTIONAL[key]
                fam = families.get(metric)
                if fam is None:
                    fam = families[metric] = CounterMetricFamily(
                        metric, _UDP_HELP[metric], labels=["direction"])
                fam.add_metric([direction], value)
            elif key in reasons:
                drops.add_metric([key], value)
            elif name == "udp" and key == "icmp_unreachable":
                families["icmp"] = CounterMetricFamily(
                    "flannel_udp_icmp_unreachable",
                    "ICMP net-unreachable replies written into the TUN", value=value)
            else:
                other.add_metric([name, str(key)], value)
        yield from families.values()
        if reasons:
            yield drops
        if other.samples:
            yield other


def metrics_registry(status, process=True):
    """
    A new CollectorRegistry with L{DaemonCollector} over C{status} (a callable returning a
    L{flannel_tw.observe.status.DaemonStatus}) and the process/platform collectors.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(status))
    if process:
        from prometheus_client import PlatformCollector, ProcessCollector
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


class MetricsPage(resource.Resource):
    """The exposition format (or OpenMetrics when asked for) of C{registry}, rendered on GET."""

    isLeaf = True

    def __init__(self, registry):
        resource.Resource.__init__(self)
        self._registry = registry

    def render_GET(self, request):
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self._registry)


def metrics_root(status, registry=None):
    """C{/metrics} (and C{/} for convenience) serving the metrics of C{status}'s snapshots."""
    page = MetricsPage(registry if registry is not None else metrics_registry(status))
    root = resource.Resource()
    root.putChild(b"metrics", page)
    root.putChild(b"", page)
    return root


def metrics_service(status, reactor, ip, port):
    """A TCP server service (strports) for the metrics endpoint on C{ip}:C{port}."""
    site = QuietSite(metrics_root(status), name="metrics")   # requests at debug only
    return strports.service("tcp:%d:interface=%s" % (port, ip), site, reactor=reactor)
