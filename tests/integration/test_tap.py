"""``twistd flannel`` options: flanneld's flags, defaults, FLANNELD_* variables, errors.

The integration tests (TwistdProcessTests); the whole description is in tests/unit/test_tap.py."""

import os
import subprocess
import sys

from twisted.trial import unittest


class TwistdProcessTests(unittest.TestCase):
    """The plugin as users run it: ``twistd flannel ...`` in a child process."""

    def twistd(self, *args, env=None):
        full = dict(os.environ, **(env or {}))
        return subprocess.run(
            [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
             "from twisted.scripts.twistd import run; run()"] + list(args),
            capture_output=True, text=True, timeout=60, env=full)

    def test_version_goes_to_stderr_exit_0(self):
        p = self.twistd("flannel", "--version")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("flannel-tw", p.stderr)

    def test_venv_twistd_takes_flanneld_v(self):
        """The installed twistd script with glog's -v=10 / --v=10 (not taken for --version)."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.assertTrue(os.path.exists(twistd), twistd)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)    # this tree, not the venv's installed copy
        for flag in ("-v=10", "--v=10"):
            p = subprocess.run([twistd, "flannel", flag, "--version"], capture_output=True,
                               text=True, timeout=60, env=env, cwd="/")
            self.assertEqual((p.returncode, p.stdout), (0, ""), (flag, p.stderr))
            self.assertRegex(p.stderr, r"^flannel-tw \S+\n$")

    def test_unknown_flag_exits_non_zero_naming_it(self):
        p = self.twistd("-n", "flannel", "--bogus-flag")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("bogus-flag", p.stderr + p.stdout)

    def test_bad_env_exits_non_zero_naming_it(self):
        p = self.twistd("-n", "flannel", env={"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "0"})
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("subnet-lease-renew-margin", p.stderr + p.stdout)

    def test_help_lists_every_flanneld_flag(self):
        p = self.twistd("flannel", "--help")
        for flag in ("--etcd-endpoints", "--etcd-prefix", "--etcd-keyfile", "--etcd-certfile",
                     "--etcd-cafile", "--etcd-username", "--etcd-password", "--iface",
                     "--iface-regex", "--subnet-file", "--public-ip",
                     "--subnet-lease-renew-margin", "--ip-masq", "--healthz-ip",
                     "--healthz-port", "--version"):
            self.assertIn(flag + (" " if flag in ("--ip-masq", "--version") else "="),
                          p.stdout)
