"""
Tests for flannel_tw.model.lease: lease values byte-for-byte as flanneld writes them,
Go-style parsing, and the subnet key format (flannel-compat.md section 2).
"""
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.model.lease import (Lease, LeaseAttrs, LeaseParseError, key_to_subnet,
                              parse_canonical_key, subnet_to_key)

IP = IPv4Address("10.0.0.1")


class ToJsonTests(TestCase):
    """The value JSON, compact, in flanneld's field order."""

    def test_udp(self):
        """udp and alloc: no BackendType, no BackendData."""
        self.assertEqual(LeaseAttrs(IP).to_json(), '{"PublicIP":"10.0.0.1"}')

    def test_vxlan(self):
        """vxlan: all three fields, in order."""
        attrs = LeaseAttrs(IP, "vxlan", {"VtepMAC": "82:4b:b6:2f:54:4e"})
        self.assertEqual(attrs.to_json(), '{"PublicIP":"10.0.0.1","BackendType":"vxlan",'
                                          '"BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}')

    def test_host_gw(self):
        """host-gw: BackendType only."""
        self.assertEqual(LeaseAttrs(IP, "host-gw").to_json(),
                         '{"PublicIP":"10.0.0.1","BackendType":"host-gw"}')

    def test_data_without_type(self):
        """BackendData with an empty BackendType keeps the order PublicIP, BackendData."""
        self.assertEqual(LeaseAttrs(IP, "", {"a": [1, 2]}).to_json(),
                         '{"PublicIP":"10.0.0.1","BackendData":{"a":[1,2]}}')

    def test_go_escapes(self):
        """Like Go's json.Marshal: <, > and & escaped, other non-ASCII kept."""
        self.assertEqual(LeaseAttrs(IP, "", "<&>\u00e9").to_json(),
                         '{"PublicIP":"10.0.0.1","BackendData":"\\u003c\\u0026\\u003e\u00e9"}')


class FromJsonTests(TestCase):
    """Parsing values, with the errors that make flanneld skip a node."""

    def test_parse(self):
        """Case-insensitive field names; unknown fields ignored; bytes accepted."""
        attrs = LeaseAttrs.from_json(b'{"publicip":"10.0.0.2","BACKENDTYPE":"vxlan",'
                                     b'"backenddata":{"VtepMAC":"aa:bb"},"PublicIPv6":null}')
        self.assertEqual(attrs, LeaseAttrs(IPv4Address("10.0.0.2"), "vxlan",
                                           {"VtepMAC": "aa:bb"}))

    def test_null_fields(self):
        """BackendData null -> None; BackendType null -> ""."""
        attrs = LeaseAttrs.from_json('{"PublicIP":"10.0.0.2","BackendType":null,'
                                     '"BackendData":null}')
        self.assertEqual(attrs, LeaseAttrs(IPv4Address("10.0.0.2")))

    def test_bad_values(self):
        """Each of these is a bad subnet node."""
        for text in ("", "{", "[]", '"x"', "{}", '{"PublicIP":null}', '{"PublicIP":5}',
                     '{"PublicIP":"10.0.0"}', '{"PublicIP":"fd00::1"}',
                     '{"PublicIP":"10.0.0.256"}', '{"PublicIP":"10.0.0.1","BackendType":3}',
                     b'\xff'):
            self.assertRaises(LeaseParseError, LeaseAttrs.from_json, text)

    def test_reservation(self):
        """A lease without TTL is a reservation."""
        self.assertTrue(Lease(IPv4Network("10.5.1.0/24"), LeaseAttrs(IP)).is_reservation)
        self.assertFalse(Lease(IPv4Network("10.5.1.0/24"), LeaseAttrs(IP), ttl=5).is_reservation)


class KeyTests(TestCase):
    """Subnet keys, parsed with flanneld's unanchored regex."""

    def test_to_key(self):
        """Network address, dash, prefix length."""
        self.assertEqual(subnet_to_key(IPv4Network("10.5.34.0/24")), "10.5.34.0-24")

    def test_full_key(self):
        """Only the last path component counts."""
        self.assertEqual(key_to_subnet("/coreos.com/network/subnets/10.5.34.0-24"),
                         IPv4Network("10.5.34.0/24"))
        self.assertEqual(key_to_subnet("/1.2.3.4-8/subnets/10.5.34.0-24"),
                         IPv4Network("10.5.34.0/24"))

    def test_unanchored(self):
        """Leading and trailing junk is tolerated, as flanneld does."""
        self.assertEqual(key_to_subnet("x10.5.34.0-24y"), IPv4Network("10.5.34.0/24"))
        self.assertEqual(key_to_subnet("10.5.34.0-024"), IPv4Network("10.5.34.0/24"))

    def test_host_bits_masked(self):
        """Our documented choice: host bits in a key are masked."""
        self.assertEqual(key_to_subnet("10.5.34.7-24"), IPv4Network("10.5.34.0/24"))

    def test_bad_keys(self):
        """No match, LEN above 31, or an address that does not parse."""
        for key in ("", "subnets", "10.5.34.0", "10.5.34.0-32", "10.5.34.0-99999999999",
                    "10.5.34.0-" + "9" * 5000, "10.5x34y0-24", "10.5.34.300-24",
                    "10.5.34-24", "\u0661\u0660.5.34.0-24"):
            self.assertRaises(LeaseParseError, key_to_subnet, key)

    def test_len31(self):
        """31 is the largest accepted length."""
        self.assertEqual(key_to_subnet("10.5.34.2-31"), IPv4Network("10.5.34.2/31"))


