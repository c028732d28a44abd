"""flannel_tw.tools.install (``flannel-tw install-units``): the bin directory of the running

The integration tests (MainTests); the whole description is in tests/unit/test_install_units.py."""

import io
import os
import subprocess
import sys

from twisted.trial import unittest

from flannel_tw.tools.cli import main as cli_main
from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing.install_units_fixtures import _exe


class MainTests(unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.bin = os.path.join(os.path.abspath(self.mktemp()), "bin")
        for n in ("twistd", "flannel-tw"):
            _exe(os.path.join(self.bin, n))

    def run_main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(["install-units", "--root", self.root, "--bin-dir", self.bin]
                        + list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    def test_tells_what_it_wrote(self):
        code, out, err = self.run_main("--cni-dir", "/opt/cni/bin")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("commands from %s" % self.bin, out)
        for p in ("etc/systemd/system/flanneld.service", "etc/flannel/options.env",
                  "opt/cni/bin/flannel"):
            self.assertIn("written", out)
            self.assertIn(os.path.join(self.root, p), out)
        with open(os.path.join(self.root, "opt/cni/bin/flannel")) as f:
            self.assertIn("exec %s/flannel-tw cni" % self.bin, f.read())
        code, out, err = self.run_main("--cni-dir", "/opt/cni/bin")
        self.assertEqual(code, 0)
        self.assertNotIn("written", out)
        self.assertEqual(out.count("unchanged"), 4)

    def test_dry_run(self):
        code, out, _err = self.run_main("--dry-run", "--tls")
        self.assertEqual(code, 0)
        self.assertIn("would be written", out)
        self.assertFalse(os.path.exists(self.root))

    def test_tls_warns_about_an_http_endpoint_in_options_env(self):
        options = os.path.join(self.root, "etc", "flannel", "options.env")
        os.makedirs(os.path.dirname(options))
        with open(options, "w") as f:
            f.write("FLANNELD_ETCD_ENDPOINTS=http://10.0.0.1:2379\n")
        code, out, err = self.run_main("--tls")
        self.assertEqual(code, 0)
        self.assertIn("kept", out)
        self.assertIn("FLANNELD_ETCD_ENDPOINTS=http://10.0.0.1:2379", err)
        self.assertIn("wins over 50-ssl.conf", err)

    def test_errors(self):
        code, _out, err = self.run_main("--dest", "relative/dir")
        self.assertEqual(code, 2)
        self.assertIn("--dest must be an absolute path", err)
        out, err = io.StringIO(), io.StringIO()
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        self.assertEqual(cli_main(["install-units", "--root", self.root, "--bin-dir", empty],
                                  out, err), 1)
        self.assertIn("holds no executable twistd and flannel-tw", err.getvalue())
        self.assertFalse(os.path.exists(self.root), "nothing written")
        self.assertEqual(cli_main(["install-units", "--bogus"], out, err), 2)

    def test_as_a_process_from_this_install(self):
        """``python -m flannel_tw install-units`` finds this venv's bin from sys.executable."""
        cp = subprocess.run([sys.executable, "-m", "flannel_tw", "install-units", "--root",
                             self.root, "--network-config"], cwd=repo_root(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        bin_dir = os.path.dirname(sys.executable)
        with open(os.path.join(self.root, "etc/systemd/system/flanneld.service")) as f:
            self.assertIn("ExecStart=%s/twistd --nodaemon" % bin_dir, f.read())
        with open(os.path.join(self.root, "etc/flannel/network.json")) as f:
            self.assertIn("10.1.0.0/16", f.read())
