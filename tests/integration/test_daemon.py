"""
The daemon's start-up sequence and lease lifecycle against a real etcd, with a
recording backend (no data plane) so that these tests need no privileges.
"""
import os
import stat
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw import wiring
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.kernel.iface import ExtIface
from flannel_tw.etcd.registry import EtcdV2Registry
from flannel_tw.lease.manager import SubnetManager
from flannel_tw.host.subnetfile import parse_env
from flannel_tw.testing.etcd import shared_etcd, unique_prefix
from flannel_tw.testing.fakes import RecordingBackend

from flannel_tw.testing.harness import capture_logs
from flannel_tw.testing.polling import wait_until
from flannel_tw.observe.status import health_body

IFACE = ExtIface(name="eth0", index=2, addr=IPv4Address("192.0.2.1"),
                 public_ip=IPv4Address("192.0.2.1"), mtu=1500)


class DaemonTests(unittest.TestCase):
    def setUp(self):
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.subnet_file = os.path.join(self.dir, "run", "subnet.env")
        self.notified = []
        self.exits = []
        self.backends = []

    def make_daemon(self, iface=IFACE, prepare_error=None, status=None, **settings):
        client = EtcdV2Client(reactor, [self.server.url])
        self.addCleanup(client.close)
        manager = SubnetManager(EtcdV2Registry(client, prefix=self.prefix))

        def factory(name, reactor_, ext_iface):
            if name not in ("udp", "recording"):
                from flannel_tw.backend.registry import UnknownBackend
                raise UnknownBackend("unknown backend type: %r" % (name,))
            backend = RecordingBackend(ext_iface.public_ip, mtu=ext_iface.mtu - 28,
                                       prepare_error=prepare_error)
            self.backends.append(backend)
            return backend
        settings.setdefault("config_retry", 0.05)
        d = daemon_mod.FlannelDaemon(
            reactor, manager, iface,
            daemon_mod.DaemonSettings(subnet_file=self.subnet_file, **settings),
            backend_factory=factory, notify=self.notified.append, exit=self.exits.append,
            status=status, etcd_client=client)
        return d

    def run_daemon(self, daemon):
        daemon.startService()
        self.addCleanup(daemon.stopService)
        return daemon

    def key(self, subnet):
        return "%s/subnets/%s-%d" % (self.prefix, subnet.network_address, subnet.prefixlen)

    @defer.inlineCallbacks
    def test_waits_for_config_then_runs(self):
        d = self.run_daemon(self.make_daemon())
        yield wait_until(lambda: d._last_config_error is not None)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        self.assertIn("100: Key not found", d._last_config_error)
        self.assertFalse(os.path.exists(self.subnet_file))
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING)
        env = parse_env(open(self.subnet_file).read())
        lease = d.lease
        self.assertEqual(env, {
            "FLANNEL_NETWORK": "10.5.0.0/16",
            "FLANNEL_SUBNET": "%s/24" % (lease.subnet.network_address + 1),
            "FLANNEL_MTU": "1472",
            "FLANNEL_IPMASQ": "false",
        })
        self.assertEqual(stat.S_IMODE(os.stat(self.subnet_file).st_mode), 0o644)
        self.assertEqual(self.notified, ["READY=1"])
        node = self.server.v2_get(self.key(lease.subnet))["node"]
        self.assertEqual(node["value"], '{"PublicIP":"192.0.2.1"}')
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_subnet_env_written_in_a_thread_before_ready(self):
        """The write (with its fsyncs) runs off the reactor thread, and READY=1 (and
        /readyz) wait for it to finish."""
        import threading
        import time
        events = []
        real_write = daemon_mod.write_atomic

        def slow_write(path, text, *args, **kwargs):
            events.append(("write", threading.current_thread() is threading.main_thread()))
            time.sleep(0.3)
            real_write(path, text, *args, **kwargs)
            events.append("written")
        self.patch(daemon_mod, "write_atomic", slow_write)
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        d = self.make_daemon()
        d._notify = lambda message: events.append((message, d.subnet_env_written_at is not None))
        self.run_daemon(d)
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING)
        self.assertEqual(events, [("write", False), "written", ("READY=1", True)])
        self.assertIn("FLANNEL_SUBNET=%s/24" % (d.lease.subnet.network_address + 1),
                      open(self.subnet_file).read())

    @defer.inlineCallbacks
    def test_status_tells_systemd_what_it_waits_for(self):
        """STATUS= while waiting (with each new cause), acquiring, then running + READY=1."""
        sent = []
        d = self.make_daemon(status=lambda text: sent.append("STATUS=" + text))
        self.notified = sent                      # READY=1 into the same list, in order
        d._notify = sent.append
        self.run_daemon(d)
        yield wait_until(lambda: d._last_config_error is not None)
        where = "%s%s/config" % (self.server.url, self.prefix)
        self.assertEqual(sent[0], "STATUS=waiting for network config at " + where)
        self.assertTrue(sent[1].startswith("STATUS=waiting for network config at %s: "
                                           "100: Key not found (" % where), sent)
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING)
        self.assertEqual(sent[2:], [
            "STATUS=acquiring lease in 10.5.0.0/16 (recording backend)",
            "STATUS=running: subnet %s via recording" % d.lease.subnet,
            "READY=1"])

    def test_status_text_is_one_line_and_endpoints_have_no_userinfo(self):
        class Manager:
            prefix = "/coreos.com/network"

            def get_network_config(self):
                return defer.Deferred()             # etcd never answers
        sent = []
        d = daemon_mod.FlannelDaemon(reactor, Manager(), IFACE, daemon_mod.DaemonSettings(),
                                     notify=sent.append, status=sent.append, exit=self.exits.append)

        class Client:
            endpoints = ["https://root:s3cret@etcd1:2379", "http://etcd2:2379"]
        d.etcd_client = Client()
        events = capture_logs(self)
        self.run_daemon(d)
        self.assertEqual(sent, ["waiting for network config at https://etcd1:2379"
                                "/coreos.com/network/config (endpoints https://etcd1:2379, "
                                "http://etcd2:2379)"])
        d._set_status("a\nb\r\nc")
        self.assertEqual(sent[-1], "a b c")
        text = " ".join(formatEvent(e) + repr(e) for e in events)
        self.assertNotIn("s3cret", text)
        self.assertNotIn("root", text)

    @defer.inlineCallbacks
    def test_iptables_rules_follow_the_flags(self):
        """FORWARD accepts by default; --iptables-forward-rules=false without --ip-masq
        means no rules object at all (iptables never run)."""
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        made = []

        class Rules:
            def __init__(self, reactor_, network, subnet, ip_masq, forward):
                made.append((str(network), ip_masq, forward))

            def start(self):
                return defer.succeed(None)

            def stop(self):
                return defer.succeed(None)

            update = stop
        for settings in ({}, {"forward_rules": False}, {"forward_rules": False, "ip_masq": True}):
            d = self.make_daemon(**settings)
            d._rules_factory = Rules
            self.run_daemon(d)
            yield wait_until(lambda: d.phase == daemon_mod.RUNNING)
            yield d.stopService()
        self.assertEqual(made, [("10.5.0.0/16", False, True), ("10.5.0.0/16", True, False)])

    @defer.inlineCallbacks
    def test_invalid_config_is_reported_then_fixed(self):
        self.server.put_config('{"Network": "10.5.0.0/30"}', prefix=self.prefix)
        d = self.run_daemon(self.make_daemon())
        yield wait_until(lambda: d._last_config_error is not None)
        self.assertIn("Network is too small", d._last_config_error)
        self.assertIn(self.prefix + "/config", d._last_config_error)
        self.server.put_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "nope"}}',
                               prefix=self.prefix)
        yield wait_until(lambda: "unknown backend type" in (d._last_config_error or ""))
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        self.server.put_config('{"Network": "10.5.0.0/16", "SubnetLen": 26}', prefix=self.prefix)
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING)
        self.assertEqual(d.lease.subnet.prefixlen, 26)
        self.assertIn("10.5.", open(self.subnet_file).read())

    @defer.inlineCallbacks
    def test_restart_reuses_subnet_and_lease_survives_stop(self):
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        first = self.make_daemon()
        first.startService()
        yield wait_until(lambda: first.phase == daemon_mod.RUNNING)
        subnet = first.lease.subnet
        yield first.stopService()
        # flanneld never deletes its lease on exit
        self.assertEqual(self.server.v2_get(self.key(subnet))["node"]["value"],
                         '{"PublicIP":"192.0.2.1"}')
        self.assertEqual(self.backends[0].events[-1], ("stop",))
        second = self.run_daemon(self.make_daemon())
        yield wait_until(lambda: second.phase == daemon_mod.RUNNING)
        self.assertEqual(second.lease.subnet, subnet)

    @defer.inlineCallbacks
    def test_previous_subnet_from_subnet_env_is_reused_with_new_public_ip(self):
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        os.makedirs(os.path.dirname(self.subnet_file))
        with open(self.subnet_file, "w") as f:
            f.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.123.1/24\n"
                    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
        d = self.run_daemon(self.make_daemon())
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING)
        self.assertEqual(d.lease.subnet, IPv4Network("10.5.123.0/24"))

    @defer.inlineCallbacks
    def test_backend_failure_before_lease_exits_1_and_takes_no_lease(self):
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        d = self.run_daemon(self.make_daemon(prepare_error=OSError("no /dev/net/tun")))
        yield wait_until(lambda: self.exits)
        self.assertEqual(self.exits, [1])
        self.assertEqual(d.phase, daemon_mod.FAILED)
        self.assertFalse(os.path.exists(self.subnet_file))
        listed = self.server.v2_get(self.prefix + "/config")
        self.assertIn("node", listed)
        self.assertRaises(Exception, self.server.v2_get, self.prefix + "/subnets")

    @defer.inlineCallbacks
    def test_deleted_lease_is_recreated_and_peers_reach_backend(self):
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        d = self.run_daemon(self.make_daemon())
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING and d.watcher.state == "watching")
        subnet = d.lease.subnet
        backend = self.backends[0]
        self.server.v2_put(self.prefix + "/subnets/10.5.250.0-24", '{"PublicIP":"192.0.2.250"}',
                           ttl=600)
        yield wait_until(lambda: any(e[0] == "events" for e in backend.events))
        batch = [e for e in backend.events if e[0] == "events"][0][1]
        self.assertEqual([(ev.kind, str(ev.lease.subnet)) for ev in batch],
                         [("added", "10.5.250.0/24")])
        self.server.v2_delete(self.key(subnet))
        yield wait_until(lambda: self._exists(self.key(subnet)))
        node = self.server.v2_get(self.key(subnet))["node"]
        self.assertEqual(node["value"], '{"PublicIP":"192.0.2.1"}')
        self.assertGreater(node["ttl"], 86000)
        self.assertEqual(d.lease.subnet, subnet)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_subnet_taken_while_away_gives_new_subnet_and_new_subnet_env(self):
        self.server.put_config('{"Network": "10.5.0.0/16"}', prefix=self.prefix)
        d = self.run_daemon(self.make_daemon())
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING and d.watcher.state == "watching")
        subnet = d.lease.subnet
        # another host overwrites our key (e.g. a flanneld v0.10 taking over its previous subnet)
        self.server.v2_put(self.key(subnet), '{"PublicIP":"192.0.2.77"}', ttl=600)
        yield wait_until(lambda: d.lease.subnet != subnet)
        self.assertEqual(self.server.v2_get(self.key(subnet))["node"]["value"],
                         '{"PublicIP":"192.0.2.77"}')
        env = parse_env(open(self.subnet_file).read())
        self.assertEqual(env["FLANNEL_SUBNET"], "%s/24" % (d.lease.subnet.network_address + 1))

    def _exists(self, key):
        try:
            self.server.v2_get(key)
            return True
        except Exception:
            return False

    def test_health_reflects_state(self):
        d = self.make_daemon()
        health = health_body(d.status())
        self.assertFalse(health["healthy"])
        self.assertIsNone(health["lease"])


