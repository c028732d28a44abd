"""etcd over TLS with client certificates, and etcd v2 basic auth, against a real etcd.

The unit tests (TLSFileTests, InsecureSettingsTests); the whole description is in tests/integration/test_tls.py."""

import os
import shutil

from twisted.internet import reactor
from twisted.logger import LogLevel
from twisted.python.usage import UsageError
from twisted.trial import unittest

from flannel_tw import wiring
from flannel_tw.etcd.tls import TLSFileError, tls_files, tls_policy
from flannel_tw.tap import Options
from flannel_tw.testing.certs import make_pki
from flannel_tw.testing.harness import IFACE, logged


class TLSFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.pki = make_pki(self.dir)

    def test_good_files_load(self):
        policy = tls_policy(self.pki.ca, self.pki.client_cert, self.pki.client_key)
        self.assertEqual(policy.files, {"ca": self.pki.ca, "cert": self.pki.client_cert,
                                        "key": self.pki.client_key})
        self.assertIsNotNone(policy.creatorForNetloc(b"127.0.0.1", 2379))

    def test_missing_ca_file_is_named(self):
        missing = os.path.join(self.dir, "nope.pem")
        e = self.assertRaises(TLSFileError, tls_policy, missing)
        self.assertIn("CA file " + missing, str(e))
        self.assertIn("No such file", str(e))

    def test_unreadable_key_is_named(self):
        e = self.assertRaises(TLSFileError, tls_policy, self.pki.ca, self.pki.client_cert,
                              self.dir)  # a directory: unreadable as a file, even for root
        self.assertIn("client key file " + self.dir, str(e))

    def test_ca_that_is_not_pem(self):
        e = self.assertRaises(TLSFileError, tls_policy, self.pki.client_key)
        self.assertIn("CA file %s is not a PEM certificate" % self.pki.client_key, str(e))

    def test_cert_without_key(self):
        e = self.assertRaises(TLSFileError, tls_policy, self.pki.ca, self.pki.client_cert)
        self.assertIn("needs both a cert file and a key file", str(e))

    def test_key_of_another_certificate(self):
        other = make_pki(os.path.join(self.dir, "other"))
        e = self.assertRaises(TLSFileError, tls_policy, self.pki.ca, self.pki.client_cert,
                              other.client_key)
        self.assertIn(self.pki.client_cert, str(e))
        self.assertIn(other.client_key, str(e))
        self.assertIn("do not match", str(e))

    def test_flags_win_over_ssl_dir(self):
        self.assertEqual(tls_files("/a/ca.pem", "", "", {"ETCD_SSL_DIR": self.dir}),
                         ("/a/ca.pem", None, None))

    def test_etcd_ssl_dir_with_ca_and_client_pair(self):
        self.assertEqual(tls_files("", "", "", {"ETCD_SSL_DIR": self.dir}),
                         (self.pki.ca, self.pki.client_cert, self.pki.client_key))

    def test_default_ssl_dir_absent_means_no_tls(self):
        empty = os.path.join(self.dir, "empty")
        os.makedirs(empty)
        self.assertEqual(tls_files("", "", "", {"ETCD_SSL_DIR": empty}), (None, None, None))

    def _options(self, *argv):
        options = Options(environ={})
        options.parseOptions(["--iface=eth0"] + list(argv))
        return options

    def test_missing_file_is_a_usage_error_naming_it(self):
        missing = os.path.join(self.dir, "missing-key.pem")
        e = self.assertRaises(UsageError, self._options, "--etcd-keyfile=" + missing)
        self.assertIn("--etcd-keyfile", str(e))
        self.assertIn(missing, str(e))

    def test_build_daemon_exits_naming_an_unusable_file(self):
        import flannel_tw.kernel.iface as iface_mod
        self.patch(iface_mod, "lookup_ext_iface", lambda *a, **kw: IFACE)
        options = self._options("--etcd-endpoints=https://127.0.0.1:1",
                                "--etcd-cafile=" + self.pki.ca,
                                "--etcd-certfile=" + self.pki.client_cert,
                                "--etcd-keyfile=" + self.pki.ca)  # a certificate, not a key
        e = self.assertRaises(SystemExit, wiring.build_daemon, options, reactor)
        self.assertIn("Failed to create SubnetManager", str(e.code))
        self.assertIn("key %s cannot be loaded" % self.pki.ca, str(e.code))

    def test_build_daemon_exits_when_a_file_vanished_after_parsing(self):
        import flannel_tw.kernel.iface as iface_mod
        self.patch(iface_mod, "lookup_ext_iface", lambda *a, **kw: IFACE)
        ca = os.path.join(self.dir, "short-lived-ca.pem")
        shutil.copy(self.pki.ca, ca)
        options = self._options("--etcd-endpoints=https://127.0.0.1:1", "--etcd-cafile=" + ca)
        os.unlink(ca)
        e = self.assertRaises(SystemExit, wiring.build_daemon, options, reactor)
        self.assertIn("Failed to create SubnetManager: cannot read CA file " + ca, str(e.code))

    def test_build_daemon_uses_etcd_ssl_dir(self):
        import flannel_tw.kernel.iface as iface_mod
        self.patch(iface_mod, "lookup_ext_iface", lambda *a, **kw: IFACE)
        self.patch(os, "environ", dict(os.environ, ETCD_SSL_DIR=self.dir))
        d = wiring.build_daemon(self._options("--etcd-endpoints=https://127.0.0.1:1"),
                                    reactor)
        self.addCleanup(d.etcd_client.close)
        self.assertEqual(d.etcd_client.tls_files,
                         {"ca": self.pki.ca, "cert": self.pki.client_cert,
                          "key": self.pki.client_key})


