"""
Tests for the dual-stack keys of flannel_tw.model.config (flanneld-v0.20-v3.md section
B): EnableIPv4, EnableIPv6, IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax,
their defaults, host-bit masking, flanneld's error texts, and IPv6-only refused.
"""
import json
from ipaddress import IPv6Address, IPv6Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.model.config import ConfigError, parse_config


def cfg(**fields) -> str:
    fields.setdefault("Network", "10.5.0.0/16")
    return json.dumps(fields)


def v6(**fields):
    fields.setdefault("EnableIPv6", True)
    return parse_config(cfg(**fields))


class DefaultsTests(TestCase):

    def test_ipv4_only_by_default(self):
        """Without the keys: EnableIPv4 true, EnableIPv6 false, no IPv6 fields."""
        c = parse_config(cfg())
        self.assertEqual((c.enable_ipv4, c.enable_ipv6, c.ipv6_network, c.ipv6_subnet_len,
                          c.ipv6_subnet_min, c.ipv6_subnet_max, c.ipv6_subnet_size),
                         (True, False, None, 0, None, None, 0))

    def test_ipv6_keys_ignored_without_enable_ipv6(self):
        """IPv6Network without EnableIPv6 is not used (flanneld validates it only then)."""
        c = parse_config(cfg(IPv6Network="fc00::/48", IPv6SubnetLen=200))
        self.assertFalse(c.enable_ipv6)
        self.assertIsNone(c.ipv6_network)
        self.assertEqual(c, parse_config(cfg()))

    def test_slash48_gives_64(self):
        """A prefix up to 62 gives IPv6SubnetLen 64; min the 2nd subnet, max the last."""
        c = v6(IPv6Network="fc00::/48")
        self.assertEqual((c.ipv6_network, c.ipv6_subnet_len, c.ipv6_subnet_min,
                          c.ipv6_subnet_max, c.ipv6_subnet_size),
                         (IPv6Network("fc00::/48"), 64, IPv6Address("fc00:0:0:1::"),
                          IPv6Address("fc00:0:0:ffff::"), 2 ** 64))
        self.assertEqual(v6(IPv6Network="fc00::/62").ipv6_subnet_len, 64)

    def test_prefix_above_62_gives_prefix_plus_2(self):
        self.assertEqual(v6(IPv6Network="fc00::/63").ipv6_subnet_len, 65)
        c = v6(IPv6Network="fc00::/124")
        self.assertEqual((c.ipv6_subnet_len, str(c.ipv6_subnet_min), str(c.ipv6_subnet_max)),
                         (126, "fc00::4", "fc00::c"))

    def test_host_bits_masked(self):
        """fc00:0:0:1::5/48 becomes fc00::/48."""
        self.assertEqual(v6(IPv6Network="fc00:0:0:1::5/48").ipv6_network,
                         IPv6Network("fc00::/48"))

    def test_explicit_values_kept(self):
        c = v6(IPv6Network="2001:db8::/32", IPv6SubnetLen=56, IPv6SubnetMin="2001:db8:0:100::",
               IPv6SubnetMax="2001:db8:ff:ff00::")
        self.assertEqual((c.ipv6_subnet_len, str(c.ipv6_subnet_min), str(c.ipv6_subnet_max)),
                         (56, "2001:db8:0:100::", "2001:db8:ff:ff00::"))

    def test_case_insensitive_keys(self):
        """Go's decoder matches key names without regard to case."""
        c = parse_config(json.dumps({"network": "10.5.0.0/16", "enableipv6": True,
                                     "ipv6network": "fc00::/48", "IPV6SUBNETLEN": 80}))
        self.assertEqual((c.enable_ipv6, c.ipv6_subnet_len), (True, 80))

    def test_explicit_enable_ipv4_true(self):
        self.assertTrue(parse_config(cfg(EnableIPv4=True)).enable_ipv4)