class RealRunLogTests(unittest.TestCase):
    """
    L{wiring.build_daemon} as twistd builds it (alloc backend: a lease and no data
    plane; no iptables), on a real etcd, with /healthz and /metrics on loopback; every
    log event captured and rendered as the daemon's own observer would.
    """

    timeout = 60

    def setUp(self):
        from flannel_tw.testing.harness import capture_logs
        self.server = shared_etcd()
        self.prefix = unique_prefix(self)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.subnet_file = os.path.join(self.dir, "subnet.env")
        self.events = capture_logs(self)

    def render(self, verbosity=0):
        """The captured events as the daemon's text observer at -v=C{verbosity} writes them."""
        import io
        from twisted.internet import task
        from flannel_tw.observe import logs
        out = io.StringIO()
        observer = logs.make_observer("text", out, task.Clock(), verbosity)
        for event in list(self.events):
            observer(dict(event))
        return out.getvalue()

    @defer.inlineCallbacks
    def run_real_daemon(self, *extra):
        from flannel_tw.tap import Options
        from flannel_tw.testing.harness import free_port
        self.server.put_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}',
                               prefix=self.prefix)
        self.healthz, self.metrics = free_port(), free_port()
        options = Options(environ={})
        options.parseOptions([
            "--etcd-endpoints=%s" % self.server.url, "--etcd-prefix=%s" % self.prefix,
            "--iface=127.0.0.1", "--subnet-file=%s" % self.subnet_file,
            "--iptables-forward-rules=false",
            "--healthz-ip=127.0.0.1", "--healthz-port=%d" % self.healthz,
            "--metrics-ip=127.0.0.1", "--metrics-port=%d" % self.metrics] + list(extra))
        d = wiring.build_daemon(options, reactor)
        d.startService()
        self.addCleanup(d.etcd_client.close)
        self.addCleanup(lambda: d.running and d.stopService())
        yield wait_until(lambda: d.phase == daemon_mod.RUNNING, timeout=20)
        return d

    def http_get(self, port, path):
        """Deferred body: a plain urllib request in a thread (so it logs nothing itself)."""
        import urllib.request
        from twisted.internet import threads
        url = "http://127.0.0.1:%d%s" % (port, path)
        return threads.deferToThread(lambda: urllib.request.urlopen(url, timeout=10).read())

    @defer.inlineCallbacks
    def test_startup_lines_say_what_was_chosen(self):
        """The daemon's own info lines at start-up, exactly (the README quotes them)."""
        import flannel_tw
        d = yield self.run_real_daemon()
        lines = [line.split(" ", 1)[1] for line in self.render().splitlines()
                 if "[flannel_tw." in line]
        subnet = d.lease.subnet
        self.assertEqual(lines, [
            "[flannel_tw.daemon.FlannelDaemon#info] flannel-tw %s starting: etcd endpoints %s, "
            "prefix %s" % (flannel_tw.__version__, self.server.url, self.prefix),
            "[flannel_tw.daemon.FlannelDaemon#info] Using interface with name lo and address "
            "127.0.0.1 (MTU 65536), public IP 127.0.0.1",
            "[flannel_tw.lease.keyspace.KeyspaceManager#info] Using etcd's v2 keyspace "
            "(--etcd-api=auto): the network config is only in the v2 keyspace "
            "(%s/v2/keys%s/config)" % (self.server.url, self.prefix),
            "[flannel_tw.daemon.FlannelDaemon#info] Network config: Network=10.5.0.0/16 "
            "SubnetLen=24 SubnetMin=10.5.1.0 SubnetMax=10.5.255.0 Backend=alloc",
            "[flannel_tw.lease.manager.SubnetManager#info] Acquired lease %s" % subnet,
            "[flannel_tw.daemon.FlannelDaemon#info] Wrote %s" % self.subnet_file,
            "[flannel_tw.daemon.FlannelDaemon#info] Running with lease %s in network "
            "10.5.0.0/16 (alloc backend, MTU 65536)" % subnet])
        first = [e for e in self.events if e.get("log_level") == LogLevel.info
                 and "flannel_tw" in e.get("log_namespace", "")]
        self.assertEqual(first[0]["endpoints"], self.server.url)     # fields, for JSON logs
        self.assertEqual((first[1]["iface"], str(first[1]["public_ip"])), ("lo", "127.0.0.1"))
        self.assertEqual((first[-1]["backend"], first[-1]["mtu"]), ("alloc", 65536))

    @defer.inlineCallbacks
    def test_no_connection_or_access_chatter_at_the_default_level(self):
        d = yield self.run_real_daemon()
        for _ in range(2):
            body = yield self.http_get(self.healthz, "/healthz")
            self.assertIn(b'"healthy": true', body)
            self.assertEqual((yield self.http_get(self.healthz, "/readyz")), b"flanneld is ready")
            self.assertIn(b"flannel_ready 1.0", (yield self.http_get(self.metrics, "/metrics")))
        self.assertIsNotNone(d.etcd_client.last_answer_at)   # etcd was asked, via the pool
        yield d.stopService()
        yield d.etcd_client.close()                           # the pool's connections stop
        text = self.render(verbosity=0)
        self.assertIn("Wrote %s" % self.subnet_file, text)
        for noise in ("Starting factory", "Stopping factory", "HTTP11ClientFactory",
                      "GET /healthz", "GET /metrics", "GET /readyz", "HTTP/1.1", "Site"):
            self.assertNotIn(noise, text)
        # once per listener, naming it
        self.assertIn("] healthz starting on %d\n" % self.healthz, text)
        self.assertIn("] metrics starting on %d\n" % self.metrics, text)
        # -v=1 shows each request at debug
        verbose = self.render(verbosity=1)
        for site, path in (("healthz", "/healthz"), ("healthz", "/readyz"),
                           ("metrics", "/metrics")):
            self.assertEqual(verbose.count("[flannel_tw.web#debug] %s: 127.0.0.1 GET %s 200 "
                                           % (site, path)), 2, verbose)
        self.assertNotIn("Starting factory", verbose)
