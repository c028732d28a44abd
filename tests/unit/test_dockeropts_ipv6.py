"""``flannel-tw docker-opts`` with a dual-stack subnet.env (FLANNEL_IPV6_SUBNET): Docker's
--ipv6 --fixed-cidr-v6 beside mk-docker-opts.sh's options; hostile v6 values refused."""

import io
import os

from twisted.trial.unittest import TestCase

from flannel_tw.tools import dockeropts

V4 = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
V6 = "FLANNEL_IPV6_NETWORK=fd00:10:5::/48\nFLANNEL_IPV6_SUBNET=%s\n"
TAIL = "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


class DualStackDockerOptsTests(TestCase):
    def run_opts(self, text, *flags):
        base = self.mktemp()
        os.makedirs(base)
        env, out = os.path.join(base, "subnet.env"), os.path.join(base, "docker.env")
        with open(env, "w") as f:
            f.write(text)
        with open(out, "w") as f:
            f.write("KEEP=1\n")
        self.patch(os, "environ", {})
        err = io.StringIO()
        code = dockeropts.main(list(flags) + ["-f", env, "-d", out], io.StringIO(), err)
        with open(out) as f:
            return code, f.read(), err.getvalue()

    def test_dual_stack(self):
        code, text, _ = self.run_opts(V4 + V6 % "fd00:10:5:48::1/64" + TAIL)
        self.assertEqual(code, 0)
        self.assertEqual(text.splitlines(), [
            'DOCKER_OPT_BIP="--bip=10.5.72.1/24"',
            'DOCKER_OPT_FIXED_CIDR_V6="--fixed-cidr-v6=fd00:10:5:48::/64"',
            'DOCKER_OPT_IPMASQ="--ip-masq=false"',
            'DOCKER_OPT_IPV6="--ipv6"',
            'DOCKER_OPT_MTU="--mtu=1450"',
            'DOCKER_OPTS=" --bip=10.5.72.1/24 --fixed-cidr-v6=fd00:10:5:48::/64 '
            '--ip-masq=false --ipv6 --mtu=1450"',
        ])

    def test_ipv4_only_unchanged(self):
        code, text, _ = self.run_opts(V4 + TAIL, "-c")
        self.assertEqual((code, text), (0, 'DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=false '
                                           '--mtu=1450"\n'))
        # an empty FLANNEL_IPV6_SUBNET is no v6 subnet
        code, text, _ = self.run_opts(V4 + "FLANNEL_IPV6_SUBNET=\n" + TAIL, "-c")
        self.assertNotIn("ipv6", text)

    def test_upper_case_and_long_prefixes(self):
        code, text, _ = self.run_opts(V4 + V6 % "FD00:10:5:48:0:0:a:1/112" + TAIL, "-i")
        self.assertEqual(code, 0)
        self.assertIn('DOCKER_OPT_FIXED_CIDR_V6="--fixed-cidr-v6=fd00:10:5:48::a:0/112"', text)

    def test_hostile_v6_subnet_refused(self):
        for bad in ['fd00::1/64" --insecure-registry=0.0.0.0/0 "', "fd00::1/64 --ipv6",
                    "fd00::1", "fd00::1/129", "10.5.72.1/24", "fe80::1%eth0/64",
                    "fd00::1/64\\n", "$(reboot)", "fd00:::1/64"]:
            code, text, err = self.run_opts(V4 + V6 % bad + TAIL)
            self.assertEqual(code, 1, bad)
            self.assertEqual(text, "KEEP=1\n", bad)        # the output left as it was
            self.assertIn("FLANNEL_IPV6_SUBNET", err, bad)
            self.assertIn("is not an IPv6 address with a /prefix", err, bad)
