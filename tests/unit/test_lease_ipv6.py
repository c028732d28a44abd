"""
Tests for dual-stack leases in flannel_tw.model.lease (flanneld-v0.20-v3.md A1, A2, F):
the key C{10.5.34.0-24&fc00:0:0:a::-64} (Go's net.IP.String text), v0.20's parse regex
(uppercase hex fails; lenient vs canonical), and the values PublicIPv6/BackendV6Data
byte for byte in both registries' forms.
"""
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.etcd.registry_v3 import v3_value
from flannel_tw.model.lease import (Lease, LeaseAttrs, LeaseParseError, key_to_subnet,
                                    key_to_subnets, parse_canonical_key, parse_canonical_keys,
                                    subnet_to_key)

IP = IPv4Address("10.0.0.5")
IP6 = IPv6Address("2001:db8::5")
V4 = IPv4Network("10.5.34.0/24")
V6 = IPv6Network("fc00:0:0:a::/64")
MAC = {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}
MAC6 = {"VNI": 1, "VtepMAC": "06:11:22:33:44:55"}


class KeyTests(TestCase):

    def test_dual_key(self):
        """The example of A1, both ways."""
        self.assertEqual(subnet_to_key(V4, V6), "10.5.34.0-24&fc00:0:0:a::-64")
        self.assertEqual(key_to_subnets("/coreos.com/network/subnets/10.5.34.0-24&fc00:0:0:a::-64"),
                         (V4, V6))
        self.assertEqual(parse_canonical_keys("10.5.34.0-24&fc00:0:0:a::-64"), (V4, V6))

    def test_go_text(self):
        """Lowercase, RFC 5952: :: only for two or more zero groups, the first longest run."""
        self.assertEqual(subnet_to_key(V4, IPv6Network("2001:DB8:0:1::/64")),
                         "10.5.34.0-24&2001:db8:0:1::-64")
        self.assertEqual(subnet_to_key(V4, IPv6Network("2001:db8:0:0:1:0:0:0/112")),
                         "10.5.34.0-24&2001:db8:0:0:1::-112")     # the longest run
        self.assertEqual(subnet_to_key(V4, IPv6Network("2001:db8:0:0:1:0:0:100/120")),
                         "10.5.34.0-24&2001:db8::1:0:0:100-120")  # a tie: the first
        self.assertEqual(subnet_to_key(V4, IPv6Network("fc00:1:0:1::/64")),
                         "10.5.34.0-24&fc00:1:0:1::-64")

    def test_ipv4_only_key_unchanged(self):
        self.assertEqual(subnet_to_key(V4), "10.5.34.0-24")
        self.assertEqual(key_to_subnets("10.5.34.0-24"), (V4, None))
        self.assertEqual(parse_canonical_keys("10.5.34.0-24"), (V4, None))

    def test_uppercase_hex_fails(self):
        """v0.20's regex is [a-f\\d:]: an uppercase IPv6 part is no dual-stack key; the v4
        part is still read as v0.10 reads it, and the key is not canonical."""
        key = "10.5.34.0-24&FC00:0:0:A::-64"
        self.assertEqual(key_to_subnets(key), (V4, None))
        self.assertRaises(LeaseParseError, parse_canonical_keys, key)
        self.assertFalse(Lease(V4, LeaseAttrs(IP), key=key).is_canonical)

    def test_bad_ipv6_parts(self):
        for key in ("10.5.34.0-24&fc00::-128", "10.5.34.0-24&fc00:::-64",
                    "10.5.34.0-24&:-64", "10.5.34.0-24&fc00:0:0:0:0:0:0:0:0-64"):
            self.assertRaises(LeaseParseError, key_to_subnets, key)

    def test_lenient_versus_canonical(self):
        """Host bits, leading zeros, a prefix or a non-Go text: read leniently, not canonical."""
        for key in ("10.5.34.0-24&fc00:0:0:a::1-64", "10.5.34.0-24&fc00:0:0:a::-064",
                    "x10.5.34.0-24&fc00:0:0:a::-64", "10.5.34.0-24&fc00:0000:0:a::-64",
                    "10.5.34.0-24&fc00:0:0:a:0:0:0:0-64"):
            self.assertEqual(key_to_subnets(key), (V4, V6), key)
            self.assertRaises(LeaseParseError, parse_canonical_keys, key)
            self.assertRaises(LeaseParseError, parse_canonical_key, key)
            self.assertFalse(Lease(V4, LeaseAttrs(IP), key=key, ipv6_subnet=V6).is_canonical)

    def test_trailing_text(self):
        """End-anchored: trailing text is no dual-stack key (v0.10's reading: the v4 part)."""
        self.assertEqual(key_to_subnets("10.5.34.0-24&fc00::-64x"), (V4, None))
        self.assertEqual(key_to_subnets("10.5.34.0-24&fc00::-64\n"), (V4, None))

    def test_lease_canonical_needs_the_v6_part(self):
        """A dual-stack key is canonical only for the lease that carries its v6 subnet."""
        key = "10.5.34.0-24&fc00:0:0:a::-64"
        self.assertTrue(Lease(V4, LeaseAttrs(IP), key=key, ipv6_subnet=V6).is_canonical)
        self.assertFalse(Lease(V4, LeaseAttrs(IP), key=key).is_canonical)
        self.assertEqual(Lease(V4, LeaseAttrs(IP), ipv6_subnet=V6).key_name, key)
        self.assertEqual(key_to_subnet(key), V4)


