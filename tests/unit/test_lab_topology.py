"""Tests for flannel_tw.tools.lab.topology on real kernels: namespaces, a bridge, veths.

The unit tests (PureTests); the whole description is in tests/lab/test_lab_topology.py."""

from twisted.trial import unittest

from flannel_tw.tools.lab.topology import cleanup_stale, parse_subnet_env


class PureTests(unittest.TestCase):
    def test_parse_subnet_env(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\nFLANNEL_NETWORK=10.5.0.0/16\n"
                    "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1472\n"
                    "FLANNEL_IPMASQ=false\n\n")
        self.assertEqual(parse_subnet_env(path), {
            "FLANNEL_NETWORK": "10.5.0.0/16", "FLANNEL_SUBNET": "10.5.72.1/24",
            "FLANNEL_MTU": "1472", "FLANNEL_IPMASQ": "false"})

    def test_cleanup_stale_needs_prefix(self):
        self.assertRaises(ValueError, cleanup_stale, "")
