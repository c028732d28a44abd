"""What users install, not the checkout: the wheel and the sdist built from this tree,
installed into a fresh virtualenv and run from C{/} (no checkout on any path).

- the wheel and the sdist hold C{twisted/plugins/flannel_plugin.py}, the tac files,
  the systemd units and the CNI shim, LICENSE, and every module of C{flannel_tw};
- a wheel built from the sdist holds the same files (what pip does with an sdist);
- in a fresh venv: C{twistd flannel --version}, C{python -m flannel_tw version},
  C{flannel-tw plugin-cache} (which leaves a current, readable Twisted plugin cache),
  and a daemon (C{twistd -n flannel}, alloc backend) against a real etcd in a lab
  namespace, until it writes subnet.env.

The fresh venv costs a pip install of the dependencies (from pip's cache when warm)."""

import glob
import os
import sys
import time

from twisted.trial import unittest

from flannel_tw.tools.lab import run as labrun
from flannel_tw.tools.lab.topology import Lab, parse_subnet_env
from flannel_tw.testing.install_fixtures import _Built, _clean_env, _run
from flannel_tw.testing import skips


CONFIG = '{"Network": "10.8.0.0/16", "Backend": {"Type": "alloc"}}'


class FreshVenvTests(unittest.TestCase):
    """The wheel in a fresh venv, every command started from C{/}."""

    venv = None

    @classmethod
    def _venv(cls, testcase):
        if cls.venv is None:
            wheel = _Built.get(testcase).wheel
            venv = os.path.abspath(testcase.mktemp())
            cp = _run([sys.executable, "-m", "venv", venv])
            testcase.assertEqual(cp.returncode, 0, cp.stdout)
            cp = _run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                       "--disable-pip-version-check", wheel], timeout=900)
            testcase.assertEqual(cp.returncode, 0, cp.stdout)
            cls.venv = venv
        return cls.venv

    def bin(self, name):
        return os.path.join(self._venv(self), "bin", name)

    def test_twistd_flannel_version(self):
        cp = _run([self.bin("twistd"), "flannel", "--version"])
        self.assertEqual(cp.returncode, 0, cp.stdout)
        self.assertIn("flannel-tw ", cp.stdout)
        self.assertNotIn("Unknown command", cp.stdout)
        cp = _run([self.bin("twistd"), "--help"])
        self.assertIn("flannel", cp.stdout)

    def test_python_m_and_console_script(self):
        cp = _run([self.bin("python"), "-m", "flannel_tw", "version"])
        self.assertEqual(cp.returncode, 0, cp.stdout)
        self.assertRegex(cp.stdout, r"^flannel-tw \d")
        cp = _run([self.bin("flannel-tw"), "--help"])
        self.assertEqual(cp.returncode, 0, cp.stdout)
        # what runs is the venv's copy, not this checkout's
        cp = _run([self.bin("python"), "-c",
                   "import flannel_tw, twisted.plugins.flannel_plugin as p; "
                   "print(flannel_tw.__file__); print(p.__file__)"])
        for line in cp.stdout.split():
            self.assertTrue(line.startswith(self._venv(self) + "/lib/"), cp.stdout)

    def test_plugin_cache_is_current_and_quiet(self):
        cp = _run([self.bin("flannel-tw"), "plugin-cache"])
        self.assertEqual(cp.returncode, 0, cp.stdout)
        plugins = glob.glob(os.path.join(self._venv(self), "lib", "python*", "site-packages",
                                         "twisted", "plugins"))[0]
        cache = os.path.join(plugins, "dropin.cache")
        self.assertTrue(os.path.exists(cache))
        self.assertGreaterEqual(os.path.getmtime(cache),
                                os.path.getmtime(os.path.join(plugins, "flannel_plugin.py")))
        # a later run (as any user) finds the cache current: nothing to rebuild, no warning
        before = os.path.getmtime(cache)
        cp = _run([self.bin("twistd"), "flannel", "--version"])
        self.assertNotIn("dropin.cache", cp.stdout)
        self.assertEqual(os.path.getmtime(cache), before)

    def test_daemon_from_wheel_writes_subnet_env(self):
        skips.require_lab()
        twistd = self.bin("twistd")
        lab = Lab()
        self.addCleanup(lab.teardown)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lab.add_switch()
        lab.add_host(1)
        url = labrun.start_etcd(lab, workdir, CONFIG)
        subnet_file = os.path.join(workdir, "run", "subnet.env")
        log = os.path.join(workdir, "daemon.out")
        proc = lab.spawn(lab.host_ns(1), [
            twistd, "--nodaemon", "--pidfile=", "flannel", "--etcd-endpoints=" + url,
            "--iface=%s" % lab.host_ip(1), "--subnet-file=" + subnet_file],
            log, env=_clean_env(), cwd="/")
        deadline = time.monotonic() + 60
        while not os.path.exists(subnet_file):
            if proc.poll() is not None:
                self.fail("daemon exited with %s:\n%s" % (proc.returncode, open(log).read()))
            if time.monotonic() > deadline:
                self.fail("no subnet.env after 60 s:\n%s" % open(log).read())
            time.sleep(0.1)
        env = parse_subnet_env(subnet_file)
        self.assertEqual(env["FLANNEL_NETWORK"], "10.8.0.0/16")
        self.assertTrue(env["FLANNEL_SUBNET"].startswith("10.8."), env)