class CanonicalKeyTests(TestCase):
    """Keys a lease may be routed by: exactly flanneld's form, nothing that aliases it."""

    def test_canonical(self):
        self.assertEqual(parse_canonical_key("/coreos.com/network/subnets/10.5.34.0-24"),
                         IPv4Network("10.5.34.0/24"))
        self.assertEqual(parse_canonical_key("0.0.0.0-0"), IPv4Network("0.0.0.0/0"))

    def test_aliases_refused(self):
        """Each of these parses (flanneld would believe it) but is not the exact form."""
        for key in ("x10.5.34.0-24", "10.5.34.0-24y", "10.5.34.0-024", "10.5.34.7-24",
                    "10.5.34.0-24 ", " 10.5.34.0-24", "10.5.34.0-24-24", "1.10.5.34.0-24"):
            self.assertEqual(key_to_subnet(key), IPv4Network("10.5.34.0/24"), key)
            self.assertRaises(LeaseParseError, parse_canonical_key, key)
        # leading zeros in the address are refused by both (Go's net.ParseIP agrees)
        for key in ("010.5.34.0-24", "10.05.34.0-24"):
            self.assertRaises(LeaseParseError, key_to_subnet, key)
            self.assertRaises(LeaseParseError, parse_canonical_key, key)

    def test_lease_is_canonical(self):
        net = IPv4Network("10.5.34.0/24")
        self.assertTrue(Lease(net, LeaseAttrs(IP)).is_canonical)        # made by us
        self.assertTrue(Lease(net, LeaseAttrs(IP), key="10.5.34.0-24").is_canonical)
        self.assertFalse(Lease(net, LeaseAttrs(IP), key="x10.5.34.0-24").is_canonical)
        # the stored key does not take part in equality
        self.assertEqual(Lease(net, LeaseAttrs(IP), key="x10.5.34.0-24"),
                         Lease(net, LeaseAttrs(IP)))

    @given(st.text(alphabet="0123456789.-x/ ", max_size=24))
    def test_canonical_iff_round_trip(self, key):
        """parse_canonical_key accepts exactly the keys subnet_to_key produces."""
        try:
            subnet = parse_canonical_key(key)
        except LeaseParseError:
            try:
                subnet = key_to_subnet(key)
            except LeaseParseError:
                return
            self.assertNotEqual(subnet_to_key(subnet), key.rstrip("/").rsplit("/", 1)[-1])
        else:
            self.assertEqual(subnet_to_key(subnet), key.rstrip("/").rsplit("/", 1)[-1])


ipv4 = st.integers(0, 2 ** 32 - 1).map(IPv4Address)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 53, 2 ** 53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10)


class PropertyTests(TestCase):
    """Round-trips."""

    @given(st.integers(0, 2 ** 32 - 1), st.integers(0, 31))
    def test_key_round_trip(self, address, prefix):
        """key_to_subnet(subnet_to_key(n)) == n, also under a prefix path."""
        network = IPv4Network((address, prefix), strict=False)
        key = subnet_to_key(network)
        self.assertEqual(key_to_subnet(key), network)
        self.assertEqual(key_to_subnet("/coreos.com/network/subnets/" + key), network)
        self.assertEqual(parse_canonical_key("/coreos.com/network/subnets/" + key), network)

    @given(ipv4, st.sampled_from(["", "vxlan", "host-gw", "alloc"]), json_values)
    def test_value_round_trip(self, public_ip, backend_type, data):
        """from_json(to_json(a)) == a, and the text starts with the PublicIP."""
        attrs = LeaseAttrs(public_ip, backend_type, data)
        text = attrs.to_json()
        self.assertTrue(text.startswith('{"PublicIP":"%s"' % public_ip))
        self.assertEqual(LeaseAttrs.from_json(text), attrs)
        self.assertEqual(LeaseAttrs.from_json(text).to_json(), text)
