"""
Dual-stack namespace labs for tests (issue 15), on the topology of
L{flannel_tw.tools.lab.topology} with an IPv6 underlay: the lab tests of each backend
(tests/lab/test_dualstack*.py) build on this.

    ds = make_dualstack(self, [1, 2], backend="vxlan")   # etcd, daemons, containers
    ds.assert_matrix()                  # every container pings every other, v4 and v6
    ds.c(1).addr6, ds.subnet6(2), ds.lab.host_ip6(1), ds.logs()

Underlay: ``192.168.250.0/24`` and ``fd00:250::/64`` (host i: .<10+i> and ::<10+i>).
The network config (in the v2 keyspace, or the v3 one with C{keyspace="v3"}: the
daemons then run with ``--etcd-api=v3``) is L{dualstack_config}: ``10.5.0.0/16`` and ``fd00:10:5::/48`` (IPv6SubnetLen 64), so
subnet.env gets ``FLANNEL_IPV6_SUBNET=fd00:10:5:<n>::1/64`` and each container ::2 of it.
Each daemon runs with ``--iface=<host v4>`` and ``--public-ipv6=<host v6>`` (flanneld
v0.20: with an IPv4 --iface the v6 address comes only from --public-ipv6); pass
C{extra} flags for anything else.

Teardown (processes, namespaces) is registered on the test case before anything is
made, and checked: no namespace of the lab may be left.
"""
import json
import os
from ipaddress import IPv4Interface, IPv6Interface

from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.testing.overlay import SETTLE, LabCommands, read_text, say, wait_for
from flannel_tw.tools.lab.run import (
    _daemon_logs, daemon_argv, start_etcd, subnet_file, wait_subnet_files, _child_env)
from flannel_tw.tools.lab.topology import Lab, list_netns, stop_pids

UNDERLAY = "192.168.250.0/24"
UNDERLAY6 = "fd00:250::/64"
NETWORK = "10.5.0.0/16"
NETWORK6 = "fd00:10:5::/48"


def dualstack_config(backend="vxlan", network=NETWORK, network6=NETWORK6, backend_options=None,
                     **keys):
    """
    The network config JSON text: C{Network}, C{EnableIPv6: true}, C{IPv6Network} and a
    C{Backend} of type C{backend} (plus C{backend_options}); C{keys} are added as they
    are (e.g. C{IPv6SubnetLen=80}, C{EnableIPv4=False}).
    """
    config = {"Network": network, "EnableIPv6": True, "IPv6Network": network6}
    config["Backend"] = dict({"Type": backend}, **(backend_options or {}))
    config.update(keys)
    return json.dumps(config)


