"""flannel_tw.tools.netconfig (``flannel-tw config get|set``) against a real etcd 3.5 (v2 API):
plain, over TLS with client certificates (from the flags and from $ETCD_SSL_DIR, as the
daemon finds them), with v2 basic auth; the JSON checked before anything is written;
usage errors naming the flag or variable; and the command as a process."""

import json
import os
import subprocess
import sys

from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.model.config import parse_config
from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing.certs import make_pki
from flannel_tw.testing.etcd import start_etcd_for_test
from flannel_tw.testing.netconfig_fixtures import CONFIG, Runner, SharedEtcdRunner


class PlainEtcdTests(SharedEtcdRunner, unittest.TestCase):
    @defer.inlineCallbacks
    def test_set_get_unchanged_update(self):
        code, out, err = yield self.config("set", CONFIG, env=self.env)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("wrote %s/config" % self.prefix, out)
        node = self.stored(self.server, self.prefix)
        self.assertEqual(node["value"], CONFIG)
        self.assertEqual(str(parse_config(node["value"]).network), "10.7.0.0/16")

        code, out, err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (0, CONFIG + "\n"))
        self.assertEqual(err, "flannel-tw config: the network config is only in the v2 "
                         "keyspace (%s/config)\n" % self.prefix)

        code, out, _err = yield self.config("set", CONFIG, env=self.env)
        self.assertEqual(code, 0)
        self.assertIn("unchanged", out)
        self.assertEqual(self.stored(self.server, self.prefix)["modifiedIndex"],
                         node["modifiedIndex"], "the same value is not written again")

        other = '{"Network": "10.8.0.0/16"}'
        code, out, _err = yield self.config("set", other, env=self.env)
        self.assertEqual(code, 0)
        self.assertEqual(self.stored(self.server, self.prefix)["value"], other)

    @defer.inlineCallbacks
    def test_invalid_config_leaves_etcd_alone(self):
        yield self.config("set", CONFIG, env=self.env)
        code, _out, err = yield self.config("set", '{"Network": "10.7.0.0/33"}', env=self.env)
        self.assertEqual(code, 1)
        self.assertIn("nothing written", err)
        self.assertEqual(self.stored(self.server, self.prefix)["value"], CONFIG)

    @defer.inlineCallbacks
    def test_file_and_stdin(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("\n  " + CONFIG + "\n\n")
        code, _out, err = yield self.config("set", "--file", path, env=self.env)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.stored(self.server, self.prefix)["value"], CONFIG)
        code, _out, err = yield self.config("set", "-", env=self.env,
                                            stdin='{"Network": "10.9.0.0/16"}')
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.stored(self.server, self.prefix)["value"],
                         '{"Network": "10.9.0.0/16"}')

    @defer.inlineCallbacks
    def test_flags_instead_of_environment(self):
        code, _out, err = yield self.config("set", CONFIG, "--etcd-endpoints",
                                            "http://127.0.0.1:1," + self.server.url,
                                            "--etcd-prefix=" + self.prefix)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(self.stored(self.server, self.prefix)["value"], CONFIG)

    @defer.inlineCallbacks
    def test_get_missing_and_get_invalid(self):
        code, out, err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no network config at %s/config (etcd %s)" % (self.prefix, self.server.url),
                      err)
        self.server.put_config('{"Network": "nonsense"}', prefix=self.prefix)
        code, out, err = yield self.config("get", env=self.env)
        self.assertEqual((code, out), (0, '{"Network": "nonsense"}\n'))
        self.assertIn("warning: the daemon refuses this config: Network 'nonsense'", err)

    def test_as_a_process(self):
        """``flannel-tw config`` through the CLI: its own reactor, exit status from the work."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        env.update(self.env)

        def run(*argv, stdin=""):
            return subprocess.run([sys.executable, "-m", "flannel_tw", "config"] + list(argv),
                                  cwd=repo_root(), env=env, input=stdin, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

        cp = run("set", "-", stdin=CONFIG)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        cp = run("get")
        self.assertEqual((cp.returncode, cp.stdout), (0, CONFIG + "\n"), cp.stderr)
        cp = run("set", "[1, 2]")
        self.assertEqual(cp.returncode, 1)
        self.assertIn("config must be a JSON object", cp.stderr)
        cp = run("set")
        self.assertEqual(cp.returncode, 2)


class TLSEtcdTests(unittest.TestCase, Runner):
    """etcd serving https and requiring a client certificate."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        self.pki = make_pki(os.path.join(self.dir, "pki"))
        self.server = start_etcd_for_test(self, tls=self.pki.etcd_tls())
        self.prefix = "/coreos.com/network"
        self.assertTrue(self.server.url.startswith("https://"))

    @defer.inlineCallbacks
    def test_client_certificate_from_flags(self):
        code, out, err = yield self.config(
            "set", CONFIG, "--etcd-endpoints=" + self.server.url,
            "--etcd-cafile=" + self.pki.ca, "--etcd-certfile=" + self.pki.client_cert,
            "--etcd-keyfile=" + self.pki.client_key,
            env={"ETCD_SSL_DIR": os.path.join(self.dir, "empty")})
        self.assertEqual((code, err), (0, ""), out)
        self.assertEqual(self.stored(self.server, self.prefix)["value"], CONFIG)

    @defer.inlineCallbacks
    def test_client_certificate_from_etcd_ssl_dir(self):
        """What the TLS drop-in gives: https endpoint, ETCD_SSL_DIR with ca.pem, client.pem."""
        env = {"FLANNELD_ETCD_ENDPOINTS": self.server.url, "ETCD_SSL_DIR": self.pki.directory}
        code, _out, err = yield self.config("set", CONFIG, env=env)
        self.assertEqual((code, err), (0, ""))
        code, out, err = yield self.config("get", "--etcd-api=v2", env=env)
        self.assertEqual((code, out, err), (0, CONFIG + "\n", ""))

    @defer.inlineCallbacks
    def test_without_client_certificate_fails_clearly(self):
        code, _out, err = yield self.config(
            "set", CONFIG, "--etcd-endpoints=" + self.server.url,
            "--etcd-cafile=" + self.pki.ca, env={})
        self.assertEqual(code, 1)
        self.assertIn("flannel-tw config: etcd: etcd cluster is unavailable", err)
        self.assertIsNone(self.stored(self.server, self.prefix))

    @defer.inlineCallbacks
    def test_bad_certificate_file_is_named(self):
        code, _out, err = yield self.config(
            "get", "--etcd-endpoints=" + self.server.url, "--etcd-cafile=" + self.pki.client_key,
            env={})
        self.assertEqual(code, 1)
        self.assertIn("CA file %s is not a PEM certificate" % self.pki.client_key, err)


class AuthEtcdTests(unittest.TestCase, Runner):
    def setUp(self):
        self.server = start_etcd_for_test(self)
        self.server.enable_v2_auth("s3cret")
        self.prefix = "/coreos.com/network"

    @defer.inlineCallbacks
    def test_username_and_password(self):
        env = {"FLANNELD_ETCD_ENDPOINTS": self.server.url}
        code, _out, err = yield self.config("set", CONFIG, env=env)
        self.assertEqual(code, 1)
        self.assertIn("flannel-tw config: etcd: 110:", err)   # etcd: insufficient credentials
        self.assertIsNone(self.stored(self.server, self.prefix))
        env.update(FLANNELD_ETCD_USERNAME="root", FLANNELD_ETCD_PASSWORD="s3cret")
        code, _out, err = yield self.config("set", CONFIG, env=env)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(self.stored(self.server, self.prefix)["value"])["Network"],
                         "10.7.0.0/16")
