"""``twistd flannel`` options: flanneld's flags, defaults, FLANNELD_* variables, errors."""

from twisted.python import usage
from twisted.trial import unittest

from flannel_tw.tap import DEFAULT_ENDPOINTS, Options, normalize_argv


def parse(argv, env=None):
    o = Options(environ=env or {})
    o.parseOptions(argv)
    return o


class DefaultsTests(unittest.TestCase):
    def test_flanneld_defaults(self):
        o = parse([])
        self.assertEqual(o["etcd-endpoints"], DEFAULT_ENDPOINTS.split(","))
        self.assertEqual(o["etcd-prefix"], "/coreos.com/network")
        self.assertEqual(o["subnet-file"], "/run/flannel/subnet.env")
        self.assertEqual(o["subnet-lease-renew-margin"], 60)
        self.assertEqual(o["healthz-ip"], "0.0.0.0")
        self.assertEqual(o["healthz-port"], 0)
        self.assertEqual((o["iface"], o["iface-regex"], o["ip-masq"], o["public-ip"]),
                         ([], [], False, ""))
        for name in ("etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username",
                     "etcd-password"):
            self.assertEqual(o[name], "")
        self.assertEqual(o["etcd-api"], "auto")
        self.assertEqual(parse([], {"FLANNELD_ETCD_API": "v3"})["etcd-api"], "v3")
        self.assertEqual(parse(["--etcd-api=v2"], {})["etcd-api"], "v2")


class FlagTests(unittest.TestCase):
    def test_go_style_single_dash_and_equals(self):
        o = parse(["-etcd-endpoints=http://10.0.0.1:2379,https://e2:2379", "-iface", "eth1",
                   "--iface=10.1.2.3", "-iface-regex", "^en", "-ip-masq"])
        self.assertEqual(o["etcd-endpoints"], ["http://10.0.0.1:2379", "https://e2:2379"])
        self.assertEqual(o["iface"], ["eth1", "10.1.2.3"])
        self.assertEqual(o["iface-regex"], ["^en"])
        self.assertTrue(o["ip-masq"])

    def test_bool_values(self):
        self.assertTrue(parse(["--ip-masq=true"])["ip-masq"])
        self.assertFalse(parse(["--ip-masq=false"], env={"FLANNELD_IP_MASQ": "true"})["ip-masq"])
        self.assertRaises(usage.UsageError, parse, ["--ip-masq=maybe"])

    def test_iptables_forward_rules_defaults_true(self):
        self.assertIs(parse([])["iptables-forward-rules"], True)
        for argv, env, want in (
                (["--iptables-forward-rules=false"], {}, False),
                (["-iptables-forward-rules=0"], {}, False),
                (["-iptables-forward-rules"], {"FLANNELD_IPTABLES_FORWARD_RULES": "false"}, True),
                ([], {"FLANNELD_IPTABLES_FORWARD_RULES": "false"}, False),
                (["--iptables-forward-rules=true"], {}, True)):
            self.assertIs(parse(argv, env=env)["iptables-forward-rules"], want, (argv, env))
        e = self.assertRaises(usage.UsageError, parse, ["--iptables-forward-rules=maybe"])
        self.assertIn("--iptables-forward-rules", str(e))
        e = self.assertRaises(usage.UsageError, parse, [],
                              env={"FLANNELD_IPTABLES_FORWARD_RULES": "nah"})
        self.assertIn("FLANNELD_IPTABLES_FORWARD_RULES", str(e))

    def test_normalize_leaves_values_alone(self):
        self.assertEqual(normalize_argv(["--etcd-prefix", "-x"])[0], ["--etcd-prefix", "-x"])

    def test_bad_values_name_the_flag(self):
        cases = [
            (["--subnet-lease-renew-margin=0"], "subnet-lease-renew-margin"),
            (["--subnet-lease-renew-margin=1440"], "out of acceptable range"),
            (["--subnet-lease-renew-margin=abc"], "--subnet-lease-renew-margin"),
            (["--healthz-port=70000"], "--healthz-port"),
            (["--healthz-ip=nope"], "--healthz-ip"),
            (["--public-ip=1.2.3"], "--public-ip"),
            (["--etcd-endpoints=ftp://x"], "--etcd-endpoints"),
            (["--etcd-endpoints=,"], "--etcd-endpoints"),
            (["--etcd-prefix=coreos.com"], "--etcd-prefix"),
            (["--iface-regex=("], "--iface-regex"),
            (["--etcd-cafile=/nonexistent/ca.pem"], "--etcd-cafile"),
            (["--kube-subnet-mgr"], "--kube-subnet-mgr"),
            (["--etcd-api=v4"], "--etcd-api"),
        ]
        for argv, needle in cases:
            with self.assertRaises(usage.UsageError, msg=argv) as cm:
                parse(argv)
            self.assertIn(needle, str(cm.exception), argv)

    def test_unknown_flag_is_an_error(self):
        self.assertRaises(usage.UsageError, parse, ["--no-such-flag"])


class VerbosityTests(unittest.TestCase):
    """glog's -v as flanneld users pass it (its troubleshooting guide says -v=10)."""

    def test_every_form_of_v(self):
        for argv in (["-v=10"], ["--v=10"], ["-v", "10"], ["--v", "10"], ["-v10"]):
            o = parse(argv + ["--etcd-prefix=/p"])
            self.assertEqual((o["v"], o["etcd-prefix"]), (10, "/p"), argv)
        self.assertEqual(parse([], {"FLANNELD_V": "3"})["v"], 3)
        self.assertEqual(parse(["-v=2"], {"FLANNELD_V": "3"})["v"], 2)
        self.assertEqual(parse([])["v"], 0)

    def test_bad_v_names_the_flag(self):
        for argv in (["-v=x"], ["--v="], ["--v=11"], ["-v=-1"]):
            with self.assertRaises(usage.UsageError, msg=argv) as cm:
                parse(argv)
            self.assertTrue(str(cm.exception).startswith("--v: "), (argv, str(cm.exception)))

    def test_help_mentions_v(self):
        """getopt's help lists no one-letter option: the description names -v."""
        text = str(Options(environ={}))
        self.assertIn("-v=N", text)
        self.assertIn("FLANNELD_V", text)

    def test_version_is_still_version(self):
        self.assertEqual(normalize_argv(["--version"])[0], ["--version"])
        self.assertEqual(normalize_argv(["-version"])[0], ["--version"])


class EnvironmentTests(unittest.TestCase):
    def test_env_applies_to_flags_not_given(self):
        env = {"FLANNELD_ETCD_PREFIX": "/from/env", "FLANNELD_IFACE": "eth9",
               "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30", "FLANNELD_IP_MASQ": "1",
               "FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:1"}
        o = parse(["--etcd-prefix=/from/flag"], env)
        self.assertEqual(o["etcd-prefix"], "/from/flag")
        self.assertEqual(o["iface"], ["eth9"])
        self.assertEqual(o["subnet-lease-renew-margin"], 30)
        self.assertTrue(o["ip-masq"])
        self.assertEqual(o["etcd-endpoints"], ["http://127.0.0.1:1"])

    def test_bad_env_value_names_the_variable(self):
        with self.assertRaises(usage.UsageError) as cm:
            parse([], {"FLANNELD_HEALTHZ_PORT": "eighty"})
        self.assertIn("FLANNELD_HEALTHZ_PORT", str(cm.exception))
        with self.assertRaises(usage.UsageError) as cm:
            parse([], {"FLANNELD_IP_MASQ": "yes please"})
        self.assertIn("FLANNELD_IP_MASQ", str(cm.exception))
