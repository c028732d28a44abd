"""Tests for flannel_tw.tools.lab.topology on real kernels: namespaces, a bridge, veths.

The integration tests (LabRunPureTests); the whole description is in tests/lab/test_lab_topology.py."""

import subprocess
from ipaddress import IPv4Address

from twisted.trial import unittest


class LabRunPureTests(unittest.TestCase):
    """The ``flannel-tw lab`` command's pieces that need no kernel."""

    def test_daemon_argv(self):
        from flannel_tw.tools.lab import run
        argv = run.daemon_argv("/w", 2, "http://192.168.250.1:2379",
                               IPv4Address("192.168.250.12"), ip_masq=True)
        self.assertEqual(argv[:len(run.TWISTD)], run.TWISTD)
        self.assertEqual(argv[len(run.TWISTD):], [
            "--nodaemon", "--pidfile=", "--logfile=/w/h2.log", "flannel",
            "--etcd-endpoints=http://192.168.250.1:2379",
            "--iface=192.168.250.12", "--subnet-file=/w/h2/subnet.env", "--ip-masq"])

    def test_twistd_entry_point_runs(self):
        from flannel_tw.tools.lab import run
        out = subprocess.run(run.TWISTD + ["--help"], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Usage: twistd", out.stdout)

    def test_render_matrix(self):
        from flannel_tw.tools.lab import run
        results = {("c1", "c2"): True, ("c2", "c1"): False,
                   ("h1", "c2"): True, ("h2", "c1"): True}
        self.assertEqual(run.render_matrix([1, 2], results).splitlines(), [
            "from\\to   c1   c2",
            "c1         -    \u2713",
            "c2         \u2717    -",
            "h1         -    \u2713",
            "h2         \u2713    -"])

    def test_not_root(self):
        import contextlib
        import io
        from flannel_tw.tools.lab import run
        self.patch(run.os, "geteuid", lambda: 1000)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(run.main(["--hosts", "2"]), 2)
            self.assertEqual(run.main(["down"]), 2)
        self.assertIn("needs root", err.getvalue())

    def test_parse_errors(self):
        from flannel_tw.tools.lab import run
        self.assertRaises(SystemExit, run.main, ["--backend", "nope"])
        self.assertRaises(SystemExit, run.main, ["sideways"])
        self.assertRaises(SystemExit, run.main, ["down", "a", "b"])
