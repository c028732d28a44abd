"""
The systemd units in flannel_tw/deploy/systemd: each file parsed (a small unit-file parser
that keeps repeated keys, as systemd does) and its key directives checked; then
``systemd-analyze verify`` over a scratch root holding the units, the distro's
targets and stub executables for the commands they run.
"""
import os
import shutil
import shlex
import subprocess
import tempfile

from twisted.trial import unittest

from flannel_tw.lab.run import repo_root

DIST = os.path.join(repo_root(), "flannel_tw", "deploy", "systemd")


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


def load(*path):
    with open(os.path.join(DIST, *path)) as f:
        return parse_unit(f.read())


class ParserTests(unittest.TestCase):
    def test_repeated_keys_comments_and_continuations(self):
        s = parse_unit("# c\n[Unit]\nAfter=a\n; c\nAfter=b\n[Service]\nExecStart=\n"
                       "ExecStart=/bin/x \\\n  --y\n")
        self.assertEqual(values(s, "Unit", "After"), ["a", "b"])
        self.assertEqual(values(s, "Service", "ExecStart"), ["", "/bin/x  --y"])

    def test_errors(self):
        self.assertRaises(ValueError, parse_unit, "After=a\n")
        self.assertRaises(ValueError, parse_unit, "[Unit]\nnonsense\n")


class UnitTests(unittest.TestCase):
    def test_flanneld_service(self):
        u = load("flanneld.service")
        self.assertEqual(values(u, "Service", "Type"), ["notify"])
        self.assertEqual(values(u, "Service", "Restart"), ["always"])
        start = values(u, "Service", "ExecStart")
        self.assertEqual(len(start), 1)
        self.assertEqual(shlex.split(start[0]), ["twistd", "--nodaemon", "--pidfile=", "flannel"])
        self.assertIn("-/etc/flannel/options.env", values(u, "Service", "EnvironmentFile"))
        for key in ("After", "Wants"):
            self.assertIn("network-online.target", words(u, "Unit", key))
            self.assertIn("etcd.service", words(u, "Unit", key))
        self.assertIn("multi-user.target", words(u, "Install", "WantedBy"))

    def test_options_env_names_flags(self):
        from flannel_tw.tap import Options
        with open(os.path.join(DIST, "options.env")) as f:
            env = dict(line.strip().split("=", 1) for line in f
                       if line.strip() and not line.startswith("#"))
        self.assertTrue(env)
        for name, value in env.items():
            self.assertTrue(name.startswith("FLANNELD_"), name)
        # the daemon accepts them as they are
        options = Options(environ=env)
        options.parseOptions([])
        self.assertEqual(options["etcd-endpoints"], ["http://127.0.0.1:2379"])
        self.assertEqual(options["healthz-port"], 8471)

    def test_network_config_drop_in_uses_v2_api_with_curl(self):
        u = load("flanneld.service.d", "50-network-config.conf")
        (pre,) = values(u, "Service", "ExecStartPre")
        argv = shlex.split(pre)
        self.assertEqual(argv[0], "curl")
        self.assertIn("PUT", argv)
        url = [a for a in argv if a.startswith("http")][0]
        self.assertTrue(url.endswith("/v2/keys/coreos.com/network/config"), url)
        value = argv[argv.index("--data-urlencode") + 1]
        self.assertTrue(value.startswith("value="))
        from flannel_tw.config import parse_config
        parse_config(value[len("value="):])

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
        self.assertEqual(shlex.split(post), ["flannel-tw", "docker-opts", "-d",
                                             "/run/flannel/flannel_docker_opts.env"])

    def test_docker_drop_in(self):
        u = load("docker.service.d", "40-flannel.conf")
        self.assertIn("flanneld.service", words(u, "Unit", "Requires"))
        self.assertIn("flanneld.service", words(u, "Unit", "After"))
        self.assertEqual(values(u, "Service", "EnvironmentFile"),
                         ["/run/flannel/flannel_docker_opts.env"])
        start = values(u, "Service", "ExecStart")
        self.assertEqual(start[0], "", "the packaged ExecStart must be reset first")
        self.assertEqual(len(start), 2)
        self.assertIn("$DOCKER_OPTS", start[1].split())

    def test_dependent_service(self):
        u = load("redis.service")
        for key in ("Requires", "After"):
            self.assertIn("flanneld.service", words(u, "Unit", key))
            self.assertIn("docker.service", words(u, "Unit", key))
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


STUBS = {"usr/local/bin": ("twistd", "flannel-tw", "curl"),
         "usr/bin": ("dockerd", "docker", "etcdctl")}
DOCKER_STUB = """[Unit]
Description=stand-in for the packaged docker.service
[Service]
ExecStart=/usr/bin/dockerd -H fd://
"""


class VerifyTests(unittest.TestCase):
    """systemd-analyze verify, offline: a scratch --root with the units installed."""

    def setUp(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise unittest.SkipTest("systemd-analyze not installed (Debian package systemd)")
        if not os.path.isdir("/usr/lib/systemd/system"):
            raise unittest.SkipTest("no /usr/lib/systemd/system to take the standard targets from")
        self.root = tempfile.mkdtemp(prefix="flannel-tw-units-")
        self.addCleanup(shutil.rmtree, self.root, True)
        for d, names in STUBS.items():
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
            for n in names:
                p = os.path.join(self.root, d, n)
                with open(p, "w") as f:
                    f.write("#!/bin/sh\n")
                os.chmod(p, 0o755)
        lib = os.path.join(self.root, "usr", "lib", "systemd")
        os.makedirs(lib)
        shutil.copytree("/usr/lib/systemd/system", os.path.join(lib, "system"), symlinks=True)
        with open(os.path.join(lib, "system", "docker.service"), "w") as f:
            f.write(DOCKER_STUB)
        self.etc = os.path.join(self.root, "etc", "systemd", "system")
        shutil.copytree(DIST, self.etc, ignore=shutil.ignore_patterns("options.env"))

    def verify(self, *units):
        cp = subprocess.run(["systemd-analyze", "verify", "--root=" + self.root]
                            + ["/etc/systemd/system/" + u for u in units],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=60)
        if "Failed to" in cp.stdout and "Unit sysinit.target not found" in cp.stdout:
            raise unittest.SkipTest("systemd-analyze cannot load the standard targets here")
        self.assertEqual((cp.returncode, cp.stdout.strip()), (0, ""))

    def test_units_verify(self):
        self.verify("flanneld.service", "redis.service")

    def test_docker_drop_in_verifies(self):
        shutil.copy(os.path.join(self.root, "usr/lib/systemd/system/docker.service"),
                    os.path.join(self.etc, "docker.service"))
        self.verify("docker.service")

    def test_etcdctl_variant_verifies(self):
        d = os.path.join(self.etc, "flanneld.service.d")
        os.remove(os.path.join(d, "50-network-config.conf"))
        os.rename(os.path.join(d, "50-network-config-etcdctl.conf.example"),
                  os.path.join(d, "50-network-config.conf"))
        self.verify("flanneld.service")
