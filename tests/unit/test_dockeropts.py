"""Tests for flannel_tw.tools.dockeropts: ``flannel-tw docker-opts`` with the flags and

The unit tests (PropertyTests); the whole description is in tests/integration/test_dockeropts.py."""

import io
import os

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.tools import dockeropts


class PropertyTests(TestCase):
    """Any valid subnet.env gives the three options, in order, in the combined var."""

    @settings(max_examples=30)
    @given(st.integers(0, 2 ** 32 - 1), st.integers(1, 32), st.integers(1, 65535),
           st.booleans())
    def test_combined(self, address, prefix, mtu, masq):
        base = self.mktemp()
        os.makedirs(base)
        env, out = os.path.join(base, "s.env"), os.path.join(base, "o.env")
        subnet = "%d.%d.%d.%d/%d" % (*address.to_bytes(4, "big"), prefix)
        with open(env, "w") as f:
            f.write("FLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=%s\n"
                    % (subnet, mtu, "true" if masq else "false"))
        self.patch(os, "environ", {})
        code = dockeropts.main(["-c", "-f", env, "-d", out], io.StringIO(), io.StringIO())
        self.assertEqual(code, 0)
        with open(out) as f:
            self.assertEqual(f.read(), 'DOCKER_OPTS=" --bip=%s --ip-masq=%s --mtu=%d"\n'
                             % (subnet, "false" if masq else "true", mtu))
