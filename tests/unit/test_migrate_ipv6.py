"""flannel-tw etcd migrate with dual-stack leases (issue 15): the & key is copied, the v6
fields of the value kept, hostile v6 parts skipped when the config enables IPv6."""
from twisted.trial import unittest

from flannel_tw.model.config import parse_config
from flannel_tw.tools import migrate

DUAL = parse_config('{"Network": "10.7.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48",'
                    ' "Backend": {"Type": "vxlan"}}')
V4 = parse_config('{"Network": "10.7.0.0/16", "Backend": {"Type": "vxlan"}}')
PREFIX = "/coreos.com/network/subnets/"
VALUE = ('{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::7","BackendType":"vxlan",'
         '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},'
         '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}')


class DualStackPlanTests(unittest.TestCase):

    def test_dual_stack_lease_copied_with_its_v6_fields(self):
        for config in (DUAL, V4, None):
            self.assertEqual(
                migrate.plan_lease(PREFIX + "10.7.3.0-24&fc00:0:0:3::-64", VALUE, 86000, config),
                ("copy", "10.7.3.0-24&fc00:0:0:3::-64", VALUE, 86000))

    def test_v6_data_without_public_ipv6_kept_both_ways(self):
        value = ('{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendV6Data":{"VtepMAC":"aa:bb:cc:dd:ee:02"}}')
        plan = migrate.plan_lease(PREFIX + "10.7.3.0-24&fc00:0:0:3::-64", value, 10, DUAL)
        self.assertEqual(plan[2], value)
        self.assertEqual(migrate.v2_lease_value(value), value)
        self.assertEqual(migrate.v2_lease_value(VALUE), VALUE)

    def test_hostile_v6_parts_skipped_with_ipv6_on(self):
        for name, reason in (("10.7.3.0-24&fd00:0:0:3::-64", "outside-network"),
                             ("10.7.3.0-24&fc00:0:0:3::-80", "subnet-length"),
                             ("10.7.3.0-24&FC00:0:0:3::-64", "bad-key"),
                             ("10.7.3.0-24&fc00:0:0:3::1-64", "bad-key")):
            self.assertEqual(migrate.plan_lease(PREFIX + name, VALUE, 10, DUAL)[:2],
                             ("skip", reason), name)
        bad = VALUE.replace('"2001:db8::7"', '"ff02::1"')
        self.assertEqual(migrate.plan_lease(PREFIX + "10.7.3.0-24&fc00:0:0:3::-64", bad, 10,
                                            DUAL)[:2], ("skip", "public-ipv6"))
