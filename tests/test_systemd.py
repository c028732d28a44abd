"""
The systemd units in flannel_tw/deploy/systemd.

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
- ``twistd flannel`` and the .tac files exit 64 on a bad flag or value.
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from twisted.trial import unittest

from flannel_tw.lab.run import repo_root

DIST = os.path.join(repo_root(), "flannel_tw", "deploy", "systemd")
OPT_BIN = "/opt/flannel-tw/bin/"
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
             "ExecReload", "ExecCondition")


def parse_unit(text):
    """
    A unit file as {section: [(key, value), ...]}, keys in file order and repeated
    keys kept (systemd's ExecStart= resets are significant). Handles comments
    (# and ;), blank lines and backslash line continuations.
    """
    sections = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        if current is None:
            raise ValueError("assignment outside a section: %r" % line)
        if "=" not in line:
            raise ValueError("not KEY=VALUE: %r" % line)
        key, value = line.split("=", 1)
        sections[current].append((key.strip(), value.strip()))
    if pending:
        raise ValueError("continuation at end of file")
    return sections


def values(sections, section, key):
    return [v for k, v in sections.get(section, []) if k == key]


def words(sections, section, key):
    return [w for v in values(sections, section, key) for w in v.split()]


def read(*path):
    with open(os.path.join(DIST, *path)) as f:
        return f.read()


def load(*path):
    return parse_unit(read(*path))


def parse_env_file(text):
    """An EnvironmentFile= as systemd reads it: KEY=VALUE lines, # and ; comments,
    optional surrounding quotes."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def effective_environment(units, files):
    """
    The environment systemd gives a service, by systemd.exec(5): Environment=
    assignments in order (unit file, then drop-ins in name order; a later one wins),
    then the EnvironmentFile= files in the order listed, which "override settings
    made with Environment=" (a later file wins too). C{units} are parsed unit texts
    in load order; C{files} maps an EnvironmentFile path to its text (a missing file
    with a "-" prefix is skipped).
    """
    env, env_files = {}, []
    for u in units:
        for v in values(u, "Service", "Environment"):
            for assignment in shlex.split(v):
                key, value = assignment.split("=", 1)
                env[key] = value
        env_files.extend(values(u, "Service", "EnvironmentFile"))
    for path in env_files:
        optional = path.startswith("-")
        path = path.lstrip("-")
        if path not in files:
            if optional:
                continue
            raise FileNotFoundError(path)
        env.update(parse_env_file(files[path]))
    return env


def exec_argv(value):
    """An Exec*= value as argv, without systemd's prefixes (-, @, :, +, !)."""
    argv = shlex.split(value)
    argv[0] = argv[0].lstrip("-@:+!")
    return argv


class ParserTests(unittest.TestCase):
    def test_repeated_keys_comments_and_continuations(self):
        s = parse_unit("# c\n[Unit]\nAfter=a\n; c\nAfter=b\n[Service]\nExecStart=\n"
                       "ExecStart=/bin/x \\\n  --y\n")
        self.assertEqual(values(s, "Unit", "After"), ["a", "b"])
        self.assertEqual(values(s, "Service", "ExecStart"), ["", "/bin/x  --y"])

    def test_errors(self):
        self.assertRaises(ValueError, parse_unit, "After=a\n")
        self.assertRaises(ValueError, parse_unit, "[Unit]\nnonsense\n")

    def test_environment_file_wins_over_later_environment(self):
        """The documented rule, whatever the order of the lines."""
        unit = parse_unit("[Service]\nEnvironmentFile=/f\nEnvironment=A=unit B=unit\n")
        drop_in = parse_unit("[Service]\nEnvironment=A=drop-in C=drop-in\n")
        env = effective_environment([unit, drop_in], {"/f": "# c\nB='file'\n"})
        self.assertEqual(env, {"A": "drop-in", "B": "file", "C": "drop-in"})
        self.assertRaises(FileNotFoundError, effective_environment, [unit], {})
        optional = parse_unit("[Service]\nEnvironmentFile=-/f\n")
        self.assertEqual(effective_environment([optional], {}), {})


def all_shipped_units():
    for dirpath, _dirs, files in os.walk(DIST):
        for name in sorted(files):
            if name.endswith((".service", ".conf", ".example")):
                yield os.path.relpath(os.path.join(dirpath, name), DIST)


class UnitTests(unittest.TestCase):
    def test_flanneld_service(self):
        u = load("flanneld.service")
        self.assertEqual(values(u, "Service", "Type"), ["notify"])
        self.assertEqual(values(u, "Service", "Restart"), ["always"])
        start = values(u, "Service", "ExecStart")
        self.assertEqual(len(start), 1)
        self.assertEqual(shlex.split(start[0]),
                         [OPT_BIN + "twistd", "--nodaemon", "--pidfile=", "flannel"])
        self.assertIn("-/etc/flannel/options.env", values(u, "Service", "EnvironmentFile"))
        for key in ("After", "Wants"):
            self.assertIn("network-online.target", words(u, "Unit", key))
            self.assertIn("etcd.service", words(u, "Unit", key))
        self.assertIn("multi-user.target", words(u, "Install", "WantedBy"))

    def test_usage_errors_are_not_restarted(self):
        from flannel_tw.tap import EX_USAGE
        u = load("flanneld.service")
        self.assertEqual(EX_USAGE, 64)
        self.assertEqual(values(u, "Service", "RestartPreventExitStatus"), ["64"])

    def test_every_command_is_an_absolute_path(self):
        """systemd does not search a venv: bare twistd/flannel-tw would not start."""
        seen = 0
        for rel in all_shipped_units():
            u = load(rel)
            for key in EXEC_KEYS:
                for v in values(u, "Service", key):
                    if not v:
                        continue   # an ExecStart= reset
                    argv = exec_argv(v)
                    self.assertTrue(os.path.isabs(argv[0]), (rel, key, v))
                    if os.path.basename(argv[0]) in ("twistd", "flannel-tw"):
                        self.assertEqual(os.path.dirname(argv[0]) + "/", OPT_BIN, (rel, v))
                        seen += 1
        self.assertGreaterEqual(seen, 3)

    def test_cni_shim_execs_the_absolute_flannel_tw(self):
        with open(os.path.join(repo_root(), "flannel_tw", "deploy", "cni", "flannel")) as f:
            lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
        self.assertEqual(lines, ['exec %sflannel-tw cni "$@"' % OPT_BIN])

    def test_options_env_names_flags(self):
        from flannel_tw.tap import Options
        env = parse_env_file(read("options.env"))
        self.assertTrue(env)
        for name in env:
            self.assertTrue(name.startswith("FLANNELD_"), name)
        # the daemon accepts them as they are
        options = Options(environ=env)
        options.parseOptions([])
        self.assertEqual(options["healthz-port"], 8471)
        # the endpoint is left to the unit and the TLS drop-in (see EnvironmentTests)
        self.assertNotIn("FLANNELD_ETCD_ENDPOINTS", env)

    def test_network_config_drop_in_uses_flannel_tw_config_set(self):
        u = load("flanneld.service.d", "50-network-config.conf")
        (pre,) = values(u, "Service", "ExecStartPre")
        self.assertEqual(shlex.split(pre), [OPT_BIN + "flannel-tw", "config", "set",
                                            "--file", "/etc/flannel/network.json"])
        from flannel_tw.config import parse_config
        config = parse_config(read("network.json"))
        self.assertEqual(str(config.network), "10.1.0.0/16")

    def test_etcdctl_example_is_v2(self):
        u = load("flanneld.service.d", "50-network-config-etcdctl.conf.example")
        self.assertIn("ETCDCTL_API=2", values(u, "Service", "Environment"))
        (pre,) = values(u, "Service", "ExecStartPre")
        argv = shlex.split(pre)
        self.assertTrue(argv[0].endswith("etcdctl"))
        i = argv.index("set")
        self.assertEqual(argv[i + 1], "/coreos.com/network/config")
        from flannel_tw.config import parse_config
        config = parse_config(argv[i + 2])
        self.assertEqual(config.subnet_len, 28)

    def test_ssl_drop_in(self):
        u = load("flanneld.service.d", "50-ssl.conf")
        env = dict(v.split("=", 1) for v in values(u, "Service", "Environment"))
        self.assertEqual(env["ETCD_SSL_DIR"], "/etc/ssl/etcd")
        self.assertTrue(env["FLANNELD_ETCD_ENDPOINTS"].startswith("https://"))

    def test_docker_opts_drop_in(self):
        u = load("flanneld.service.d", "60-docker-opts.conf")
        (post,) = values(u, "Service", "ExecStartPost")
        self.assertEqual(shlex.split(post), [OPT_BIN + "flannel-tw", "docker-opts", "-d",
                                             "/run/flannel/flannel_docker_opts.env"])

    def test_docker_drop_in(self):
        u = load("docker.service.d", "40-flannel.conf")
        self.assertIn("flanneld.service", words(u, "Unit", "After"))
        self.assertEqual(values(u, "Service", "EnvironmentFile"),
                         ["/run/flannel/flannel_docker_opts.env"])
        start = values(u, "Service", "ExecStart")
        self.assertEqual(start[0], "", "the packaged ExecStart must be reset first")
        self.assertEqual(len(start), 2)
        self.assertIn("$DOCKER_OPTS", start[1].split())

    def test_restarting_flanneld_does_not_restart_docker(self):
        """
        Docker wants flanneld and starts after it, but is not bound to it: Requires=
        (or BindsTo=/PartOf=, or flanneld's [Install] RequiredBy=docker.service) would
        stop and restart Docker, and every container, with each flanneld restart.
        """
        docker = load("docker.service.d", "40-flannel.conf")
        self.assertIn("flanneld.service", words(docker, "Unit", "Wants"))
        flanneld = load("flanneld.service")
        redis = load("redis.service")
        self.assertIn("flanneld.service", words(redis, "Unit", "Wants"))
        for u in (docker, redis):
            for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
                self.assertNotIn("flanneld.service", words(u, "Unit", key), key)
        self.assertEqual(values(flanneld, "Install", "RequiredBy"), [])
        for key in ("PropagatesStopTo", "PropagatesReloadTo", "ReloadPropagatedFrom"):
            self.assertEqual(values(flanneld, "Unit", key), [])

    def test_dependent_service(self):
        u = load("redis.service")
        self.assertIn("docker.service", words(u, "Unit", "Requires"))
        for name in ("flanneld.service", "docker.service"):
            self.assertIn(name, words(u, "Unit", "After"))
        self.assertIn(values(u, "Service", "Restart")[0], ("always", "on-failure"))

    def test_docker_opts_command_output_suits_the_docker_unit(self):
        """The ExecStartPost command really writes the file docker.service reads."""
        from flannel_tw.dockeropts import main as docker_opts
        import io
        d = self.mktemp()
        os.makedirs(d)
        env = os.path.join(d, "subnet.env")
        with open(env, "w") as f:
            f.write("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
                    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
        out = os.path.join(d, "flannel_docker_opts.env")
        self.assertEqual(docker_opts(["-f", env, "-d", out], io.StringIO(), io.StringIO()), 0)
        with open(out) as f:
            text = f.read()
        self.assertIn('DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"', text)


class EnvironmentTests(unittest.TestCase):
    """What the daemon (and `flannel-tw config`) gets from the unit, drop-ins, options.env."""

    def daemon_options(self, *drop_ins, options_env=None):
        from flannel_tw.tap import Options
        units = [load("flanneld.service")]
        units += [load("flanneld.service.d", name) for name in sorted(drop_ins)]
        files = {"/etc/flannel/options.env": read("options.env") if options_env is None
                 else options_env}
        env = effective_environment(units, files)
        options = Options(environ=env)
        options.parseOptions([])
        return env, options

    def test_plain_unit_uses_local_http_etcd(self):
        env, options = self.daemon_options()
        self.assertEqual(options["etcd-endpoints"], ["http://127.0.0.1:2379"])
        self.assertEqual(options["etcd-prefix"], "/coreos.com/network")

    def test_tls_drop_in_endpoint_reaches_the_daemon(self):
        """The seed's options.env set an http endpoint, which beat 50-ssl.conf's https."""
        from flannel_tw.etcd.tls import tls_files
        env, options = self.daemon_options("50-ssl.conf", "60-docker-opts.conf")
        self.assertEqual(options["etcd-endpoints"], ["https://127.0.0.1:2379"])
        self.assertEqual(env["ETCD_SSL_DIR"], "/etc/ssl/etcd")
        # and the certificates come from there, as the daemon looks them up
        d = self.mktemp()
        os.makedirs(d)
        for name in ("ca.pem", "client.pem", "client-key.pem"):
            open(os.path.join(d, name), "w").close()
        self.assertEqual(tls_files("", "", "", dict(env, ETCD_SSL_DIR=d)),
                         tuple(os.path.join(d, n) for n in
                               ("ca.pem", "client.pem", "client-key.pem")))

    def test_options_env_endpoint_wins_over_both(self):
        text = read("options.env") + "FLANNELD_ETCD_ENDPOINTS=https://10.0.0.1:2379\n"
        _env, options = self.daemon_options("50-ssl.conf", options_env=text)
        self.assertEqual(options["etcd-endpoints"], ["https://10.0.0.1:2379"])

    def test_config_drop_in_runs_with_the_same_settings(self):
        """ExecStartPre runs in the unit's environment: config set parses it as the daemon."""
        from flannel_tw.netconfig import etcd_options
        env, options = self.daemon_options("50-ssl.conf", "50-network-config.conf")
        config_options = etcd_options([], env)
        for key in ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-username"):
            self.assertEqual(config_options[key], options[key], key)


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
        if shutil.which("systemd-analyze") is None:
            raise unittest.SkipTest("systemd-analyze not installed (Debian package systemd)")
        if not os.path.isfile("/usr/lib/systemd/system/sysinit.target"):
            raise unittest.SkipTest("no /usr/lib/systemd/system to take the standard targets from")
        from flannel_tw.install import find_bin_dir
        self.bin_dir = find_bin_dir()
        self.root = tempfile.mkdtemp(prefix="flannel-tw-units-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.etc = os.path.join(self.root, "etc", "systemd", "system")

    def install(self, *args):
        import io
        from flannel_tw.install import main
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
        from flannel_tw.config import parse_config
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
        from flannel_tw.install import main as install_units
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
        from flannel_tw.config import parse_config
        value = server.v2_get("/coreos.com/network/config")["node"]["value"]
        with open(os.path.join(root, "etc", "flannel", "network.json")) as f:
            self.assertEqual(value, f.read().strip())
        self.assertEqual(str(parse_config(value).network), "10.1.0.0/16")
