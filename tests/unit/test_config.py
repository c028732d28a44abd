"""
Tests for flannel_tw.model.config: flanneld v0.10's config rules (flannel-compat.md
sections 1 and 13), Go encoding/json key matching, and every error path.
"""
import json
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.model.config import ConfigError, NetworkConfig, parse_config


def cfg(**fields) -> str:
    return json.dumps(fields)


class DefaultsTests(TestCase):
    """The examples and defaults of section 1."""

    def test_slash16(self):
        """/16 gives len 24, min x.y.1.0, max x.y.255.0, backend udp."""
        c = parse_config(cfg(Network="10.5.0.0/16"))
        self.assertEqual(c, NetworkConfig(IPv4Network("10.5.0.0/16"), 24,
                                          IPv4Address("10.5.1.0"), IPv4Address("10.5.255.0"),
                                          "udp"))
        self.assertEqual(c.backend, {})
        self.assertEqual(c.subnet_size, 256)

    def test_slash24(self):
        """10.1.0.0/24 gives len 26, min .64, max .192."""
        c = parse_config(cfg(Network="10.1.0.0/24"))
        self.assertEqual((c.subnet_len, c.subnet_min, c.subnet_max),
                         (26, IPv4Address("10.1.0.64"), IPv4Address("10.1.0.192")))

    def test_prefix22_gives_24(self):
        """A prefix of exactly 22 still gives 24; 23 gives 25."""
        self.assertEqual(parse_config(cfg(Network="10.0.0.0/22")).subnet_len, 24)
        self.assertEqual(parse_config(cfg(Network="10.0.0.0/23")).subnet_len, 25)

    def test_prefix28_gives_30(self):
        """/28 is the smallest network: len 30, two usable subnets after the skipped first."""
        c = parse_config(cfg(Network="10.0.0.16/28"))
        self.assertEqual((c.subnet_len, str(c.subnet_min), str(c.subnet_max)),
                         (30, "10.0.0.20", "10.0.0.28"))

    def test_host_bits_masked(self):
        """10.1.2.3/16 becomes 10.1.0.0/16."""
        self.assertEqual(parse_config(cfg(Network="10.1.2.3/16")).network,
                         IPv4Network("10.1.0.0/16"))

    def test_explicit_values(self):
        """Explicit SubnetLen, SubnetMin and SubnetMax are kept."""
        c = parse_config(cfg(Network="10.0.0.0/8", SubnetLen=20,
                             SubnetMin="10.10.0.0", SubnetMax="10.20.0.0"))
        self.assertEqual((c.subnet_len, str(c.subnet_min), str(c.subnet_max)),
                         (20, "10.10.0.0", "10.20.0.0"))

    def test_zero_means_unset(self):
        """SubnetLen 0 and SubnetMin/SubnetMax "0.0.0.0" or null mean unset."""
        c = parse_config(cfg(Network="10.5.0.0/16", SubnetLen=0,
                             SubnetMin="0.0.0.0", SubnetMax=None))
        self.assertEqual((c.subnet_len, str(c.subnet_min), str(c.subnet_max)),
                         (24, "10.5.1.0", "10.5.255.0"))

    def test_min_above_max_accepted(self):
        """Min <= Max is not checked, as in flanneld."""
        c = parse_config(cfg(Network="10.5.0.0/16", SubnetMin="10.5.9.0",
                             SubnetMax="10.5.3.0"))
        self.assertEqual((str(c.subnet_min), str(c.subnet_max)), ("10.5.9.0", "10.5.3.0"))

    def test_top_of_address_space(self):
        """The default max does not overflow at the end of the address space."""
        c = parse_config(cfg(Network="255.255.0.0/16"))
        self.assertEqual(str(c.subnet_max), "255.255.255.0")

    def test_bytes_and_unknown_keys(self):
        """bytes are accepted; unknown keys are ignored."""
        c = parse_config(b'{"Network": "10.5.0.0/16", "Whatever": [1, {"x": 2}]}')
        self.assertEqual(c.network, IPv4Network("10.5.0.0/16"))


