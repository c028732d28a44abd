"""The systemd units in flannel_tw/deploy/systemd.

The unit tests (ParserTests, UnitTests, EnvironmentTests); the whole description is in tests/integration/test_systemd.py."""

import os
import shlex

from twisted.trial import unittest

from flannel_tw.tools.lab.run import repo_root
from flannel_tw.testing.systemd_fixtures import (
    DIST, EXEC_KEYS, effective_environment, exec_argv, load, parse_env_file, parse_unit, read,
    values)


OPT_BIN = "/opt/flannel-tw/bin/"


def words(sections, section, key):
    return [w for v in values(sections, section, key) for w in v.split()]


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
        from flannel_tw.model.config import parse_config
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
        from flannel_tw.model.config import parse_config
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
        from flannel_tw.tools.dockeropts import main as docker_opts
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
        from flannel_tw.tools.netconfig import etcd_options
        env, options = self.daemon_options("50-ssl.conf", "50-network-config.conf")
        config_options = etcd_options([], env)
        for key in ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-username"):
            self.assertEqual(config_options[key], options[key], key)
