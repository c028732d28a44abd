"""flannel-tw config set validates the dual-stack keys (issue 15) before etcd is
contacted: bad ones are refused with flanneld's text, nothing written."""
from twisted.internet import defer
from twisted.trial import unittest

from flannel_tw.testing.netconfig_fixtures import Runner


class V6KeysTests(unittest.TestCase, Runner):
    NOWHERE = {"FLANNELD_ETCD_ENDPOINTS": "http://127.0.0.1:1"}

    @defer.inlineCallbacks
    def refused(self, config, text):
        code, out, err = yield self.config("set", config, env=self.NOWHERE)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("invalid network config in the argument: ", err)
        self.assertIn(text, err)
        self.assertIn("nothing written", err)

    def test_ipv6_only_refused(self):
        return self.refused('{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/48"}',
                            "IPv6-only networks are not supported with etcd")

    def test_missing_ipv6_network(self):
        return self.refused('{"Network": "10.5.0.0/16", "EnableIPv6": true}',
                            "please define a correct IPv6Network parameter")

    def test_bad_ipv6_subnet_len(self):
        return self.refused('{"Network": "10.5.0.0/16", "EnableIPv6": true, '
                            '"IPv6Network": "fc00::/48", "IPv6SubnetLen": 127}',
                            "SubnetLen must be less than /127")

    def test_ipv6_subnet_min_off_boundary(self):
        return self.refused('{"Network": "10.5.0.0/16", "EnableIPv6": true, '
                            '"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::1"}',
                            "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1")