class KeyMatchingTests(TestCase):
    """Go encoding/json matches keys without regard to case."""

    def test_case_insensitive(self):
        """Lower- and mixed-case keys fill the fields, including Backend's Type."""
        c = parse_config('{"network": "10.5.0.0/16", "SUBNETLEN": 26, "subnetmin": "10.5.0.64",'
                         ' "SubnetMAX": "10.5.1.0", "backend": {"type": "VXLAN", "VNI": 4}}')
        self.assertEqual((str(c.network), c.subnet_len, str(c.subnet_min), str(c.subnet_max)),
                         ("10.5.0.0/16", 26, "10.5.0.64", "10.5.1.0"))
        self.assertEqual(c.backend_type, "vxlan")
        self.assertEqual(c.backend, {"type": "VXLAN", "VNI": 4})

    def test_last_key_wins(self):
        """Several keys for one field: the last one in the document wins."""
        c = parse_config('{"Network": "10.1.0.0/16", "network": "10.2.0.0/16"}')
        self.assertEqual(str(c.network), "10.2.0.0/16")

    def test_null_is_noop(self):
        """A later null does not erase an earlier value (Go)."""
        c = parse_config('{"Network": "10.1.0.0/16", "network": null}')
        self.assertEqual(str(c.network), "10.1.0.0/16")


class ErrorTests(TestCase):
    """Each error names its key and keeps flanneld's text."""

    def assertConfigError(self, text, key, *fragments):
        err = self.assertRaises(ConfigError, parse_config, text)
        self.assertEqual(err.key, key)
        if key is not None:
            self.assertIn(key, str(err))
        for fragment in fragments:
            self.assertIn(fragment, str(err))
        return err

    def test_not_json(self):
        """Invalid JSON, NaN and non-UTF-8 bytes: key None."""
        self.assertConfigError("{", None, "not valid JSON")
        self.assertConfigError('{"Network": "10.0.0.0/8", "SubnetLen": NaN}', None)
        self.assertConfigError(b'{"Network": "\xff"}', None, "UTF-8")

    def test_not_object(self):
        """The top level must be an object."""
        for text in ("[]", "[1]", '"x"', "3", "null"):
            self.assertConfigError(text, None, "JSON object")

    def test_network_missing_or_empty(self):
        """Our decision (sec 13): no Network is an error, not 0.0.0.0/0."""
        self.assertConfigError("{}", "Network", "missing")
        self.assertConfigError('{"Network": null}', "Network", "missing")
        self.assertConfigError(cfg(Network=""), "Network", "empty")
        self.assertConfigError(cfg(Network="0.0.0.0/0"), "Network", "empty")

    def test_network_bad(self):
        """Non-strings and non-IPv4-CIDR strings."""
        for value in (5, ["10.0.0.0/8"], {"a": 1}, True):
            self.assertConfigError(cfg(Network=value), "Network", "string")
        for value in ("10.0.0.0", "10.0.0.0/33", "fd00::/8", "10.0.0/8", "x",
                      "10.0.0.256/8", "10.0.0.0/255.0.0.0"):
            self.assertConfigError(cfg(Network=value), "Network", repr(value))

    def test_subnetlen_types(self):
        """SubnetLen must be a non-negative integer."""
        for value in ("x", "24", -1, 24.0, 24.5, True, [24]):
            self.assertConfigError(cfg(Network="10.0.0.0/8", SubnetLen=value), "SubnetLen",
                                   "non-negative integer")

    def test_subnetlen_too_long(self):
        """Above 30 fails."""
        self.assertConfigError(cfg(Network="10.0.0.0/8", SubnetLen=31), "SubnetLen",
                               "SubnetLen must be less than /31")
        parse_config(cfg(Network="10.0.0.0/8", SubnetLen=30))

    def test_four_subnets(self):
        """SubnetLen below prefix+2 fails."""
        self.assertConfigError(cfg(Network="10.0.0.0/16", SubnetLen=17), "SubnetLen",
                               "Network must be able to accommodate at least four subnets")
        self.assertEqual(parse_config(cfg(Network="10.0.0.0/16", SubnetLen=18)).subnet_len, 18)

    def test_network_too_small(self):
        """Prefix above 28 without SubnetLen fails; with SubnetLen the four-subnet rule applies."""
        self.assertConfigError(cfg(Network="10.0.0.0/29"), "Network",
                               "Network is too small. Minimum useful network prefix is /28")
        self.assertConfigError(cfg(Network="10.0.0.0/29", SubnetLen=30), "SubnetLen",
                               "four subnets")

    def test_min_max_range(self):
        """SubnetMin/SubnetMax outside the Network."""
        self.assertConfigError(cfg(Network="10.5.0.0/16", SubnetMin="10.6.0.0"), "SubnetMin",
                               "SubnetMin is not in the range of the Network")
        self.assertConfigError(cfg(Network="10.5.0.0/16", SubnetMax="10.4.255.0"),
                               "SubnetMax", "SubnetMax is not in the range of the Network")

    def test_min_max_boundary(self):
        """SubnetMin/SubnetMax not multiples of the subnet size."""
        self.assertConfigError(cfg(Network="10.5.0.0/16", SubnetMin="10.5.1.128"), "SubnetMin",
                               "SubnetMin is not on a SubnetLen boundary: 10.5.1.128")
        self.assertConfigError(cfg(Network="10.5.0.0/16", SubnetMax="10.5.9.1"), "SubnetMax",
                               "SubnetMax is not on a SubnetLen boundary: 10.5.9.1")

    def test_min_max_types(self):
        """SubnetMin/SubnetMax must be IPv4 address strings."""
        for value in (1, "10.5.1", "fd00::1", "10.5.1.0/24", ["10.5.1.0"]):
            self.assertConfigError(cfg(Network="10.5.0.0/16", SubnetMin=value), "SubnetMin",
                                   "IPv4 address")
            self.assertConfigError(cfg(Network="10.5.0.0/16", SubnetMax=value), "SubnetMax",
                                   "IPv4 address")

    def test_backend(self):
        """Backend must be an object with a string Type; the Type is lower-cased."""
        ok = parse_config(cfg(Network="10.5.0.0/16", Backend={"Type": "Host-GW"}))
        self.assertEqual((ok.backend_type, ok.backend), ("host-gw", {"Type": "Host-GW"}))
        for value in ({}, {"Port": 8285}, {"Type": ""}, None):
            self.assertConfigError(cfg(Network="10.5.0.0/16", Backend=value), "Backend",
                                   "Backend has no Type")
        for value in ("udp", [], 3):
            self.assertConfigError(cfg(Network="10.5.0.0/16", Backend=value), "Backend",
                                   "JSON object")
        self.assertConfigError(cfg(Network="10.5.0.0/16", Backend={"Type": 1}), "Backend",
                               "string")


