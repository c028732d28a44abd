"""flannel_tw.tools.netconfig (``flannel-tw config get|set``) against a real etcd 3.5 (v2 API)

The unit tests (ParseTests); the whole description is in tests/integration/test_netconfig.py."""

import os

from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.tools import netconfig
from flannel_tw.testing.netconfig_fixtures import CONFIG, Runner


class ParseTests(unittest.TestCase, Runner):
    """Errors found before etcd is contacted (the endpoint is never reached)."""

    NOWHERE = {"FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:1"}

    @defer.inlineCallbacks
    def test_invalid_json_is_refused(self):
        code, out, err = yield self.config("set", '{"Network": ', env=self.NOWHERE)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("invalid network config in the argument: config is not valid JSON", err)
        self.assertIn("nothing written", err)

    @defer.inlineCallbacks
    def test_config_without_network_is_refused(self):
        code, _out, err = yield self.config("set", "-", env=self.NOWHERE,
                                            stdin='{"SubnetLen": 24}')
        self.assertEqual(code, 1)
        self.assertIn("invalid network config in stdin: Network is missing", err)

    @defer.inlineCallbacks
    def test_unreadable_file(self):
        missing = os.path.abspath(self.mktemp())
        code, _out, err = yield self.config("set", "--file", missing, env=self.NOWHERE)
        self.assertEqual(code, 1)
        self.assertIn("cannot read %s: No such file" % missing, err)

    @defer.inlineCallbacks
    def test_usage_errors(self):
        for argv, needle in [
                ((), "give a command: get or set"),
                (("set",), "give the config as one argument, - (stdin) or --file FILE"),
                (("set", CONFIG, "--file", "/x"), "give the config as one argument"),
                (("get", "--etcd-prefix=nope"), "--etcd-prefix: 'nope' must start with /"),
                (("get", "-etcd-endpoints=ftp://x"), "--etcd-endpoints: 'ftp://x' is not an "
                                                     "http:// or https:// URL"),
                (("get", "--etcd-certfile", "/etc/hostname"), "--etcd-keyfile"),
                (("get", "--bogus"), "unrecognized arguments: --bogus")]:
            code, _out, err = yield self.config(*argv, env=self.NOWHERE)
            self.assertEqual(code, 2, argv)
            self.assertIn(needle, err, argv)

    @defer.inlineCallbacks
    def test_environment_variable_is_named(self):
        code, _out, err = yield self.config("get", env={"FLANNELD_ETCD_PREFIX": "x"})
        self.assertEqual(code, 2)
        self.assertIn("FLANNELD_ETCD_PREFIX: 'x' must start with /", err)

    def test_only_the_etcd_variables_are_read(self):
        """A unit's environment holds the daemon's other settings: not this command's business."""
        options = netconfig.etcd_options([], {"FLANNELD_HEALTHZ_PORT": "not a port",
                                              "FLANNELD_ETCD_PREFIX": "/p",
                                              "FLANNELD_ETCD_ENDPOINTS": "https://e:2379"})
        self.assertEqual(options["etcd-prefix"], "/p")
        self.assertEqual(options["etcd-endpoints"], ["https://e:2379"])
        # a flag wins over its variable, as for the daemon
        options = netconfig.etcd_options(["--etcd-prefix=/flag"], {"FLANNELD_ETCD_PREFIX": "/p"})
        self.assertEqual(options["etcd-prefix"], "/flag")

    @defer.inlineCallbacks
    def test_unreachable_etcd(self):
        code, _out, err = yield self.config("get", env=self.NOWHERE)
        self.assertEqual(code, 1)
        self.assertIn("etcd cluster is unavailable", err)
        self.assertIn("http://127.0.0.1:1", err)
