"""etcd over TLS with client certificates, and etcd v2 basic auth, against a real etcd.
Certificates are made in the test (flannel_tw.testing.certs). Bad files at start-up
are fatal with a message naming the file (flanneld: "Failed to create SubnetManager");
TLS failures at runtime (untrusted server, rejected client certificate) are logged
clearly and retried, and the daemon recovers once the certificates are fixed."""

import os

from twisted.internet import defer, reactor
from twisted.logger import LogLevel
from twisted.trial import unittest

from flannel_tw import daemon as daemon_mod
from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.errors import EtcdError, EtcdUnavailable
from flannel_tw.etcd.tls import tls_policy
from flannel_tw.testing.certs import CA, make_pki
from flannel_tw.testing.etcd import start_etcd_for_test
from flannel_tw.testing.harness import CONFIG, DaemonHarness, logged, sleep
from flannel_tw.testing.polling import wait_until


class RealTLSTests(DaemonHarness, unittest.TestCase):
    """A real etcd serving https with --client-cert-auth and --trusted-ca-file."""

    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        self.pki = make_pki(os.path.join(self.dir, "pki"))
        self.server = start_etcd_for_test(self, tls=self.pki.etcd_tls())
        self.server.put_config(CONFIG)
        self.other = make_pki(os.path.join(self.dir, "other"))  # an unrelated CA

    def policy(self, ca=None, cert=None, key=None):
        return tls_policy(ca or self.pki.ca, cert or self.pki.client_cert,
                          key or self.pki.client_key)

    def resign_server(self, ca):
        """Give etcd a server certificate from C{ca} (the same files) and restart it."""
        cert, key = ca.issue("etcd-server", ips=["127.0.0.1"], server=True, client=True)
        with open(self.pki.server_cert, "wb") as f:
            f.write(cert)
        with open(self.pki.server_key, "wb") as f:
            f.write(key)
        self.server.tls["ca"] = self.pki.ca
        self.server.tls["helper_cert"] = self.pki.client_cert
        self.server.tls["helper_key"] = self.pki.client_key
        self.server.restart()

    @defer.inlineCallbacks
    def test_daemon_runs_over_tls_with_client_certificate(self):
        d = self.run_daemon(self.make_daemon(self.server.endpoints, tls=self.policy()))
        yield self.running(d)
        self.assertTrue(self.server.url.startswith("https://"))
        node = self.server.v2_get(self.key(d.lease.subnet))["node"]
        self.assertEqual(node["value"], '{"PublicIP":"192.0.2.1"}')
        self.assertEqual(self.notified, ["READY=1"])

    @defer.inlineCallbacks
    def test_plain_http_to_tls_etcd_fails_clearly(self):
        client = EtcdV2Client(reactor, [self.server.url.replace("https:", "http:")])
        self.addCleanup(client.close)
        e = yield self.assertFailure(client.get("/coreos.com/network/config"), EtcdUnavailable)
        self.assertIn("etcd cluster is unavailable", str(e))

    @defer.inlineCallbacks
    def test_wrong_ca_is_reported_retried_and_recovers_when_fixed(self):
        d = self.run_daemon(self.make_daemon(self.server.endpoints,
                                             tls=self.policy(ca=self.other.ca)))
        yield wait_until(lambda: d.config_attempts >= 4)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        self.assertIn("TLS handshake failed: etcd's certificate is not trusted by CA file "
                      + self.other.ca, d._last_config_error)
        self.assertIn("certificate verify failed", d._last_config_error)
        self.assertEqual(len(logged(self.logs, "Couldn't fetch network config",
                                    LogLevel.error)), 1)
        # fixed on etcd's side: its certificate now comes from the CA we trust
        self.resign_server(self.other.ca_object)
        yield self.running(d)
        self.assertEqual(self.exits, [])

    @defer.inlineCallbacks
    def test_client_certificate_rejected_is_reported_and_retried(self):
        d = self.run_daemon(self.make_daemon(
            self.server.endpoints,
            tls=self.policy(cert=self.other.client_cert, key=self.other.client_key)))
        yield wait_until(lambda: d.config_attempts >= 4)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
        self.assertIn("TLS handshake failed: etcd rejected our client certificate "
                      + self.other.client_cert, d._last_config_error)
        self.assertEqual(len(logged(self.logs, "Couldn't fetch network config",
                                    LogLevel.error)), 1)

    @defer.inlineCallbacks
    def test_no_client_certificate_says_so(self):
        client = EtcdV2Client(reactor, self.server.endpoints, tls=tls_policy(self.pki.ca))
        self.addCleanup(client.close)
        e = yield self.assertFailure(client.get("/coreos.com/network/config"), EtcdUnavailable)
        self.assertIn("etcd rejected our client certificate (none given: set "
                      "--etcd-certfile and --etcd-keyfile)", str(e))

    @defer.inlineCallbacks
    def test_tls_failure_at_runtime_is_logged_retried_and_recovers(self):
        d = self.run_daemon(self.make_daemon(self.server.endpoints, tls=self.policy(),
                                             etcd_probe_interval=0.2, etcd_stale_after=60))
        yield self.running(d)
        subnet = d.lease.subnet
        original = self.pki.ca_object
        self.resign_server(CA("rogue CA"))  # etcd now shows a certificate we do not trust
        yield wait_until(lambda: logged(self.logs, "etcd's certificate is not trusted",
                                        LogLevel.warn), timeout=20)
        probe = logged(self.logs, "etcd health probe failed", LogLevel.warn)
        self.assertEqual(len(probe), 1, probe)
        self.assertIn("not trusted by CA file " + self.pki.ca, probe[0])
        yield sleep(1.0)
        self.assertEqual(len(logged(self.logs, "etcd health probe failed", LogLevel.warn)), 1)
        self.assertEqual(d.phase, daemon_mod.RUNNING)
        self.resign_server(original)
        yield wait_until(lambda: logged(self.logs, "etcd answers again"), timeout=20)
        self.server.v2_put("/coreos.com/network/subnets/10.5.250.0-24",
                           '{"PublicIP":"192.0.2.250"}', ttl=600)
        yield wait_until(lambda: "10.5.250.0/24" in self.added_subnets(self.backends[0]),
                         timeout=30)
        self.assertEqual(d.lease.subnet, subnet)
        self.assertEqual(self.exits, [])


