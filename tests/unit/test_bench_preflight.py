"""bench.preflight: the benchmark refuses to start, with a clear message, on a machine
that is not set up (instead of minutes of "daemon exited (1)")."""

import io

from twisted.trial import unittest

from bench import preflight


def _all_there(**kw):
    base = dict(euid=0, which=lambda t: "/usr/bin/" + t, find_spec=lambda m: object(),
                etcd=lambda: "/x/etcd", plugin=lambda py: True, tun=__file__)
    base.update(kw)
    return base


class ProblemsTests(unittest.TestCase):
    def test_nothing_missing(self):
        self.assertEqual(preflight.problems(**_all_there()), [])
        self.assertEqual(preflight.check(stderr=io.StringIO(), **_all_there()), 0)

    def test_each_missing_part_is_named(self):
        cases = {
            "not root": dict(euid=1000),
            "iperf3": dict(which=lambda t: None if t == "iperf3" else "/bin/" + t),
            "pytun": dict(find_spec=lambda m: None if m == "pytun" else object()),
            "no etcd binary": dict(etcd=lambda: None),
            "'twistd flannel' is not installed": dict(plugin=lambda py: False),
            "/nonexistent/tun does not exist": dict(tun="/nonexistent/tun"),
        }
        for needle, kw in cases.items():
            err = io.StringIO()
            self.assertEqual(preflight.check(stderr=err, **_all_there(**kw)), 2, needle)
            self.assertIn(needle, err.getvalue())
            self.assertIn("bash .ci/setup", err.getvalue())

    def test_missing_modules_skip_the_checks_that_need_them(self):
        calls = []
        found = preflight.problems(**_all_there(
            find_spec=lambda m: None, etcd=lambda: calls.append("etcd"),
            plugin=lambda py: calls.append("plugin")))
        self.assertEqual(len(found), 1)
        self.assertIn("twisted.internet", found[0])
        self.assertEqual(calls, [])


class DaemonArgvTests(unittest.TestCase):
    """The benchmark starts its daemons with the lab's command line plus its own flags."""

    def test_lab_command_line_plus_bench_flags(self):
        from bench.run import HEALTH_PORT, daemon_argv
        from flannel_tw.tools.lab.run import TWISTD
        argv = daemon_argv("/w", 2, "http://192.168.250.1:2379", "192.168.250.12",
                           forward_rules=False)
        self.assertEqual(argv, TWISTD + [
            "--nodaemon", "--pidfile=", "--logfile=/w/h2.log", "flannel",
            "--etcd-endpoints=http://192.168.250.1:2379", "--iface=192.168.250.12",
            "--subnet-file=/w/h2/h2.env", "--healthz-ip=127.0.0.1",
            "--healthz-port=%d" % HEALTH_PORT, "--iptables-forward-rules=false"])