class DualStackLab(LabCommands):
    """A dual-stack lab with etcd, daemons and containers; see L{make_dualstack}."""

    def __init__(self, testcase, hosts, config, underlay=UNDERLAY, underlay6=UNDERLAY6,
                 keyspace="v2", workdir=None):
        self.testcase = testcase
        self.lab = lab = Lab(subnet=underlay, subnet6=underlay6)
        testcase.addCleanup(lambda: testcase.assertEqual(
            [n for n in list_netns() if n.startswith(lab.prefix)], []))
        testcase.addCleanup(lab.teardown)
        # workdir: e.g. a short one for wireguard-go's UAPI socket (at most 107 bytes)
        self.workdir = workdir or os.path.abspath(testcase.mktemp())
        os.makedirs(self.workdir, exist_ok=True)
        self.config = config
        self.keyspace = keyspace
        self.procs = {}
        self.envs = {}
        lab.add_switch()
        for i in hosts:
            lab.add_host(i)
        self.etcd_url = start_etcd(lab, self.workdir, config, keyspace=keyspace)

    # -- daemons --------------------------------------------------------------------

    def argv(self, i, ip_masq=False, extra=()):
        """Host i's twistd command line: the lab's, plus --public-ipv6 and C{extra}."""
        return daemon_argv(self.workdir, i, self.etcd_url, self.lab.host_ip(i), ip_masq,
                           extra=["--public-ipv6=%s" % self.lab.host_ip6(i),
                                  "--etcd-api=%s" % self.keyspace] + list(extra))

    def start(self, hosts, ip_masq=False, extra=(), timeout=30):
        """Start the daemons of C{hosts}, wait for their subnet.env, add their containers
        (dual-stack when subnet.env has FLANNEL_IPV6_SUBNET)."""
        env = _child_env()
        procs = {}
        for i in hosts:
            os.makedirs(os.path.join(self.workdir, "h%d" % i), exist_ok=True)
            procs[i] = self.lab.spawn(self.lab.host_ns(i), self.argv(i, ip_masq, extra),
                                      os.path.join(self.workdir, "h%d.out" % i), env=env,
                                      cwd=self.workdir)
        self.procs.update(procs)
        self.envs.update(wait_subnet_files(self.workdir, procs, timeout))
        for i in hosts:
            if i not in self.lab.containers:
                self.lab.add_container(i, subnet_file(self.workdir, i))
        say("dual-stack lab %s: %s (logs %s)", self.lab.prefix,
            ", ".join("h%d %s/%s c%d %s" % (i, self.lab.host_ip(i), self.lab.host_ip6(i), i,
                                             "/".join(str(a) for a in self.c(i).addrs()))
                      for i in sorted(hosts)), self.workdir)

    def stop(self, i):
        proc = self.procs.pop(i)
        stop_pids([proc.pid], grace=8.0)
        proc.wait(timeout=5)

    def c(self, i):
        return self.lab.containers[i]

    def subnet(self, i):
        return IPv4Interface(self.envs[i]["FLANNEL_SUBNET"]).network

    def subnet6(self, i):
        """Host i's FLANNEL_IPV6_SUBNET as a network, or None."""
        text = self.envs[i].get("FLANNEL_IPV6_SUBNET")
        return IPv6Interface(text).network if text else None

    def log(self, i):
        return read_text(os.path.join(self.workdir, "h%d.log" % i))

    def logs(self, *hosts):
        return "\n".join(_daemon_logs(self.workdir, i) for i in hosts or sorted(self.procs))

    # -- traffic --------------------------------------------------------------------

    def sh(self, ns, *argv, check=True):
        return self.lab.exec(ns, list(argv), check=check).stdout

    def matrix(self, families=(4, 6), settle=SETTLE, hosts=None):
        """
        Every container pings every other container's address of each family in
        C{families}, retried until C{settle} s pass.  C{{(i, j, family): ok}}; a family a
        container lacks (no FLANNEL_IPV6_SUBNET) counts as a failure.
        """
        hosts = sorted(self.lab.containers if hosts is None else hosts)
        todo = [(i, j, f) for f in families for i in hosts for j in hosts if i != j]
        results = {}

        def target(j, f):
            return self.c(j).addr if f == 4 else self.c(j).addr6

        def round_():
            left = []
            for i, j, f in todo:
                addr = target(j, f)
                ok = addr is not None and self.ping(self.c(i).ns, addr).returncode == 0
                results[(i, j, f)] = ok
                if not ok:
                    left.append((i, j, f))
            todo[:] = left
            return not todo
        wait_for(round_, settle, interval=0.2)
        return results

    def assert_matrix(self, families=(4, 6), settle=SETTLE, hosts=None):
        """L{matrix}; fails naming each pair without a reply (c1->c2/v6) and the logs."""
        results = self.matrix(families, settle, hosts)
        failed = ["c%d->c%d/v%d" % k for k, ok in sorted(results.items()) if not ok]
        if failed:
            self.testcase.fail("%d of %d pings failed: %s\n%s"
                               % (len(failed), len(results), ", ".join(failed), self.logs()))
        return results


def make_dualstack(testcase, hosts, backend="vxlan", start=None, config=None, ip_masq=False,
                   extra=(), keyspace="v2"):
    """
    Build a dual-stack lab with C{hosts} (host numbers), a real etcd holding C{config}
    (default L{dualstack_config}(C{backend})), and start the daemons (plus containers) of
    C{start} (default: all) with C{ip_masq} and C{extra} flags.  Returns the
    L{DualStackLab}; everything is torn down in the test's cleanups. C{keyspace}: the
    etcd keyspace ("v2" or "v3") of the config, the leases and the daemons' --etcd-api.
    """
    ds = DualStackLab(testcase, hosts, config or dualstack_config(backend), keyspace=keyspace)
    ds.start(list(hosts if start is None else start), ip_masq=ip_masq, extra=extra)
    return ds


def no_crash(testcase, ds, hosts):
    """Every daemon of C{hosts} still runs, and none logged a traceback."""
    for i in hosts:
        testcase.assertIsNone(ds.procs[i].poll(), "daemon h%d exited:\n%s" % (i, ds.logs(i)))
        log = ds.log(i)
        testcase.assertNotIn("Traceback", log, log[-3000:])
        testcase.assertNotIn("Unhandled", log, log[-3000:])


def etcd_get(ds, key):
    """A v2 GET of C{<prefix>/subnets} from the switch namespace: {key name: value JSON}
    (C{key} is unused: every lease is returned)."""
    url = "http://%s:2379/v2/keys%s/subnets" % (ds.lab.gateway, DEFAULT_PREFIX)
    out = ds.py(ds.lab.switch_ns, "import sys, urllib.request\n"
                "o = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
                "print(o.open(sys.argv[1], timeout=5).read().decode())\n", url).stdout
    nodes = json.loads(out)["node"].get("nodes", [])
    return {n["key"].rsplit("/", 1)[1]: json.loads(n["value"]) for n in nodes}
