"""
Tests for flannel_tw.host.subnetfile: subnet.env rendering, parsing and atomic
writing, and mk-docker-opts.sh's output (flannel-compat.md section 5).
"""
import os
import stat
from ipaddress import IPv4Network

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from flannel_tw.host.subnetfile import (SubnetFileError, parse_env, read_env, read_previous_subnet,
                                   render_docker_opts, render_subnet_env, write_atomic)

SAMPLE = {"FLANNEL_NETWORK": "10.1.0.0/16", "FLANNEL_SUBNET": "10.1.74.1/24",
          "FLANNEL_MTU": "1472", "FLANNEL_IPMASQ": "false"}


class RenderTests(TestCase):
    """subnet.env exactly as flanneld writes it."""

    def test_render(self):
        """The sheet's example, byte for byte."""
        self.assertEqual(
            render_subnet_env(IPv4Network("10.5.0.0/16"), IPv4Network("10.5.72.0/24"), 1450,
                              False),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")

    def test_ipmasq_true(self):
        self.assertIn("\nFLANNEL_IPMASQ=true\n",
                      render_subnet_env(IPv4Network("10.5.0.0/16"),
                                        IPv4Network("10.5.72.0/24"), 1450, True))

    @given(st.integers(0, 2 ** 32 - 1), st.integers(8, 30), st.integers(68, 65535),
           st.booleans())
    def test_round_trip(self, address, prefix, mtu, ipmasq):
        """parse_env(render) gives the values back; FLANNEL_SUBNET is address + 1."""
        subnet = IPv4Network((address, prefix), strict=False)
        network = subnet.supernet(new_prefix=prefix - 2)
        env = parse_env(render_subnet_env(network, subnet, mtu, ipmasq))
        self.assertEqual(env, {
            "FLANNEL_NETWORK": str(network),
            "FLANNEL_SUBNET": "%s/%d" % (subnet.network_address + 1, prefix),
            "FLANNEL_MTU": str(mtu),
            "FLANNEL_IPMASQ": "true" if ipmasq else "false"})


class ParseEnvTests(TestCase):
    """godotenv-like parsing."""

    def test_syntax(self):
        """Comments, blank lines, export, quotes, inline comments, escapes."""
        text = ("# header\n\n  export A=1\nB = two words \nC='single # kept'  # comment\n"
                'D="x\\"y\\nz"\nE=v#not-a-comment\nF=v # comment\nG=\nH=a=b\r\n')
        self.assertEqual(parse_env(text), {"A": "1", "B": "two words", "C": "single # kept",
                                           "D": 'x"y\nz', "E": "v#not-a-comment", "F": "v",
                                           "G": "", "H": "a=b"})

    def test_later_wins(self):
        self.assertEqual(parse_env("A=1\nA=2\n"), {"A": "2"})

    def test_errors_name_the_line(self):
        """A line without '=', a bad name, an unterminated quote."""
        for text, line in (("A=1\nnonsense\n", 2), ("A=1\n\n=3\n", 3),
                           ("X Y=1\n", 1), ('A="open\n', 1), ("A='x' junk\n", 1)):
            err = self.assertRaises(SubnetFileError, parse_env, text)
            self.assertIn("line %d" % line, str(err))

    def test_read_env_names_file(self):
        """read_env's errors name the file."""
        missing = os.path.join(self.mktemp(), "subnet.env")
        self.assertIn(missing, str(self.assertRaises(SubnetFileError, read_env, missing)))
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write("FLANNEL_SUBNET\n")
        err = self.assertRaises(SubnetFileError, read_env, bad)
        self.assertIn(bad, str(err))
        self.assertIn("line 1", str(err))


class ReadLimitTests(TestCase):
    """read_env reads at most MAX_ENV_SIZE bytes: a huge file (or /dev/zero named as
    subnetFile in a CNI config) is an error, not unbounded memory."""

    def test_huge_file_is_refused(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# padding\n" * 200000 + "FLANNEL_MTU=1450\n")
        err = self.assertRaises(SubnetFileError, read_env, path)
        self.assertIn(path, str(err))
        self.assertIn("larger than", str(err))

    def test_limit_itself_is_fine(self):
        from flannel_tw.host.subnetfile import MAX_ENV_SIZE
        path = self.mktemp()
        line = "FLANNEL_MTU=1450\n"
        with open(path, "w") as f:
            f.write("#" * (MAX_ENV_SIZE - len(line) - 1) + "\n" + line)
        self.assertEqual(os.path.getsize(path), MAX_ENV_SIZE)
        self.assertEqual(read_env(path), {"FLANNEL_MTU": "1450"})


class WriteAtomicTests(TestCase):
    """Atomic replacement with a fixed mode."""

    def setUp(self):
        self.old_umask = os.umask(0o077)
        self.addCleanup(os.umask, self.old_umask)
        self.dir = os.path.join(self.mktemp(), "run", "flannel")
        self.path = os.path.join(self.dir, "subnet.env")

    def test_write(self):
        """Creates the directory, the file 0644 whatever the umask, no temp file left."""
        write_atomic(self.path, "A=1\n")
        with open(self.path) as f:
            self.assertEqual(f.read(), "A=1\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)
        # The directory is created 0755 minus the umask, as Go's MkdirAll does.
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o700)
        self.assertEqual(os.listdir(self.dir), ["subnet.env"])

    def test_replace(self):
        """A second write replaces the content; the mode is applied to existing files too."""
        write_atomic(self.path, "A=1\n", mode=0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        write_atomic(self.path, "B=2\n")
        with open(self.path) as f:
            self.assertEqual(f.read(), "B=2\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o644)
        self.assertEqual(os.listdir(self.dir), ["subnet.env"])

    def test_failure_removes_temp(self):
        """When the rename fails the temp file is removed and the error re-raised."""
        os.makedirs(self.path)          # a directory in the way: os.replace fails
        self.assertRaises(OSError, write_atomic, self.path, "A=1\n")
        self.assertEqual(os.listdir(self.dir), ["subnet.env"])
        self.assertTrue(os.path.isdir(self.path))


class SymlinkSafeWriteTests(TestCase):
    """
    Writes never follow a symlink planted in the output directory: not at flanneld's old
    fixed temp name ``.<name>``, not at the final name (which is replaced by a regular
    file, as rename(2) does; the link's target is never opened), and never chmod it.
    """

    def setUp(self):
        self.dir = os.path.join(self.mktemp(), "run", "flannel")
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "subnet.env")
        self.target = os.path.abspath(self.mktemp())     # outside the directory
        with open(self.target, "w") as f:
            f.write("precious\n")
        os.chmod(self.target, 0o600)

    def assertTargetUntouched(self):
        with open(self.target) as f:
            self.assertEqual(f.read(), "precious\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.target).st_mode), 0o600)

    def test_link_at_old_temp_name(self):
        os.symlink(self.target, os.path.join(self.dir, ".subnet.env"))
        write_atomic(self.path, "A=1\n")
        self.assertTargetUntouched()
        with open(self.path) as f:
            self.assertEqual(f.read(), "A=1\n")
        self.assertFalse(os.path.islink(self.path))

    def test_dangling_link_at_old_temp_name(self):
        """A link to a file that does not exist yet is not created through either."""
        os.unlink(self.target)
        os.symlink(self.target, os.path.join(self.dir, ".subnet.env"))
        write_atomic(self.path, "A=1\n")
        self.assertFalse(os.path.lexists(self.target))

    def test_link_at_final_name_is_replaced_not_followed(self):
        os.symlink(self.target, self.path)
        write_atomic(self.path, "A=1\n")
        self.assertTargetUntouched()
        self.assertFalse(os.path.islink(self.path))
        with open(self.path) as f:
            self.assertEqual(f.read(), "A=1\n")
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o644)

    def test_docker_opts_write_is_symlink_safe(self):
        """flannel-tw docker-opts writes through the same function."""
        import io
        from flannel_tw.tools import dockeropts
        env = os.path.join(self.dir, "subnet.env")
        with open(env, "w") as f:
            f.write("FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\n")
        out = os.path.join(self.dir, "docker_opts.env")
        os.symlink(self.target, os.path.join(self.dir, ".docker_opts.env"))
        self.patch(os, "environ", {})
        self.assertEqual(dockeropts.main(["-f", env, "-d", out], io.StringIO(),
                                         io.StringIO()), 0)
        self.assertTargetUntouched()
        with open(out) as f:
            self.assertIn("--bip=10.1.74.1/24", f.read())


class ConcurrentWriteTests(TestCase):
    """Writers racing on one path: each write succeeds and readers only ever see one
    writer's whole text (each writer has its own temp file; the rename is atomic)."""

    def setUp(self):
        self.dir = os.path.join(self.mktemp(), "run")
        self.path = os.path.join(self.dir, "subnet.env")

    def texts(self, n):
        # large enough that interleaved writes of one shared temp file would show
        return ["%d" % i * 200000 + "\n" for i in range(n)]

    def test_threads(self):
        import threading
        texts = self.texts(4)
        errors, seen = [], set()
        stop = threading.Event()

        def writer(text):
            try:
                for _ in range(15):
                    write_atomic(self.path, text)
            except Exception as e:        # reported below
                errors.append(e)

        def reader():
            while not stop.is_set():
                try:
                    with open(self.path) as f:
                        seen.add(f.read())
                except FileNotFoundError:
                    pass
        write_atomic(self.path, texts[0])
        threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
        watcher = threading.Thread(target=reader)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
        self.assertEqual(errors, [])
        self.assertLessEqual(seen, set(texts))
        with open(self.path) as f:
            self.assertIn(f.read(), texts)
        self.assertEqual(os.listdir(self.dir), ["subnet.env"])

    def test_processes(self):
        import multiprocessing
        texts = self.texts(3)
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_write_many, args=(self.path, t, 15)) for t in texts]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        self.assertEqual([p.exitcode for p in procs], [0] * len(procs))
        with open(self.path) as f:
            self.assertIn(f.read(), texts)
        self.assertEqual(os.listdir(self.dir), ["subnet.env"])


def _write_many(path, text, count):
    for _ in range(count):
        write_atomic(path, text)


class PreviousSubnetTests(TestCase):
    """FLANNEL_SUBNET read back on the next start."""

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_masked(self):
        path = self.write("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n")
        self.assertEqual(read_previous_subnet(path), IPv4Network("10.5.72.0/24"))

    def test_none(self):
        """Missing file, missing or bad FLANNEL_SUBNET, malformed file."""
        self.assertIsNone(read_previous_subnet(self.mktemp()))
        for text in ("FLANNEL_MTU=1450\n", "FLANNEL_SUBNET=\n", "FLANNEL_SUBNET=10.5.72.1\n",
                     "FLANNEL_SUBNET=10.5.72.1/33\n", "FLANNEL_SUBNET=fd00::1/64\n",
                     "FLANNEL_SUBNET=10.5.72.1/24\ngarbage\n"):
            self.assertIsNone(read_previous_subnet(self.write(text)), text)


class DockerOptsTests(TestCase):
    """render_docker_opts: mk-docker-opts.sh's output."""

    def test_sample(self):
        """The sheet's verified output, byte for byte."""
        self.assertEqual(render_docker_opts(SAMPLE),
                         'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\n'
                         'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                         'DOCKER_OPT_MTU="--mtu=1472"\n'
                         'DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"\n')

    def test_variants(self):
        """-i, -c, -k, -m, an existing value, inverted ip-masq."""
        self.assertEqual(render_docker_opts(SAMPLE, combined=False, ipmasq=False),
                         'DOCKER_OPT_BIP="--bip=10.1.74.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n')
        self.assertEqual(render_docker_opts(dict(SAMPLE, FLANNEL_IPMASQ="true"),
                                            individual=False, key="DOCKER_NETWORK_OPTIONS",
                                            existing="--foo"),
                         'DOCKER_NETWORK_OPTIONS="--foo  --bip=10.1.74.1/24 '
                         '--ip-masq=false --mtu=1472"\n')
        self.assertEqual(render_docker_opts(SAMPLE, individual=False, combined=False), "")

    def test_ipmasq_absent(self):
        """No FLANNEL_IPMASQ: the option is left out, as the script does."""
        env = {k: v for k, v in SAMPLE.items() if k != "FLANNEL_IPMASQ"}
        self.assertEqual(render_docker_opts(env, individual=False),
                         'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n')

    def test_errors(self):
        """Missing or malformed values name the variable."""
        for change, var in (({"FLANNEL_SUBNET": ""}, "FLANNEL_SUBNET"),
                            ({"FLANNEL_SUBNET": "10.1.74.1"}, "FLANNEL_SUBNET"),
                            ({"FLANNEL_SUBNET": "10.1.74.1/24 x"}, "FLANNEL_SUBNET"),
                            ({"FLANNEL_MTU": ""}, "FLANNEL_MTU"),
                            ({"FLANNEL_MTU": "0"}, "FLANNEL_MTU"),
                            ({"FLANNEL_MTU": "-1"}, "FLANNEL_MTU"),
                            ({"FLANNEL_MTU": "1e3"}, "FLANNEL_MTU"),
                            ({"FLANNEL_IPMASQ": "yes"}, "FLANNEL_IPMASQ")):
            err = self.assertRaises(SubnetFileError, render_docker_opts, dict(SAMPLE, **change))
            self.assertIn(var, str(err))
        for var in ("FLANNEL_SUBNET", "FLANNEL_MTU"):
            env = {k: v for k, v in SAMPLE.items() if k != var}
            self.assertIn(var, str(self.assertRaises(SubnetFileError, render_docker_opts, env)))

    def test_bad_ipmasq_ignored_with_m(self):
        """With -m the ip-masq value is not looked at, as in the script."""
        self.assertEqual(render_docker_opts(dict(SAMPLE, FLANNEL_IPMASQ="yes"), ipmasq=False,
                                            individual=False),
                         'DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"\n')
