"""What users install, not the checkout: the wheel and the sdist built from this tree,

The integration tests (ArchiveTests); the whole description is in tests/lab/test_install.py."""

import glob
import os
import sys
import tarfile
import zipfile

from twisted.trial import unittest

from flannel_tw.testing.install_fixtures import ROOT, _Built, _run


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
        self.assertEqual(names, ["cryptography", "prometheus-client", "pyroute2",
                                 "python-pytun", "treq", "twisted", "zope.interface"])
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
        self.assertIn("tests/integration/test_install.py", rel)
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