class BasicAuthTests(DaemonHarness, unittest.TestCase):
    """etcd v2 auth (still in etcd 3.5 with --enable-v2): root user, guest revoked."""

    timeout = 60

    def setUp(self):
        DaemonHarness.setUp(self)
        self.server = start_etcd_for_test(self)
        self.server.put_config(CONFIG)
        self.server.enable_v2_auth("s3cret")

    @defer.inlineCallbacks
    def test_daemon_with_username_and_password(self):
        d = self.run_daemon(self.make_daemon(self.server.endpoints, username="root",
                                             password="s3cret"))
        yield self.running(d)
        self.assertEqual(self.server.v2_get(self.key(d.lease.subnet))["node"]["value"],
                         '{"PublicIP":"192.0.2.1"}')

    @defer.inlineCallbacks
    def test_missing_or_wrong_credentials_are_etcd_errors_and_retried(self):
        for user, password in ((None, None), ("root", "wrong")):
            client = EtcdV2Client(reactor, self.server.endpoints, username=user,
                                  password=password)
            self.addCleanup(client.close)
            e = yield self.assertFailure(client.get("/coreos.com/network/config"), EtcdError)
            self.assertEqual(e.error_code, 110)
            self.assertIn("The request requires user authentication", str(e))
        d = self.run_daemon(self.make_daemon(self.server.endpoints, username="root",
                                             password="wrong"))
        yield wait_until(lambda: d.config_attempts >= 3)
        self.assertIn("110: The request requires user authentication", d._last_config_error)
        self.assertEqual(d.phase, daemon_mod.WAITING_CONFIG)
