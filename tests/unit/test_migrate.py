"""flannel_tw.tools.migrate (``flannel-tw etcd migrate``): the pure parts (a v2 lease ->
what to write in v3, or why it is skipped; configs compared) and the usage errors found
before etcd is contacted. Against a real etcd: tests/integration/test_migrate.py."""

import io

from twisted.internet import defer, reactor
from twisted.trial import unittest

from flannel_tw.model.config import parse_config
from flannel_tw.tools import migrate

CONFIG = parse_config('{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan"}}')
KEY = "/coreos.com/network/subnets/10.7.3.0-24"


class ConvertTests(unittest.TestCase):
    def test_v2_writer_form_gets_public_ipv6_null(self):
        value = '{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb"}}'
        self.assertEqual(
            migrate.plan_lease(KEY, value, 86000, CONFIG),
            ("copy", "10.7.3.0-24",
             '{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
             '"BackendData":{"VNI":1,"VtepMAC":"aa:bb"}}', 86000))

    def test_vxlan_value_gets_the_configs_vni(self):
        """v0.10's vxlan BackendData {"VtepMAC"} becomes v0.20's {"VNI":n,"VtepMAC"}."""
        config = parse_config('{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan", '
                              '"VNI": 4096}}')
        value = '{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb"}}'
        self.assertEqual(migrate.plan_lease(KEY, value, 50, config)[2],
                         '{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
                         '"BackendData":{"VNI":4096,"VtepMAC":"aa:bb"}}')
        self.assertEqual(migrate.plan_lease(KEY, value, 50, None)[2],
                         '{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
                         '"BackendData":{"VtepMAC":"aa:bb"}}')

    def test_udp_value_and_reservation(self):
        self.assertEqual(migrate.plan_lease(KEY, '{"PublicIP":"192.0.2.7"}', None, CONFIG),
                         ("copy", "10.7.3.0-24", '{"PublicIP":"192.0.2.7","PublicIPv6":null}',
                          None))

    def test_other_spelling_is_written_in_v020_form(self):
        value = '{ "backendtype": "udp", "publicip": "192.0.2.7" }'
        plan = migrate.plan_lease(KEY, value, 10, CONFIG)
        self.assertEqual(plan[2], '{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"udp"}')

    def test_value_with_public_ipv6_kept(self):
        value = '{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"udp"}'
        self.assertEqual(migrate.plan_lease(KEY, value, 5, CONFIG)[2], value)

    def test_ttl_at_least_one(self):
        self.assertEqual(migrate.plan_lease(KEY, '{"PublicIP":"192.0.2.7"}', 0, CONFIG)[3], 1)

    def test_hostile_keys_and_values_skipped(self):
        good = '{"PublicIP":"192.0.2.7"}'
        cases = [
            ("/p/subnets/x10.7.3.0-24", good, "bad-key"),
            ("/p/subnets/10.7.3.1-24", good, "bad-key"),
            ("/p/subnets/garbage", good, "bad-key"),
            ("/p/subnets/10.7.3.0-24", "{not json", "bad-value"),
            ("/p/subnets/10.7.3.0-24", None, "bad-value"),
            ("/p/subnets/10.7.3.0-24", '{"PublicIP":"::1"}', "bad-value"),
            ("/p/subnets/10.9.3.0-24", good, "outside-network"),
            ("/p/subnets/10.7.0.0-17", good, "subnet-length"),
            ("/p/subnets/10.7.3.0-24", '{"PublicIP":"127.0.0.1"}', "public-ip"),
            ("/p/subnets/10.7.3.0-24", '{"PublicIP":"10.7.9.9"}', "public-ip"),
        ]
        for key, value, reason in cases:
            plan = migrate.plan_lease(key, value, 100, CONFIG)
            self.assertEqual(plan[:2], ("skip", reason), (key, value, plan))

    def test_without_config_network_not_checked(self):
        self.assertEqual(migrate.plan_lease("/p/subnets/10.9.3.0-24",
                                            '{"PublicIP":"192.0.2.7"}', 3, None)[0], "copy")

    def test_v2_value_from_v3_value(self):
        self.assertEqual(migrate.v2_lease_value(
            '{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{}}'),
            '{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{}}')
        self.assertEqual(migrate.v2_lease_value('{"PublicIP":"192.0.2.7","PublicIPv6":null}'),
                         '{"PublicIP":"192.0.2.7"}')
        for kept in ('{"PublicIP":"192.0.2.7"}',
                     '{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::1"}',
                     '{ "PublicIP": "192.0.2.7", "PublicIPv6": null }'):
            self.assertEqual(migrate.v2_lease_value(kept), kept)

    def test_same_config(self):
        a = '{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan"}}'
        self.assertTrue(migrate.same_config(a, a + "\n"))
        self.assertTrue(migrate.same_config(
            a, '{"Backend":{"Type":"vxlan"},"Network":"10.7.0.0/16"}'))
        self.assertFalse(migrate.same_config(
            a, '{"Network": "10.8.0.0/16", "Backend": {"Type": "vxlan"}}'))
        self.assertFalse(migrate.same_config(
            a, '{"Network": "10.7.0.0/16", "Backend": {"Type": "udp"}}'))
        self.assertFalse(migrate.same_config(a, "{bad"))


class UsageTests(unittest.TestCase):
    NOWHERE = {"FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:1"}

    @defer.inlineCallbacks
    def run_command(self, *argv, env=None):
        out, err = io.StringIO(), io.StringIO()
        code = yield migrate.run(reactor, list(argv), out, err, environ=dict(env or {}))
        return code, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_follow_with_unreachable_etcd_exit_1(self):
        code, _out, err = yield self.run_command("migrate", "--follow", env=self.NOWHERE)
        self.assertEqual(code, 1)
        self.assertIn("flannel-tw etcd migrate: etcd:", err)

    @defer.inlineCallbacks
    def test_no_command(self):
        code, _out, err = yield self.run_command(env=self.NOWHERE)
        self.assertEqual(code, 2)
        self.assertIn("give a command: migrate", err)

    @defer.inlineCallbacks
    def test_bad_flag_named(self):
        code, _out, err = yield self.run_command(
            "migrate", env={"FLANNELD_ETCD_ENDPOINTS": "not a url"})
        self.assertEqual(code, 2)
        self.assertIn("FLANNELD_ETCD_ENDPOINTS", err)

    @defer.inlineCallbacks
    def test_unreachable_etcd_exit_1(self):
        code, _out, err = yield self.run_command("migrate", "--etcd-endpoints",
                                                 "http://127.0.0.1:1")
        self.assertEqual(code, 1)
        self.assertIn("flannel-tw etcd migrate: etcd:", err)
