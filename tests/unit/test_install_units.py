"""flannel_tw.tools.install (``flannel-tw install-units``): the bin directory of the running
install, the rendering of the shipped units with its absolute paths, atomic and
idempotent writes, the operator's options.env kept, dry runs, and the command line
(in-process and as a process)."""

import io
import os

from twisted.trial import unittest

from flannel_tw.tools import install
from flannel_tw.tools.cli import main as cli_main
from flannel_tw.testing.install_units_fixtures import _exe


def tree(root):
    """{relative path: (text, mode)} of every file under root."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p) as f:
                out[os.path.relpath(p, root)] = (f.read(), os.stat(p).st_mode & 0o7777)
    return out


class FindBinDirTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())

    def test_directory_of_the_interpreter(self):
        venv = os.path.join(self.dir, "venv")
        for n in ("python", "twistd", "flannel-tw"):
            _exe(os.path.join(venv, "bin", n))
        # the interpreter path is not resolved (a venv's python is often a symlink out)
        self.assertEqual(install.find_bin_dir(os.path.join(venv, "bin", "python"), "/nowhere",
                                              "/nowhere/bin"),
                         os.path.join(venv, "bin"))

    def test_prefix_bin_when_the_interpreter_is_elsewhere(self):
        prefix = os.path.join(self.dir, "prefix")
        for n in ("twistd", "flannel-tw"):
            _exe(os.path.join(prefix, "bin", n))
        self.assertEqual(install.find_bin_dir("/usr/bin/python3", prefix, "/nowhere/bin"),
                         os.path.join(prefix, "bin"))

    def test_scripts_directory(self):
        """pip with Debian's python puts the commands in /usr/local/bin, not beside python."""
        scripts = os.path.join(self.dir, "local", "bin")
        for n in ("twistd", "flannel-tw"):
            _exe(os.path.join(scripts, n))
        self.assertEqual(install.find_bin_dir("/usr/bin/python3", "/usr", scripts), scripts)

    def test_missing_entry_point_is_an_error(self):
        venv = os.path.join(self.dir, "venv")
        _exe(os.path.join(venv, "bin", "twistd"))     # no flannel-tw
        e = self.assertRaises(install.InstallError, install.find_bin_dir,
                              os.path.join(venv, "bin", "python"), venv, "/nowhere/bin")
        self.assertIn("twistd and flannel-tw", str(e))
        self.assertIn(os.path.join(venv, "bin"), str(e))
        self.assertIn("--bin-dir", str(e))

    def test_this_install(self):
        """The tests run from the venv .ci/setup made: its bin holds both commands."""
        d = install.find_bin_dir()
        for n in install.ENTRY_POINTS:
            self.assertTrue(os.access(os.path.join(d, n), os.X_OK), n)


class RenderTests(unittest.TestCase):
    def test_every_command_path_is_rewritten(self):
        text = install.shipped("systemd", "flanneld.service")
        self.assertIn("ExecStart=/opt/flannel-tw/bin/twistd ", text)
        out = install.render(text, "/srv/ft/venv/bin")
        self.assertIn("ExecStart=/srv/ft/venv/bin/twistd --nodaemon", out)
        self.assertNotIn("/opt/flannel-tw/bin/", out)
        shim = install.render(install.shipped("cni", "flannel"), "/srv/ft/venv/bin/")
        self.assertIn('exec /srv/ft/venv/bin/flannel-tw cni "$@"', shim)

    def test_relative_bin_dir_refused(self):
        self.assertRaises(install.InstallError, install.render, "x", "venv/bin")

    def test_plan_chooses_files(self):
        paths = [i.path for i in install.plan("/v/bin")]
        self.assertEqual(paths, ["/etc/systemd/system/flanneld.service",
                                 "/etc/systemd/system/flanneld.service.d/60-docker-opts.conf",
                                 "/etc/flannel/options.env"])
        items = install.plan("/v/bin", dest="/d", tls=True, network_config=True, docker=True,
                             dockerd="/usr/sbin/dockerd", cni_dir="/opt/cni/bin",
                             cni_conf_dir="/etc/cni/net.d")
        by_path = {i.path: i for i in items}
        self.assertEqual(sorted(by_path), sorted([
            "/d/flanneld.service", "/d/flanneld.service.d/60-docker-opts.conf",
            "/d/flanneld.service.d/50-ssl.conf", "/d/flanneld.service.d/50-network-config.conf",
            "/d/docker.service.d/40-flannel.conf", "/etc/flannel/options.env",
            "/etc/flannel/network.json", "/opt/cni/bin/flannel",
            "/etc/cni/net.d/10-flannel.conflist"]))
        self.assertIn("ExecStart=/usr/sbin/dockerd $DOCKER_OPTS",
                      by_path["/d/docker.service.d/40-flannel.conf"].text)
        self.assertIn("ExecStartPre=/v/bin/flannel-tw config set",
                      by_path["/d/flanneld.service.d/50-network-config.conf"].text)
        self.assertEqual(by_path["/opt/cni/bin/flannel"].mode, 0o755)
        kept = sorted(p for p, i in by_path.items() if i.keep_existing)
        self.assertEqual(kept, ["/etc/cni/net.d/10-flannel.conflist",
                                "/etc/flannel/network.json", "/etc/flannel/options.env"])


