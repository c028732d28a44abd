"""The systemd units in flannel_tw/deploy/systemd.

- Each shipped file parsed (a small unit-file parser that keeps repeated keys, as
  systemd does) and its key directives checked: absolute paths into the default
  install (/opt/flannel-tw), RestartPreventExitStatus=64, Wants= (not Requires=) on
  flanneld from Docker's side, the config drop-in running ``flannel-tw config set``.
- The environment the daemon gets from the unit, its drop-ins and options.env,
  computed by systemd.exec(5)'s documented rule, then parsed by the daemon's Options:
  the TLS drop-in's https endpoint really reaches the daemon.
- ``systemd-analyze verify`` over the units as ``flannel-tw install-units`` writes
  them for this very install (the venv's real twistd and flannel-tw), with no stub
  executables anywhere; the unit search path is the scratch directory plus the
  distro's units (SYSTEMD_UNIT_PATH), and executables are checked on the real
  filesystem. Commands of other packages that this host lacks (dockerd, etcdctl)
  are replaced, visibly, by real executables.
- ``twistd flannel`` and the .tac files exit 64 on a bad flag or value."""

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing.systemd_fixtures import (
    DIST, EXEC_KEYS, effective_environment, exec_argv, load, parse_unit, values)
from flannel_tw.testing import skips


def _real(*names, fallback="/bin/true"):
    """The first of C{names} found on this host (PATH or absolute), else C{fallback}."""
    for n in names:
        path = n if os.path.isabs(n) else shutil.which(n)
        if path and os.access(path, os.X_OK):
            return path
    return fallback


DOCKER_UNIT = """[Unit]
Description=stand-in for the packaged docker.service (its ExecStart is reset by the drop-in)
[Service]
ExecStart=/bin/true
"""