class ValueTests(TestCase):

    def test_dual_vxlan(self):
        """A2: PublicIP, PublicIPv6, BackendType, BackendData, BackendV6Data, byte for byte."""
        attrs = LeaseAttrs(IP, "vxlan", MAC, public_ipv6=IP6, backend_v6_data=MAC6)
        text = ('{"PublicIP":"10.0.0.5","PublicIPv6":"2001:db8::5","BackendType":"vxlan",'
                '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},'
                '"BackendV6Data":{"VNI":1,"VtepMAC":"06:11:22:33:44:55"}}')
        self.assertEqual(attrs.to_json(), text)
        self.assertEqual(v3_value(attrs.to_json()), text)
        self.assertEqual(LeaseAttrs.from_json(text), attrs)

    def test_dual_host_gw(self):
        attrs = LeaseAttrs(IP, "host-gw", public_ipv6=IP6)
        self.assertEqual(attrs.to_json(), '{"PublicIP":"10.0.0.5","PublicIPv6":"2001:db8::5",'
                                          '"BackendType":"host-gw"}')

    def test_v6_data_without_public_ipv6(self):
        """PublicIPv6 has no omitempty: null when a v6 field is set without it."""
        attrs = LeaseAttrs(IP, "vxlan", MAC, backend_v6_data=MAC6)
        self.assertTrue(attrs.to_json().startswith('{"PublicIP":"10.0.0.5","PublicIPv6":null,'))

    def test_ipv4_only_keeps_v010_form_on_v2(self):
        """IPv4-only attrs: v0.10's exact form (v2); v3 adds "PublicIPv6":null."""
        self.assertEqual(LeaseAttrs(IP).to_json(), '{"PublicIP":"10.0.0.5"}')
        self.assertEqual(v3_value(LeaseAttrs(IP).to_json()),
                         '{"PublicIP":"10.0.0.5","PublicIPv6":null}')
        self.assertEqual(v3_value(LeaseAttrs(IP, "host-gw").to_json()),
                         '{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}')

    def test_decode_null_absent_and_case(self):
        for text in ('{"PublicIP":"10.0.0.5"}', '{"PublicIP":"10.0.0.5","PublicIPv6":null}',
                     '{"PublicIP":"10.0.0.5","publicipv6":null,"backendv6data":null}'):
            attrs = LeaseAttrs.from_json(text)
            self.assertEqual((attrs.public_ipv6, attrs.backend_v6_data), (None, None), text)
        attrs = LeaseAttrs.from_json('{"publicip":"10.0.0.5","PUBLICIPV6":"2001:DB8::5",'
                                     '"backendV6Data":{"x":1},"unknown":2}')
        self.assertEqual((attrs.public_ipv6, attrs.backend_v6_data), (IP6, {"x": 1}))

    def test_bad_public_ipv6(self):
        """PublicIPv6 must be an IP address (no zone, number, object or garbage)."""
        for bad in ('"fe80::1%eth0"', '"fc00:::1"', '5', '{}', '"::ffff:1.2.3.4 "', '""',
                    '"10.0.0.256"', '"010.0.0.1x"'):
            self.assertRaises(LeaseParseError, LeaseAttrs.from_json,
                              '{"PublicIP":"10.0.0.5","PublicIPv6":%s}' % bad)


ipv4 = st.integers(0, 2 ** 32 - 1).map(IPv4Address)
ipv6 = st.integers(0, 2 ** 128 - 1).map(IPv6Address)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 53, 2 ** 53) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6)


class IPv4TextTests(TestCase):

    def test_ipv4_text_is_ipv4_mapped(self):
        """As Go's ParseIP: IPv4 text in PublicIPv6 is read as an IPv4-mapped address (not
        a usable peer address: leasecheck refuses it, the lease's v4 part still routes)."""
        attrs = LeaseAttrs.from_json('{"PublicIP":"10.0.0.5","PublicIPv6":"10.0.0.1"}')
        self.assertEqual(attrs.public_ipv6, IPv6Address("::ffff:10.0.0.1"))


class PropertyTests(TestCase):

    @given(st.integers(0, 2 ** 32 - 1), st.integers(0, 31), st.integers(0, 2 ** 128 - 1),
           st.integers(0, 127))
    def test_key_round_trip(self, a4, p4, a6, p6):
        """Any (v4, v6) pair: the key parses back to it, leniently and canonically, and
        its uppercase form (when it has hex letters) is no dual-stack key."""
        v4 = IPv4Network((a4, p4), strict=False)
        v6 = IPv6Network((a6, p6), strict=False)
        key = subnet_to_key(v4, v6)
        self.assertEqual(key, key.lower())
        self.assertEqual(key_to_subnets(key), (v4, v6))
        self.assertEqual(parse_canonical_keys(key), (v4, v6))
        if key != key.upper():
            self.assertRaises(LeaseParseError, parse_canonical_keys, key.upper())

    @given(ipv4, st.one_of(st.none(), ipv6), st.sampled_from(["", "vxlan", "host-gw"]),
           json_values, json_values)
    def test_value_round_trip(self, ip, ip6, btype, data, data6):
        """to_json -> from_json is the identity, in the v2 and the v3 form; the field order
        is PublicIP, PublicIPv6, BackendType, BackendData, BackendV6Data."""
        attrs = LeaseAttrs(ip, btype, data, public_ipv6=ip6, backend_v6_data=data6)
        for text in (attrs.to_json(), v3_value(attrs.to_json())):
            self.assertEqual(LeaseAttrs.from_json(text), attrs)
        text = v3_value(attrs.to_json())
        self.assertTrue(text.startswith('{"PublicIP":"%s","PublicIPv6":%s' % (
            ip, '"%s"' % ip6 if ip6 is not None else "null")))
        if data6 is not None:
            self.assertIn(',"BackendV6Data":', text)
            self.assertLess(text.find('"BackendData"') if data is not None else 0,
                            text.index('"BackendV6Data"'))
        if ip6 is None and data6 is None:
            self.assertNotIn("PublicIPv6", attrs.to_json())
