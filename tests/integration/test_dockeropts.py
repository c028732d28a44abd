"""Tests for flannel_tw.tools.dockeropts: ``flannel-tw docker-opts`` with the flags and
output of mk-docker-opts.sh (flannel-compat.md section 5)."""

import io
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from flannel_tw.tools import dockeropts


SAMPLE = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
          "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
EXPECTED = ('DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
            'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
            'DOCKER_OPT_MTU="--mtu=1472"\n'
            'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')


class DockerOptsTests(TestCase):
    """main() against files in a temporary directory."""

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.env = os.path.join(self.dir, "subnet.env")
        self.out = os.path.join(self.dir, "docker", "opts.env")
        self.write(self.env, SAMPLE)
        self.patch(os, "environ", {k: v for k, v in os.environ.items()
                                   if k not in ("DOCKER_OPTS", "DOCKER_NETWORK_OPTIONS")})

    def write(self, path, text):
        with open(path, "w") as f:
            f.write(text)

    def read(self, path):
        with open(path) as f:
            return f.read()

    def run_main(self, *args):
        stdout, stderr = io.StringIO(), io.StringIO()
        code = dockeropts.main(["-f", self.env, "-d", self.out] + list(args), stdout, stderr)
        self.assertEqual(stdout.getvalue(), "")
        return code, stderr.getvalue()

    def test_sample(self):
        """The sheet's verified output, byte for byte, mode 0644."""
        self.assertEqual(self.run_main(), (0, ""))
        self.assertEqual(self.read(self.out), EXPECTED)
        self.assertEqual(os.stat(self.out).st_mode & 0o777, 0o644)

    def test_individual(self):
        """-i: only the DOCKER_OPT_* vars."""
        self.assertEqual(self.run_main("-i")[0], 0)
        self.assertEqual(self.read(self.out), "".join(EXPECTED.splitlines(True)[:3]))

    def test_combined_key_masq(self):
        """-c -k KEY -m, combined as one argument where possible."""
        self.assertEqual(self.run_main("-cmk", "DOCKER_NETWORK_OPTIONS")[0], 0)
        self.assertEqual(self.read(self.out),
                         'DOCKER_NETWORK_OPTIONS=" --bip=10.1.74.1/24 --mtu=1472"\n')

    def test_both_flags(self):
        """-i -c is the same as neither."""
        self.assertEqual(self.run_main("-i", "-c")[0], 0)
        self.assertEqual(self.read(self.out), EXPECTED)

    def test_existing_value(self):
        """The combined var starts from the environment's value, as the script does."""
        os.environ["DOCKER_OPTS"] = "--debug"
        self.assertEqual(self.run_main("-c")[0], 0)
        self.assertEqual(self.read(self.out),
                         'DOCKER_OPTS="--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')

    def test_overwrites(self):
        """An earlier output file is replaced, not appended to."""
        os.makedirs(os.path.dirname(self.out))
        self.write(self.out, "OLD=1\n")
        self.assertEqual(self.run_main()[0], 0)
        self.assertEqual(self.read(self.out), EXPECTED)

    def assertFailsUntouched(self, *args, mentions=()):
        os.makedirs(os.path.dirname(self.out), exist_ok=True)
        self.write(self.out, "OLD=1\n")
        code, err = self.run_main(*args)
        self.assertEqual(code, 1)
        for text in mentions:
            self.assertIn(text, err)
        self.assertEqual(self.read(self.out), "OLD=1\n")
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.out))), ["opts.env"])

    def test_missing_file(self):
        """A missing subnet.env: exit 1, the file named, output untouched."""
        os.remove(self.env)
        self.assertFailsUntouched(mentions=(self.env, "no such file"))

    def test_malformed(self):
        """Malformed subnet.env lines or values: exit 1, output untouched."""
        for text, problem in (("garbage\n", "line 1"),
                              ("FLANNEL_MTU=1472\n", "FLANNEL_SUBNET"),
                              ("FLANNEL_SUBNET=10.1.74.1/24\n", "FLANNEL_MTU"),
                              (SAMPLE + "FLANNEL_MTU=big\n", "FLANNEL_MTU"),
                              (SAMPLE + "FLANNEL_IPMASQ=maybe\n", "FLANNEL_IPMASQ")):
            self.write(self.env, text)
            self.assertFailsUntouched(mentions=(self.env, problem))

    def test_usage(self):
        """A bad option, a missing argument, or a stray argument: usage, exit 1."""
        for args in (["-x"], ["-?"], ["-k"], ["extra"], ["--bogus"]):
            self.assertFailsUntouched(*args, mentions=("-k COMBINED-KEY",))

    def test_help_prints_usage_and_exits_0(self):
        """-h and --help (anywhere): the usage on stdout, exit 0, nothing read or written."""
        from flannel_tw.tools.cli import main
        for args in (["-h"], ["--help"], ["-f", "/nonexistent", "--help"], ["-c", "-h"]):
            stdout, stderr = io.StringIO(), io.StringIO()
            self.assertEqual(main(["docker-opts"] + args + ["-d", self.out], stdout, stderr),
                             0, (args, stderr.getvalue()))
            self.assertEqual((stdout.getvalue(), stderr.getvalue()), (dockeropts.USAGE, ""))
            self.assertIn("-k COMBINED-KEY", stdout.getvalue())
            self.assertFalse(os.path.exists(self.out))

    def test_help_from_the_installed_command(self):
        """The venv's flannel-tw script (this tree on its path): --help exits 0."""
        script = os.path.join(os.path.dirname(sys.executable), "flannel-tw")
        self.assertTrue(os.path.exists(script), script)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for flag in ("--help", "-h"):
            p = subprocess.run([script, "docker-opts", flag], capture_output=True, text=True,
                               timeout=60, env=dict(os.environ, PYTHONPATH=root), cwd="/")
            self.assertEqual((p.returncode, p.stderr), (0, ""), flag)
            self.assertTrue(p.stdout.startswith("usage: flannel-tw docker-opts"), p.stdout)

    def test_bad_key(self):
        """-k must be a shell variable name."""
        self.assertFailsUntouched("-k", "A B", mentions=("'A B'",))

    def test_unwritable_output(self):
        """The output path cannot be created: exit 1 with a message."""
        os.makedirs(self.out)
        code, err = self.run_main()
        self.assertEqual(code, 1)
        self.assertIn(self.out, err)

    def test_defaults(self):
        """The default paths, per the seed, also shown in the usage text."""
        self.assertEqual(dockeropts.DEFAULT_SUBNET_FILE, "/run/flannel/subnet.env")
        self.assertEqual(dockeropts.DEFAULT_DOCKER_ENV, "/run/flannel/flannel_docker_opts.env")
        self.assertIn(dockeropts.DEFAULT_DOCKER_ENV, dockeropts.USAGE)