class VerifyTests(unittest.TestCase):
    """systemd-analyze verify of the units install-units writes for this install."""

    def setUp(self):
        skips.require_tools("systemd-analyze")   # Debian package systemd
        if not os.path.isfile("/usr/lib/systemd/system/sysinit.target"):
            raise unittest.SkipTest("no /usr/lib/systemd/system to take the standard targets from")
        from flannel_tw.tools.install import find_bin_dir
        self.bin_dir = find_bin_dir()
        self.root = tempfile.mkdtemp(prefix="flannel-tw-units-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.etc = os.path.join(self.root, "etc", "systemd", "system")

    def install(self, *args):
        import io
        from flannel_tw.tools.install import main
        out, err = io.StringIO(), io.StringIO()
        code = main(["--root", self.root] + list(args), out, err)
        self.assertEqual((code, err.getvalue()), (0, ""), out.getvalue())
        return out.getvalue()

    def verify(self, *units):
        env = dict(os.environ, SYSTEMD_UNIT_PATH=self.etc + ":/usr/lib/systemd/system")
        cp = subprocess.run(["systemd-analyze", "verify"]
                            + [os.path.join(self.etc, u) for u in units],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=60, env=env, cwd="/")
        self.assertEqual((cp.returncode, cp.stdout.strip()), (0, ""))

    def exec_lines(self, *path):
        with open(os.path.join(self.etc, *path)) as f:
            u = parse_unit(f.read())
        return [exec_argv(v) for k in EXEC_KEYS for v in values(u, "Service", k) if v]

    def test_units_as_installed_verify_with_real_commands(self):
        self.install("--tls", "--network-config")
        argvs = self.exec_lines("flanneld.service")
        for name in ("50-ssl.conf", "50-network-config.conf", "60-docker-opts.conf"):
            argvs += self.exec_lines("flanneld.service.d", name)
        self.assertEqual(sorted(a[0] for a in argvs),
                         [os.path.join(self.bin_dir, "flannel-tw")] * 2
                         + [os.path.join(self.bin_dir, "twistd")])
        for argv in argvs:
            self.assertTrue(os.access(argv[0], os.X_OK), argv)
        self.verify("flanneld.service")

    def test_verify_catches_a_missing_command(self):
        """The check is real: a command that is not there fails verify."""
        self.install()
        with open(os.path.join(self.etc, "flanneld.service.d", "70-bad.conf"), "w") as f:
            f.write("[Service]\nExecStartPre=/nonexistent/flannel-tw version\n")
        env = dict(os.environ, SYSTEMD_UNIT_PATH=self.etc + ":/usr/lib/systemd/system")
        cp = subprocess.run(["systemd-analyze", "verify",
                             os.path.join(self.etc, "flanneld.service")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=60, env=env, cwd="/")
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("/nonexistent/flannel-tw", cp.stdout)

    def test_docker_drop_in_verifies(self):
        # dockerd as found on this host, else a real executable standing in for it
        self.install("--docker", "--dockerd", _real("dockerd", "/usr/bin/dockerd",
                                                    "/usr/sbin/dockerd"))
        with open(os.path.join(self.etc, "docker.service"), "w") as f:
            f.write(DOCKER_UNIT)
        self.verify("docker.service", "flanneld.service")

    def test_examples_verify(self):
        """redis.service and the etcdctl drop-in, their docker/etcdctl replaced by real ones."""
        from flannel_tw.testing.etcd import find_etcd_binary
        self.install()
        etcd = find_etcd_binary()
        etcdctl = _real(*([os.path.join(os.path.dirname(etcd), "etcdctl")] if etcd else [])
                        + ["etcdctl"])
        with open(os.path.join(DIST, "flanneld.service.d",
                               "50-network-config-etcdctl.conf.example")) as f:
            text = f.read().replace("/usr/bin/etcdctl ", etcdctl + " ")
        with open(os.path.join(self.etc, "flanneld.service.d", "50-network-config.conf"),
                  "w") as f:
            f.write(text)
        with open(os.path.join(DIST, "redis.service")) as f:
            text = f.read().replace("/usr/bin/docker ", _real("docker") + " ")
        with open(os.path.join(self.etc, "redis.service"), "w") as f:
            f.write(text)
        with open(os.path.join(self.etc, "docker.service"), "w") as f:
            f.write(DOCKER_UNIT)
        self.verify("flanneld.service", "redis.service")


class EtcdctlExampleTests(unittest.TestCase):
    """The etcdctl example's command, run as written against a real etcd 3.5."""

    def test_etcdctl_v2_set_writes_what_flannel_tw_reads(self):
        from flannel_tw.model.config import parse_config
        from flannel_tw.testing.etcd import find_etcd_binary, start_etcd_for_test
        etcd = find_etcd_binary()
        etcdctl = etcd and os.path.join(os.path.dirname(etcd), "etcdctl")
        if not etcdctl or not os.access(etcdctl, os.X_OK):
            raise unittest.SkipTest("no etcdctl next to the etcd binary")
        server = start_etcd_for_test(self)
        u = load("flanneld.service.d", "50-network-config-etcdctl.conf.example")
        (pre,) = values(u, "Service", "ExecStartPre")
        argv = exec_argv(pre)
        argv[0] = etcdctl
        argv = [("--endpoints=" + server.url) if a.startswith("--endpoints=") else a
                for a in argv]
        env = dict(os.environ)
        env.update(dict(v.split("=", 1) for v in values(u, "Service", "Environment")))
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=60, env=env)
        self.assertEqual(cp.returncode, 0, cp.stdout)
        value = server.v2_get("/coreos.com/network/config")["node"]["value"]
        self.assertEqual(parse_config(value).subnet_len, 28)


class UsageExitTests(unittest.TestCase):
    """A bad flag or value: exit 64 with the reason, so Restart=always does not loop."""

    def run_twistd(self, *argv, env=None):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.access(twistd, os.X_OK):
            raise unittest.SkipTest("no twistd next to %s" % sys.executable)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
        environ["PYTHONPATH"] = repo_root()   # this checkout's code, not the venv's copy
        environ.update(env or {})
        d = self.mktemp()
        os.makedirs(d)
        return subprocess.run([twistd] + list(argv), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=60, env=environ,
                              cwd=d)

    def assertUsageExit(self, cp, *needles):
        self.assertEqual(cp.returncode, 64, (cp.stdout, cp.stderr))
        for needle in needles:
            self.assertIn(needle, cp.stderr)
        self.assertIn("twistd flannel --help", cp.stderr)
        self.assertNotIn("Usage: twistd", cp.stdout + cp.stderr)   # no page of help

    def test_unknown_flag(self):
        self.assertUsageExit(self.run_twistd("--nodaemon", "--pidfile=", "flannel", "--bogus"),
                             "twistd flannel: option --bogus not recognized")

    def test_bad_value(self):
        self.assertUsageExit(self.run_twistd("flannel", "--healthz-port=x"),
                             "--healthz-port: 'x' is not an integer")

    def test_bad_environment_variable(self):
        self.assertUsageExit(self.run_twistd("-n", "--pidfile=", "flannel",
                                             env={"FLANNELD_ETCD_PREFIX": "no-slash"}),
                             "FLANNELD_ETCD_PREFIX: 'no-slash' must start with /")

    def test_help_and_version_still_exit_0(self):
        cp = self.run_twistd("flannel", "--help")
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("--etcd-endpoints", cp.stdout)
        cp = self.run_twistd("flannel", "--version")
        self.assertEqual(cp.returncode, 0, cp.stderr)

    def test_tac_files(self):
        for name in ("flannel.tac", "flannel-udp.tac", "flannel-vxlan.tac"):
            cp = self.run_twistd("-n", "--pidfile=", "-y",
                                 os.path.join(repo_root(), "tac", name),
                                 env={"FLANNELD_HEALTHZ_PORT": "x"})
            self.assertUsageExit(cp, "%s: FLANNELD_HEALTHZ_PORT: 'x' is not an integer" % name)


class ConfigDropInTests(unittest.TestCase):
    """
    The config drop-in's ExecStartPre as install-units writes it (this venv's
    flannel-tw), run as a process in the environment systemd would give it (unit +
    50-ssl.conf + options.env), against a real etcd that wants client certificates.
    """

    def test_publishes_over_tls(self):
        import io
        from flannel_tw.tools.install import main as install_units
        from flannel_tw.testing.certs import make_pki
        from flannel_tw.testing.etcd import start_etcd_for_test
        d = os.path.abspath(self.mktemp())
        pki = make_pki(os.path.join(d, "ssl"))
        server = start_etcd_for_test(self, tls=pki.etcd_tls())
        root = os.path.join(d, "root")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(install_units(["--root", root, "--tls", "--network-config"], out, err),
                         0, err.getvalue())
        etc = os.path.join(root, "etc", "systemd", "system")

        def unit(*path):
            with open(os.path.join(etc, *path)) as f:
                return parse_unit(f.read().replace("/etc/ssl/etcd", pki.directory))

        # the operator's options.env names this etcd (with https, as its comment asks)
        options_env = os.path.join(root, "etc", "flannel", "options.env")
        with open(options_env, "a") as f:
            f.write("FLANNELD_ETCD_ENDPOINTS=%s\n" % server.url)
        with open(options_env) as f:
            env = effective_environment(
                [unit("flanneld.service"), unit("flanneld.service.d", "50-network-config.conf"),
                 unit("flanneld.service.d", "50-ssl.conf")],
                {"/etc/flannel/options.env": f.read()})
        (pre,) = values(unit("flanneld.service.d", "50-network-config.conf"), "Service",
                        "ExecStartPre")
        argv = exec_argv(pre)
        self.assertEqual(argv[0], os.path.join(os.path.dirname(sys.executable), "flannel-tw"))
        argv[-1] = os.path.join(root, argv[-1].lstrip("/"))   # /etc/flannel/network.json
        env.update(PATH="/usr/bin:/bin", PYTHONPATH=repo_root())   # this checkout's code
        cp = subprocess.run(argv, env=env, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("wrote /coreos.com/network/config", cp.stdout)
        from flannel_tw.model.config import parse_config
        value = server.v2_get("/coreos.com/network/config")["node"]["value"]
        with open(os.path.join(root, "etc", "flannel", "network.json")) as f:
            self.assertEqual(value, f.read().strip())
        self.assertEqual(str(parse_config(value).network), "10.1.0.0/16")
