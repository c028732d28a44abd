"""``twistd flannel --public-ipv6`` (and FLANNELD_PUBLIC_IPV6): flanneld v0.20's flag,
validated like the other flags (a clear usage error; exit 64 under twistd)."""

import io

from twisted.python import usage
from twisted.trial import unittest

from flannel_tw.tap import EX_USAGE, Options


def parse(argv, env=None):
    o = Options(environ=env or {})
    o.parseOptions(argv)
    return o


class PublicIPv6Tests(unittest.TestCase):
    def test_default_is_unset(self):
        self.assertEqual(parse([])["public-ipv6"], "")

    def test_flag_and_go_forms(self):
        for argv in (["--public-ipv6=fd00:250::b"], ["-public-ipv6=fd00:250::b"],
                     ["--public-ipv6", "fd00:250::b"]):
            self.assertEqual(parse(argv)["public-ipv6"], "fd00:250::b", argv)

    def test_environment_fills_it_when_not_given(self):
        env = {"FLANNELD_PUBLIC_IPV6": "2001:db8::7"}
        self.assertEqual(parse([], env)["public-ipv6"], "2001:db8::7")
        self.assertEqual(parse(["--public-ipv6=2001:db8::8"], env)["public-ipv6"],
                         "2001:db8::8")

    def test_bad_values_name_the_flag_or_variable(self):
        for bad in ("10.0.0.1", "fd00::zz", "fd00::1/64", "::ffff:10.0.0.1x", " ", "fe80::1%eth0"):
            with self.assertRaises(usage.UsageError, msg=bad) as cm:
                parse(["--public-ipv6=" + bad])
            self.assertIn("--public-ipv6", str(cm.exception))
            self.assertIn("is not an IPv6 address", str(cm.exception))
            with self.assertRaises(usage.UsageError, msg=bad) as cm:
                parse([], {"FLANNELD_PUBLIC_IPV6": bad})
            self.assertIn("FLANNELD_PUBLIC_IPV6", str(cm.exception))

    def test_addresses_peers_cannot_use_refused(self):
        for bad, why in (("::", "unspecified"), ("::1", "loopback"), ("ff02::1", "multicast"),
                         ("fe80::1", "link-local"), ("::ffff:10.0.0.1", "IPv4-mapped")):
            with self.assertRaises(usage.UsageError, msg=bad) as cm:
                parse(["--public-ipv6=" + bad])
            self.assertIn("--public-ipv6: %s is" % bad, str(cm.exception))
            self.assertIn(why, str(cm.exception))
            self.assertIn("not an address other hosts can send to", str(cm.exception))
        for good in ("fd00::1", "2001:db8::1", "fc00:1::5"):
            self.assertEqual(parse(["--public-ipv6=" + good])["public-ipv6"], good)

    def test_under_twistd_a_bad_value_exits_64(self):
        o = Options(environ={})
        o.parent = object()       # as under twistd's ServerOptions
        err = io.StringIO()
        self.patch(__import__("sys"), "stderr", err)
        with self.assertRaises(SystemExit) as cm:
            o.parseOptions(["--public-ipv6=10.1.2.3"])
        self.assertEqual(cm.exception.code, EX_USAGE)
        self.assertEqual(EX_USAGE, 64)
        self.assertIn("--public-ipv6: '10.1.2.3' is not an IPv6 address", err.getvalue())

    def test_help_lists_it(self):
        self.assertIn("--public-ipv6", str(Options(environ={})))
