"""
bench.reference: the benchmark's two reference udp data paths (flanneld's proxy design
in C, and the same loop in Python) carry a container's traffic across the lab, both
ways and intact, and the C one says why when it cannot be built.
"""
import os
import tempfile
import shutil

from twisted.trial import unittest

from bench import reference
from bench.run import new_lab, write_env
from flannel_tw.testing import skips


class ReferenceTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        skips.require(root=True, tun=True, tools=("ip", "ping"))
        self.workdir = tempfile.mkdtemp(prefix="flannel-tw-ref-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.lab = new_lab(self.workdir)
        self.addCleanup(self.lab.teardown)

    def carries(self, kind):
        pids = reference.setup(self.lab, self.workdir, kind, write_env)
        self.assertEqual(len(pids), 2)
        c1, c2 = self.lab.containers[1], self.lab.containers[2]
        self.assertTrue(self.lab.ping(c1.ns, c2.addr, count=3, timeout=2))
        self.assertTrue(self.lab.ping(c2.ns, c1.addr, count=3, timeout=2))
        # a payload near the MTU (1472) arrives whole: 1444 bytes of ICMP data
        cp = self.lab.exec(c1.ns, ["ping", "-n", "-c", "2", "-s", "1444", "-M", "do",
                                   "-p", "a5", str(c2.addr)], check=False)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertIn("1452 bytes from %s" % c2.addr, cp.stdout)

    def test_python_loop(self):
        self.carries("ref-py-loop")

    def test_c_proxy(self):
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            self.assertRaises(reference.Unavailable, reference.build, "ref-c-proxy",
                              self.workdir)
            raise unittest.SkipTest("no C compiler here: the reference is 'not available'")
        self.carries("ref-c-proxy")
        self.assertTrue(os.access(os.path.join(self.workdir, "refproxy"), os.X_OK))

    def test_c_proxy_without_a_compiler_is_unavailable(self):
        old = os.environ.get("PATH", "")
        os.environ["PATH"] = self.workdir        # an empty directory: no cc, no gcc
        self.addCleanup(os.environ.__setitem__, "PATH", old)
        e = self.assertRaises(reference.Unavailable, reference.build, "ref-c-proxy",
                              self.workdir)
        self.assertIn("no C compiler", str(e))