@st.composite
def networks(draw):
    prefix = draw(st.integers(min_value=1, max_value=28))
    address = draw(st.integers(min_value=0, max_value=2 ** 32 - 1))
    return IPv4Network((address, prefix), strict=False)


class PropertyTests(TestCase):
    """For any valid network and length, the range is aligned and inside the network."""

    @given(networks(), st.data())
    def test_range_aligned_and_inside(self, network, data):
        """Defaults (or explicit SubnetLen) give an aligned [min, max] inside the Network."""
        subnet_len = data.draw(st.one_of(st.just(0), st.integers(network.prefixlen + 2, 30)))
        c = parse_config(cfg(Network=str(network), SubnetLen=subnet_len))
        if subnet_len:
            self.assertEqual(c.subnet_len, subnet_len)
        else:
            self.assertEqual(c.subnet_len, 24 if network.prefixlen <= 22
                             else network.prefixlen + 2)
        size = c.subnet_size
        for address in (c.subnet_min, c.subnet_max):
            self.assertIn(address, c.network)
            self.assertEqual(int(address) % size, 0)
        self.assertEqual(int(c.subnet_min), int(network.network_address) + size)
        self.assertEqual(int(c.subnet_max), int(network.broadcast_address) + 1 - size)
        self.assertLess(c.subnet_min, c.subnet_max)

    @given(networks(), st.data())
    def test_explicit_min(self, network, data):
        """An explicit SubnetMin is accepted exactly when inside and aligned."""
        address = data.draw(st.one_of(
            st.integers(0, 2 ** 32 - 1),
            st.integers(int(network.network_address), int(network.broadcast_address))))
        text = cfg(Network=str(network), SubnetMin=str(IPv4Address(address)))
        size = 2 ** (32 - parse_config(cfg(Network=str(network))).subnet_len)
        if address == 0:
            self.assertEqual(parse_config(text).subnet_min, network.network_address + size)
        elif IPv4Address(address) not in network or address % size:
            self.assertEqual(self.assertRaises(ConfigError, parse_config, text).key,
                             "SubnetMin")
        else:
            self.assertEqual(parse_config(text).subnet_min, IPv4Address(address))