class InsecureSettingsTests(unittest.TestCase):
    """
    Flags that cannot do what they say: a client key without its certificate (or the
    reverse) is a usage error naming the flag given; basic auth towards an http://
    endpoint (the password travels in clear) and TLS files with http:// endpoints (never
    used for them) are warned about once, at start-up.
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.pki = make_pki(self.dir)

    def parse(self, *argv, env=None):
        options = Options(environ=env or {})
        options.parseOptions(["--iface=eth0"] + list(argv))
        return options

    def test_lone_keyfile_or_certfile_is_refused_naming_it(self):
        e = self.assertRaises(UsageError, self.parse, "--etcd-keyfile=" + self.pki.client_key,
                              "--etcd-endpoints=https://127.0.0.1:2379")
        self.assertIn("--etcd-keyfile given without --etcd-certfile", str(e))
        e = self.assertRaises(UsageError, self.parse, "--etcd-certfile=" + self.pki.client_cert)
        self.assertIn("--etcd-certfile given without --etcd-keyfile", str(e))
        e = self.assertRaises(UsageError, self.parse,
                              env={"FLANNELD_ETCD_KEYFILE": self.pki.client_key})
        self.assertIn("FLANNELD_ETCD_KEYFILE given without --etcd-certfile", str(e))

    def test_lone_cafile_is_fine(self):
        """A CA alone verifies the server: no client certificate needed."""
        options = self.parse("--etcd-cafile=" + self.pki.ca,
                             "--etcd-endpoints=https://127.0.0.1:2379")
        self.assertEqual(options.warnings, [])

    def test_basic_auth_over_http_warns_once(self):
        options = self.parse("--etcd-username=u", "--etcd-password=p",
                             "--etcd-endpoints=http://10.0.0.1:2379,https://e2:2379,"
                             "http://10.0.0.3:2379")
        self.assertEqual(len(options.warnings), 1)
        warning = options.warnings[0]
        self.assertIn("password sent in clear", warning)
        self.assertIn("--etcd-username", warning)
        self.assertIn("http://10.0.0.1:2379, http://10.0.0.3:2379", warning)
        self.assertNotIn("https://e2", warning)
        env = {"FLANNELD_ETCD_USERNAME": "u"}
        self.assertIn("FLANNELD_ETCD_USERNAME", self.parse(env=env).warnings[0])

    def test_basic_auth_over_https_only_is_quiet(self):
        self.assertEqual(self.parse("--etcd-username=u", "--etcd-password=p",
                                    "--etcd-endpoints=https://e1:2379").warnings, [])

    def test_tls_files_with_http_endpoints_warn(self):
        options = self.parse("--etcd-cafile=" + self.pki.ca,
                             "--etcd-certfile=" + self.pki.client_cert,
                             "--etcd-keyfile=" + self.pki.client_key,
                             "--etcd-endpoints=http://10.0.0.1:2379")
        self.assertEqual(len(options.warnings), 1)
        warning = options.warnings[0]
        self.assertIn("--etcd-cafile, --etcd-certfile, --etcd-keyfile", warning)
        self.assertIn("unused", warning)
        self.assertIn("every etcd endpoint is http://", warning)
        mixed = self.parse("--etcd-cafile=" + self.pki.ca,
                           "--etcd-endpoints=https://e1:2379,http://10.0.0.2:2379")
        self.assertEqual(len(mixed.warnings), 1)
        self.assertIn("not used for http://10.0.0.2:2379", mixed.warnings[0])

    def test_no_flags_no_warnings(self):
        self.assertEqual(self.parse().warnings, [])

    def test_daemon_logs_the_warnings_at_start_up(self):
        import flannel_tw.kernel.iface as iface_mod
        from twisted.logger import globalLogPublisher
        self.patch(iface_mod, "lookup_ext_iface", lambda *a, **kw: IFACE)
        self.patch(os, "environ", dict(os.environ, ETCD_SSL_DIR=os.path.join(self.dir, "no")))
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = self.parse("--etcd-username=u", "--etcd-password=secret",
                             "--etcd-cafile=" + self.pki.ca,
                             "--etcd-endpoints=http://127.0.0.1:1")
        d = wiring.build_daemon(options, reactor)
        self.addCleanup(d.etcd_client.close)
        warnings = logged(events, "", LogLevel.warn)
        self.assertEqual(len(warnings), 2, warnings)
        self.assertTrue(any("password sent in clear" in w for w in warnings), warnings)
        self.assertTrue(any("every etcd endpoint is http://" in w for w in warnings), warnings)
        self.assertFalse(any("secret" in w for w in warnings), warnings)