class ErrorTests(TestCase):

    def assertError(self, key, text, **fields):
        e = self.assertRaises(ConfigError, v6, **fields)
        self.assertEqual(e.key, key)
        self.assertIn(text, str(e))
        return e

    def test_ipv6_network_required(self):
        self.assertError("IPv6Network", "please define a correct IPv6Network parameter in "
                                        "the flannel config")
        self.assertError("IPv6Network", "please define a correct IPv6Network parameter",
                         IPv6Network="")

    def test_ipv6_network_not_ipv6(self):
        for bad in ("10.0.0.0/8", "fc00::", "fc00::/129", "zz::/48", 7):
            self.assertError("IPv6Network", "IPv6Network", IPv6Network=bad)

    def test_bad_type_refused_even_without_enable_ipv6(self):
        """Go's decoder refuses a value of the wrong type whether or not it is used."""
        self.assertRaises(ConfigError, parse_config, cfg(IPv6Network=5))
        self.assertRaises(ConfigError, parse_config, cfg(EnableIPv6="yes"))
        self.assertRaises(ConfigError, parse_config, cfg(IPv6SubnetLen=-1))

    def test_too_small(self):
        self.assertError("IPv6Network", "IPv6Network is too small. Minimum useful network "
                                        "prefix is /124", IPv6Network="fc00::/125")

    def test_subnet_len_too_long(self):
        self.assertError("IPv6SubnetLen", "SubnetLen must be less than /127",
                         IPv6Network="fc00::/48", IPv6SubnetLen=127)

    def test_subnet_len_four_subnets(self):
        self.assertError("IPv6SubnetLen", "network must be able to accommodate at least four "
                                          "subnets", IPv6Network="fc00::/48", IPv6SubnetLen=49)
        self.assertEqual(v6(IPv6Network="fc00::/48", IPv6SubnetLen=50).ipv6_subnet_len, 50)

    def test_min_max_range(self):
        self.assertError("IPv6SubnetMin", "IPv6SubnetMin is not in the range of the "
                                          "IPv6Network", IPv6Network="fc00::/48",
                         IPv6SubnetMin="fc01::")
        self.assertError("IPv6SubnetMax", "IPv6SubnetMax is not in the range of the "
                                          "IPv6Network", IPv6Network="fc00::/48",
                         IPv6SubnetMax="fd00::")

    def test_min_max_boundary(self):
        self.assertError("IPv6SubnetMin", "IPv6SubnetMin is not on a SubnetLen boundary: "
                                          "fc00:0:0:1::1", IPv6Network="fc00::/48",
                         IPv6SubnetMin="fc00:0:0:1::1")
        self.assertError("IPv6SubnetMax", "IPv6SubnetMax is not on a SubnetLen boundary: "
                                          "fc00:0:0:2::8", IPv6Network="fc00::/48",
                         IPv6SubnetMax="fc00:0:0:2::8")

    def test_min_max_not_ipv6(self):
        self.assertError("IPv6SubnetMin", "IPv6 address", IPv6Network="fc00::/48",
                         IPv6SubnetMin="10.0.0.1")
        self.assertError("IPv6SubnetMax", "IPv6 address", IPv6Network="fc00::/48",
                         IPv6SubnetMax=[1])

    def test_ipv4_mapped_refused(self):
        self.assertError("IPv6Network", "IPv4-mapped", IPv6Network="::ffff:10.0.0.0/112")

    def test_all_zero_refused(self):
        self.assertError("IPv6Network", "please define a correct IPv6Network", IPv6Network="::/0")

    def test_ipv6_only_refused(self):
        """EnableIPv4 false: a clear error saying why (no IPv6-only etcd lease key)."""
        for fields in ({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48"},
                       {"EnableIPv4": False, "Network": "10.5.0.0/16"},
                       {"EnableIPv4": False}):
            e = self.assertRaises(ConfigError, parse_config, json.dumps(fields))
            self.assertEqual(e.key, "EnableIPv4")
            self.assertIn("IPv6-only networks are not supported with etcd", str(e))
            self.assertIn("no IPv6-only lease key", str(e))

    def test_enable_flags_must_be_bool(self):
        self.assertError("EnableIPv6", "EnableIPv6 must be true or false", EnableIPv6=1)
        self.assertError("EnableIPv4", "EnableIPv4 must be true or false", EnableIPv4="true")


@st.composite
def ipv6_configs(draw):
    prefix = draw(st.integers(1, 124))
    address = draw(st.integers(0, 2 ** 128 - 1))
    network = IPv6Network((address, prefix), strict=False)
    if network.overlaps(IPv6Network("::ffff:0:0/96")):
        network = IPv6Network(("fc00::", prefix), strict=False) if prefix >= 8 else \
            IPv6Network(("8000::", prefix), strict=False)
    subnet_len = draw(st.one_of(st.just(0), st.integers(prefix + 2, 126))) \
        if prefix + 2 <= 126 else 0
    return network, address, subnet_len


class PropertyTests(TestCase):

    @given(ipv6_configs())
    def test_defaults_are_consistent(self, case):
        """For any valid IPv6Network (written with host bits): the subnet length is
        flanneld's default or the given one, min and max lie inside the network on subnet
        boundaries, min is the 2nd subnet and max the last, and the config round-trips
        through its own JSON."""
        network, address, subnet_len = case
        written = "%s/%d" % (network.network_address + (address & int(network.hostmask)),
                             network.prefixlen)
        fields = {"IPv6Network": written}
        if subnet_len:
            fields["IPv6SubnetLen"] = subnet_len
        c = v6(**fields)
        expect = subnet_len or (64 if network.prefixlen <= 62 else network.prefixlen + 2)
        self.assertEqual(c.ipv6_network, network)
        self.assertEqual(c.ipv6_subnet_len, expect)
        size = 2 ** (128 - expect)
        self.assertEqual(int(c.ipv6_subnet_min), int(network.network_address) + size)
        self.assertEqual(int(c.ipv6_subnet_max), int(network.broadcast_address) + 1 - size)
        for a in (c.ipv6_subnet_min, c.ipv6_subnet_max):
            self.assertIn(a, network)
            self.assertEqual(int(a) % size, 0)
        again = v6(IPv6Network=str(c.ipv6_network), IPv6SubnetLen=c.ipv6_subnet_len,
                   IPv6SubnetMin=str(c.ipv6_subnet_min), IPv6SubnetMax=str(c.ipv6_subnet_max))
        self.assertEqual(again, c)

    @given(st.integers(1, 124), st.integers(0, 2 ** 128 - 1), st.integers(1, 127))
    def test_min_off_boundary_refused(self, prefix, address, offset):
        """Any IPv6SubnetMin inside the network but off a subnet boundary is refused with
        flanneld's text."""
        network = IPv6Network(("fc00::", max(prefix, 8)), strict=False)
        c = v6(IPv6Network=str(network))
        size = c.ipv6_subnet_size
        bad = IPv6Address(int(c.ipv6_subnet_min) + offset % size) if offset % size else None
        if bad is None:
            return
        e = self.assertRaises(ConfigError, v6, IPv6Network=str(network), IPv6SubnetMin=str(bad))
        self.assertIn("IPv6SubnetMin is not on a SubnetLen boundary: %s" % bad, str(e))
