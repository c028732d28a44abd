"""
What users install, not the checkout: the wheel and the sdist built from this tree,
installed into a fresh virtualenv and run from C{/} (no checkout on any path).

- the wheel and the sdist hold C{twisted/plugins/flannel_plugin.py}, the tac files,
  the systemd units and the CNI shim, LICENSE, and every module of C{flannel_tw};
- a wheel built from the sdist holds the same files (what pip does with an sdist);
- in a fresh venv: C{twistd flannel --version}, C{python -m flannel_tw version},
  C{flannel-tw plugin-cache} (which leaves a current, readable Twisted plugin cache),
  and a daemon (C{twistd -n flannel}, alloc backend) against a real etcd in a lab
  namespace, until it writes subnet.env.

The fresh venv costs a pip install of the dependencies (from pip's cache when warm).
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile

from twisted.trial import unittest

from flannel_tw.lab import run as labrun
from flannel_tw.lab.topology import Lab, parse_subnet_env

ROOT = labrun.repo_root()
CONFIG = '{"Network": "10.8.0.0/16", "Backend": {"Type": "alloc"}}'

# Files a user's install must have, relative to site-packages (wheel) or the sdist root.
WHEEL_MUST_HAVE = [
    "twisted/plugins/flannel_plugin.py",
    "flannel_tw/__main__.py",
    "flannel_tw/tac/flannel.tac",
    "flannel_tw/tac/flannel-udp.tac",
    "flannel_tw/tac/flannel-vxlan.tac",
    "flannel_tw/deploy/systemd/flanneld.service",
    "flannel_tw/deploy/cni/flannel",
]
SDIST_MUST_HAVE = ["twisted/plugins/flannel_plugin.py", "tac/flannel.tac", "LICENSE",
                   "setup.cfg", "pyproject.toml", "README.rst",
                   "flannel_tw/deploy/systemd/flanneld.service"]


def _checkout_modules():
    """Every module of the package in this checkout, as paths relative to ROOT."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "flannel_tw")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                out.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return sorted(out)


def _clean_env():
    """The environment a user's shell has: no PYTHONPATH, no venv of ours on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _run(argv, timeout=600, **kw):
    kw.setdefault("cwd", "/")
    kw.setdefault("env", _clean_env())
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout, **kw)


class _Built:
    """The wheel and the sdist, built once per test run into one directory."""
    out = None
    wheel = None
    sdist = None
    error = None

    @classmethod
    def get(cls, testcase):
        if cls.out is None and cls.error is None:
            cls.out = os.path.abspath(testcase.mktemp())
            os.makedirs(cls.out)
            # Build from a copy: a build writes egg-info and build/ into its source
            # tree, and two test processes (trial -j) building one tree collide.
            src = os.path.join(cls.out, "src")
            shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
                ".git", ".venv", "_trial_temp*", "build", "dist", "*.egg-info",
                "__pycache__", ".hypothesis", "dropin.cache"))
            cp = _run([sys.executable, "-m", "build", "--sdist", "--wheel",
                       "--outdir", cls.out, src], timeout=600)
            if cp.returncode != 0:
                cls.error = "build failed:\n" + cp.stdout[-4000:]
            else:
                cls.wheel = glob.glob(os.path.join(cls.out, "*.whl"))[0]
                cls.sdist = glob.glob(os.path.join(cls.out, "*.tar.gz"))[0]
        if cls.error:
            testcase.fail(cls.error)
        return cls


class ArchiveTests(unittest.TestCase):
    def test_wheel_contents(self):
        names = set(zipfile.ZipFile(_Built.get(self).wheel).namelist())
        for path in WHEEL_MUST_HAVE + _checkout_modules():
            self.assertIn(path, names)
        self.assertTrue(any(n.endswith(".dist-info/licenses/LICENSE") or
                            n.endswith(".dist-info/LICENSE") for n in names), sorted(names))
        self.assertNotIn("twisted/plugins/dropin.cache", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)   # Twisted's own, never ours
        self.assertFalse([n for n in names if n.startswith("tests/")])

    def test_wheel_metadata(self):
        zf = zipfile.ZipFile(_Built.get(self).wheel)
        meta = zf.read([n for n in zf.namelist() if n.endswith(".dist-info/METADATA")][0])
        meta = meta.decode()
        requires = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
        names = sorted(r.split("[")[0].split(">")[0].split("=")[0].split(";")[0].strip().lower().replace("_", "-")
                       for r in requires)
        self.assertEqual(names, ["prometheus-client", "pyroute2", "python-pytun", "treq",
                                 "twisted", "zope.interface"])
        self.assertIn("pyroute2>=0.9", meta)     # netns.create_socket is new in 0.9
        self.assertIn("Classifier: Framework :: Twisted", meta)
        self.assertIn("License: Apache-2.0", meta)

    def test_sdist_contents_and_wheel_from_sdist(self):
        built = _Built.get(self)
        with tarfile.open(built.sdist) as tf:
            names = tf.getnames()
        top = names[0].split("/")[0]
        rel = {n[len(top) + 1:] for n in names if n.startswith(top + "/")}
        for path in SDIST_MUST_HAVE + _checkout_modules():
            self.assertIn(path, rel)
        self.assertIn("tests/test_install.py", rel)
        # pip builds a wheel from the sdist when no wheel is offered: same plugin
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        with tarfile.open(built.sdist) as tf:
            tf.extractall(work)
        cp = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                   "-w", work, os.path.join(work, top)])
        self.assertEqual(cp.returncode, 0, cp.stdout)
        wheel = glob.glob(os.path.join(work, "*.whl"))[0]
        self.assertIn("twisted/plugins/flannel_plugin.py", zipfile.ZipFile(wheel).namelist())


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
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise unittest.SkipTest("needs root and iproute2 to build a lab host namespace")
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


class ReadmeTests(unittest.TestCase):
    """README.rst is the package's long description: it must render cleanly (PyPI
    refuses a description with reST errors) and show the commands it promises."""

    def test_renders_without_warnings(self):
        import io
        import docutils.core
        warnings = io.StringIO()
        with open(os.path.join(ROOT, "README.rst")) as f:
            docutils.core.publish_string(f.read(), writer_name="null", settings_overrides={
                "report_level": 2, "halt_level": 5, "warning_stream": warnings})
        self.assertEqual(warnings.getvalue(), "")

    def test_top_commands(self):
        with open(os.path.join(ROOT, "README.rst")) as f:
            top = f.read()[:2000]
        self.assertIn("bash .ci/setup && .venv/bin/flannel-tw lab --hosts 3", top)
        self.assertIn("bash .ci/run", top)
        with open(os.path.join(ROOT, ".ci", "run")) as f:
            self.assertIn(".venv/bin/python -m twisted.trial", f.read())