class ApplyTests(unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.items = install.plan("/v/bin", tls=True, cni_dir="/opt/cni/bin")

    def path(self, p):
        return os.path.join(self.root, p.lstrip("/"))

    def test_writes_then_changes_nothing(self):
        done = install.apply(self.items, root=self.root)
        self.assertEqual([s for _, s in done], ["written"] * len(self.items))
        first = tree(self.root)
        self.assertEqual(first["opt/cni/bin/flannel"][1], 0o755)
        self.assertEqual(first["etc/systemd/system/flanneld.service"][1], 0o644)
        inode = os.stat(self.path("/etc/systemd/system/flanneld.service")).st_ino
        done = install.apply(self.items, root=self.root)
        self.assertEqual([s for _, s in done], ["unchanged"] * len(self.items))
        self.assertEqual(tree(self.root), first)
        self.assertEqual(os.stat(self.path("/etc/systemd/system/flanneld.service")).st_ino,
                         inode, "an unchanged file is not rewritten")

    def test_changed_unit_is_replaced_atomically(self):
        install.apply(self.items, root=self.root)
        unit = self.path("/etc/systemd/system/flanneld.service")
        with open(unit, "w") as f:
            f.write("[Service]\nExecStart=/old\n")
        old_inode = os.stat(unit).st_ino
        done = dict(install.apply(self.items, root=self.root))
        self.assertEqual(done[unit], "written")
        # a new file renamed over the old one (readers never see half a file) ...
        self.assertNotEqual(os.stat(unit).st_ino, old_inode)
        with open(unit) as f:
            self.assertIn("ExecStart=/v/bin/twistd", f.read())
        # ... and no temp file left behind
        self.assertEqual(sorted(os.listdir(os.path.dirname(unit))),
                         ["flanneld.service", "flanneld.service.d"])

    def test_mode_is_repaired(self):
        install.apply(self.items, root=self.root)
        shim = self.path("/opt/cni/bin/flannel")
        os.chmod(shim, 0o644)
        self.assertEqual(dict(install.apply(self.items, root=self.root))[shim], "written")
        self.assertEqual(os.stat(shim).st_mode & 0o777, 0o755)

    def test_operators_options_env_is_kept(self):
        options = self.path("/etc/flannel/options.env")
        os.makedirs(os.path.dirname(options))
        with open(options, "w") as f:
            f.write("FLANNELD_IFACE=eth1\n")
        done = dict(install.apply(self.items, root=self.root))
        self.assertEqual(done[options], "kept")
        with open(options) as f:
            self.assertEqual(f.read(), "FLANNELD_IFACE=eth1\n")

    def test_dry_run_writes_nothing(self):
        done = install.apply(self.items, root=self.root, dry_run=True)
        self.assertEqual({s for _, s in done}, {"would be written"})
        self.assertFalse(os.path.exists(self.root))

    def test_failure_leaves_the_old_file(self):
        """A write that fails (a file where a directory must be) raises OSError; the files
        written before it are whole and no temp file is left."""
        install.apply(self.items, root=self.root)
        unit = self.path("/etc/systemd/system/flanneld.service")
        with open(unit) as f:
            before = f.read()
        blocker = self.path("/opt/cni/bin")
        for name in os.listdir(blocker):
            os.unlink(os.path.join(blocker, name))
        os.rmdir(blocker)
        with open(blocker, "w") as f:
            f.write("not a directory")
        with open(unit, "w") as f:
            f.write("old")
        self.assertRaises(OSError, install.apply, self.items, root=self.root)
        with open(unit) as f:
            self.assertEqual(f.read(), before)   # written before the failing item
        self.assertEqual(sorted(os.listdir(self.path("/opt/cni"))), ["bin"])


class UsageTests(unittest.TestCase):
    def test_commands_are_listed(self):
        out = io.StringIO()
        self.assertEqual(cli_main(["--help"], out, io.StringIO()), 0)
        for command in ("install-units", "config"):
            self.assertIn("\n  %s " % command, out.getvalue())
