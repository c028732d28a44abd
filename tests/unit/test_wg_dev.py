"""
The wireguard device layer: the key file rules (flannel_tw.backend.wireguard.key), the
wireguard-go supervisor with a fake process and a Clock (userspace), the kernel driver's
netlink calls against a fake (kernel), and open_device's choice (device).
"""
import base64
import os
import stat
import tempfile

from twisted.trial import unittest

from flannel_tw.backend.wireguard import key as wgkey
from flannel_tw.backend.wireguard.key import KeyFileError, PrivateKey


class KeyPathTests(unittest.TestCase):
    def test_beside_the_subnet_file(self):
        self.assertEqual(wgkey.key_path("/run/flannel/subnet.env", environ={}),
                         "/run/flannel/wgkey")
        self.assertEqual(wgkey.key_path("/run/h1/subnet.env", environ={}), "/run/h1/wgkey")

    def test_env_wins(self):
        self.assertEqual(wgkey.key_path("/run/flannel/subnet.env",
                                        environ={"WIREGUARD_KEY_FILE": "/etc/wg/k"}),
                         "/etc/wg/k")

    def test_empty_env_is_unset(self):
        self.assertEqual(wgkey.key_path("/run/flannel/subnet.env",
                                        environ={"WIREGUARD_KEY_FILE": ""}),
                         "/run/flannel/wgkey")


class KeyFileTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="wgkey")
        self.addCleanup(self._rm, self.dir)

    def _rm(self, d):
        for root, dirs, files in os.walk(d, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for x in dirs:
                os.rmdir(os.path.join(root, x))
        os.rmdir(d)

    def test_generated_once_0600_base64_no_newline(self):
        old = os.umask(0)
        try:
            path = os.path.join(self.dir, "wgkey")
            k = wgkey.load_or_create(path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 44)
        self.assertFalse(data.endswith(b"\n"))
        self.assertEqual(base64.b64decode(data), k.raw)
        self.assertEqual(os.listdir(self.dir), ["wgkey"])     # no temp file left

    def test_reused_across_restarts(self):
        path = os.path.join(self.dir, "wgkey")
        first = wgkey.load_or_create(path)
        self.assertEqual(wgkey.load_or_create(path), first)
        self.assertEqual(wgkey.load_or_create(path).public, first.public)

    def test_a_key_written_by_wg_genkey_with_newline_is_read(self):
        path = os.path.join(self.dir, "wgkey")
        k = PrivateKey.generate()
        with open(path, "w") as f:
            f.write(wgkey.encode(k.raw) + "\n")
        self.assertEqual(wgkey.load_or_create(path), k)

    def test_two_subnet_dirs_two_keys(self):
        a = wgkey.load_or_create(wgkey.key_path(os.path.join(self.dir, "h1", "subnet.env"), {}))
        b = wgkey.load_or_create(wgkey.key_path(os.path.join(self.dir, "h2", "subnet.env"), {}))
        self.assertNotEqual(a.public, b.public)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "h1", "wgkey")))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "h2", "wgkey")))

    def test_corrupt_file_is_an_error_and_kept(self):
        path = os.path.join(self.dir, "wgkey")
        for junk in [b"", b"not base64!", base64.b64encode(b"x" * 31), b"\xff" * 44,
                     b"A" * 10000]:
            with open(path, "wb") as f:
                f.write(junk)
            e = self.assertRaises(KeyFileError, wgkey.load_or_create, path)
            self.assertIn(path, str(e))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), junk)

    def test_unreadable_file_is_an_error(self):
        e = self.assertRaises(KeyFileError, wgkey.load_or_create, self.dir)   # a directory
        self.assertIn("cannot read", str(e))

    def test_unwritable_directory_is_an_error(self):
        blocker = os.path.join(self.dir, "file")
        open(blocker, "w").close()
        self.assertRaises(KeyFileError, wgkey.load_or_create, os.path.join(blocker, "wgkey"))

    def test_private_key_never_shown(self):
        k = PrivateKey.generate()
        for text in (repr(k), str(k), "%s" % (k,), repr([k])):
            self.assertNotIn(wgkey.encode(k.raw), text)
            self.assertNotIn(k.raw.hex(), text)
            self.assertIn(wgkey.encode(k.public), text)

    def test_public_key_matches_wg(self):
        # `echo <private> | wg pubkey` for the fixture key of wireguard's own docs
        private = base64.b64decode("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
        self.assertEqual(wgkey.encode(wgkey.public_key(private)),
                         "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")

    def test_decode(self):
        self.assertEqual(wgkey.decode(wgkey.encode(b"\x01" * 32)), b"\x01" * 32)
        for bad in ["", "abc", "!!!!", wgkey.encode(b"x" * 33), None, "é" * 44]:
            self.assertRaises(ValueError, wgkey.decode, bad)
