# -*- test-case-name: tests.unit.test_lab_topology, tests.integration.test_lab_topology, tests.lab.test_lab_topology -*-
"""
``flannel-tw lab``: build a namespace lab, run a real etcd and one flannel-tw
daemon per host, put a docker-like container behind each host, and ping every
container from every other container and host.

    python3 -m flannel_tw.tools.lab.run --hosts 2 --backend udp
    python3 -m flannel_tw.tools.lab.run --backend vxlan --ip-masq   # or host-gw, wireguard
    python3 -m flannel_tw.tools.lab.run --ipv6 --backend vxlan   # dual-stack
    python3 -m flannel_tw.tools.lab.run --keep          # leave it running
    python3 -m flannel_tw.tools.lab.run down [PREFIX]   # tear down kept labs

Exit status: 0 when every ping succeeded, 1 when some failed or set-up failed,
2 for a usage or environment problem, 130 when interrupted.

Why this module is longer than 400 lines: it is the whole lab command (etcd helper,
daemons, containers, ping matrix, tear-down) and the process helpers the tests and the
benchmark start daemons with; the namespace plumbing lives in L{flannel_tw.tools.lab.topology}.
"""
import argparse
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from ipaddress import IPv4Network, IPv6Network

import flannel_tw
from flannel_tw.model.config import DEFAULT_PREFIX
from flannel_tw.tools.lab.topology import (
    Lab, LabError, stop_pids, cleanup_stale, parse_subnet_env)

STATE_DIR = "/run/flannel-tw-lab"
BACKENDS = ("udp", "vxlan", "host-gw", "wireguard")
OK, FAIL = "\u2713", "\u2717"

# ``python3 -m twisted.scripts.twistd`` does nothing: that module has no
# ``__main__`` block (Twisted 22-26), so run twistd's entry point directly.
TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; "
          "from twisted.scripts.twistd import run; run()"]


class _Interrupted(Exception):
    pass


def repo_root() -> str:
    """The directory holding ``flannel_tw`` (and ``twisted/plugins``)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(flannel_tw.__file__)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flannel-tw lab",
        description="Run flannel-tw on N namespace hosts with a real etcd and ping "
                    "container to container.  Needs root and iproute2.")
    p.add_argument("words", nargs="*", metavar="up|down [PREFIX]",
                   help="up (default) builds and tests a lab; 'down [PREFIX]' tears down "
                        "kept labs (all of them without a PREFIX)")
    p.add_argument("--down", action="store_true", help="same as the down command")
    p.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    p.add_argument("--backend", choices=BACKENDS, default="udp", help="default udp")
    p.add_argument("--network", default="10.5.0.0/16", help="overlay network (default 10.5.0.0/16)")
    p.add_argument("--underlay", default="192.168.250.0/24",
                   help="underlay subnet of the lab switch (default 192.168.250.0/24)")
    p.add_argument("--ip-masq", action="store_true", help="pass --ip-masq to every daemon")
    p.add_argument("--ipv6", action="store_true",
                   help="dual-stack: a ULA underlay (--underlay6), EnableIPv6 with "
                        "IPv6Network --network6, --public-ipv6 per host, pings over both "
                        "families")
    p.add_argument("--network6", default="fd00:10:5::/48",
                   help="with --ipv6: the overlay IPv6Network (default fd00:10:5::/48)")
    p.add_argument("--underlay6", default="fd00:250::/64",
                   help="with --ipv6: the lab switch's IPv6 subnet (default fd00:250::/64)")
    p.add_argument("--etcd-api", choices=("v2", "v3"), default="v2",
                   help="the etcd keyspace of the config and the leases; each daemon runs "
                        "with --etcd-api=that (default v2)")
    p.add_argument("--keep", action="store_true",
                   help="leave the lab running and print how to use and tear it down")
    p.add_argument("--timeout", type=float, default=60,
                   help="seconds to wait for each daemon's subnet.env (default 60)")
    p.add_argument("--settle", type=float, default=20,
                   help="seconds to keep retrying failed pings while routes arrive (default 20)")
    p.add_argument("--workdir", default=None,
                   help="where logs and subnet.env files go (default: a new temp dir)")
    return p


def _say(*parts):
    print(*parts, flush=True)


def check_environment():
    """Returns an error message, or None when the lab can run here."""
    if os.geteuid() != 0:
        return "flannel-tw lab needs root (network namespaces, veths, bridges)"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return "flannel-tw lab needs the %r command (iproute2 / iputils-ping)" % tool
    if not os.path.isdir("/var/run/netns") and not os.access("/var/run", os.W_OK):
        return "cannot create network namespaces here (/var/run not writable)"
    return None


def _tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no %s)" % path
    return "\n".join("    " + l for l in data.splitlines()[-lines:]) or "    (empty)"


# -- etcd ---------------------------------------------------------------------

def etcd_helper(argv) -> int:
    """
    Runs inside the switch namespace (started by ``up``): start etcd with
    flannel_tw.testing.etcd.EtcdServer, publish the network config, write the
    ready file, then keep etcd up until SIGTERM.  Living in its own process
    lets the lab outlive ``up`` with --keep (EtcdServer ties etcd's life to
    its parent's).  argv: HOST NETNS CONFIG_JSON READY_FILE [KEYSPACE]: the config
    goes to the v2 keyspace (default) or the v3 one.
    """
    from flannel_tw.testing.etcd import EtcdServer
    from flannel_tw.testing.v3raw import raw_put
    host, netns, config, ready = argv[:4]
    keyspace = argv[4] if len(argv) > 4 else "v2"
    server = EtcdServer(host=host, client_port=2379, netns=netns)

    def stop(signum, frame):
        server.stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.start(timeout=20)
        if keyspace == "v3":
            raw_put(server, DEFAULT_PREFIX + "/config", config)
        else:
            server.put_config(config)
        with open(ready + ".tmp", "w") as f:
            json.dump({"url": server.url, "pid": server.process.pid,
                       "log": server.log_path}, f)
        os.rename(ready + ".tmp", ready)
        print("etcd ready at %s, log %s" % (server.url, server.log_path), flush=True)
        while True:
            signal.pause()
    except Exception as e:
        print("etcd helper: %s" % (e,), file=sys.stderr, flush=True)
        return 1
    finally:
        server.stop()


def start_etcd(lab, workdir, config, timeout=40, keyspace="v2"):
    """Start the etcd helper in the switch namespace with the config in C{keyspace}
    ("v2" or "v3"); returns the client URL."""
    ready = os.path.join(workdir, "etcd.ready")
    log = os.path.join(workdir, "etcd-helper.log")
    env = _child_env()
    proc = lab.spawn(lab.switch_ns,
                     [sys.executable, "-m", "flannel_tw.tools.lab.run", "_etcd",
                      str(lab.gateway), lab.switch_ns, config, ready, keyspace],
                     log, env=env, cwd=repo_root())
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if proc.poll() is not None:
            raise LabError("etcd did not start (exit %s):\n%s" % (proc.returncode, _tail(log)))
        if time.monotonic() > deadline:
            raise LabError("etcd not ready after %ss:\n%s" % (timeout, _tail(log)))
        time.sleep(0.1)
    with open(ready) as f:
        return json.load(f)["url"]


# -- daemons ------------------------------------------------------------------

def _child_env():
    env = dict(os.environ)
    root = repo_root()
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    return env


def daemon_argv(workdir, i, etcd_url, host_ip, ip_masq=False, subnet_path=None, extra=()):
    """
    The twistd command line for host ``i`` (the lab's, the tests' and the benchmark's):
    its log in C{workdir}, its subnet file at C{subnet_path} (default
    L{subnet_file}), then C{extra} flags.
    """
    argv = TWISTD + ["--nodaemon", "--pidfile=",
            "--logfile=%s" % os.path.join(workdir, "h%d.log" % i),
            "flannel",
            "--etcd-endpoints=%s" % etcd_url,
            "--iface=%s" % host_ip,
            "--subnet-file=%s" % (subnet_path or subnet_file(workdir, i))]
    if ip_masq:
        argv.append("--ip-masq")
    return argv + list(extra)


def subnet_file(workdir, i):
    return os.path.join(workdir, "h%d" % i, "subnet.env")


def start_daemons(lab, workdir, etcd_url, hosts, ip_masq=False, extra=()):
    procs = {}
    env = _child_env()
    for i in hosts:
        os.makedirs(os.path.join(workdir, "h%d" % i), exist_ok=True)
        # a dual-stack lab: flanneld v0.20 takes the v6 address of an IPv4 --iface
        # only from --public-ipv6
        v6 = ["--public-ipv6=%s" % lab.host_ip6(i)] if lab.subnet6 is not None else []
        procs[i] = lab.spawn(lab.host_ns(i),
                             daemon_argv(workdir, i, etcd_url, lab.host_ip(i), ip_masq,
                                         extra=v6 + list(extra)),
                             os.path.join(workdir, "h%d.out" % i), env=env, cwd=workdir)
    return procs


def wait_subnet_files(workdir, procs, timeout):
    """Wait until every host's subnet.env has FLANNEL_SUBNET and FLANNEL_MTU."""
    deadline = time.monotonic() + timeout
    pending = set(procs)
    envs = {}
    while pending:
        for i in sorted(pending):
            path = subnet_file(workdir, i)
            if os.path.exists(path):
                env = parse_subnet_env(path)
                if "FLANNEL_SUBNET" in env and "FLANNEL_MTU" in env:
                    envs[i] = env
                    pending.discard(i)
                    continue
            if procs[i].poll() is not None:
                raise LabError("flannel on h%d exited with %s before writing %s\n%s"
                               % (i, procs[i].returncode, path, _daemon_logs(workdir, i)))
        if pending and time.monotonic() > deadline:
            i = min(pending)
            raise LabError("no %s after %ss\n%s" % (subnet_file(workdir, i), timeout,
                                                     _daemon_logs(workdir, i)))
        if pending:
            time.sleep(0.2)
    return envs


def _daemon_logs(workdir, i):
    log = os.path.join(workdir, "h%d.log" % i)
    out = os.path.join(workdir, "h%d.out" % i)
    return "--- %s (tail):\n%s\n--- %s (tail):\n%s" % (log, _tail(log), out, _tail(out))


# -- report -------------------------------------------------------------------

def host_table(lab, envs):
    rows = [("host", "namespace", "underlay IP", "subnet", "MTU", "container")]
    v6 = lab.subnet6 is not None
    for i in sorted(envs):
        c = lab.containers.get(i)
        rows.append(("h%d" % i, lab.host_ns(i),
                     str(lab.host_ip(i)) + (" " + str(lab.host_ip6(i)) if v6 else ""),
                     envs[i].get("FLANNEL_SUBNET", "?")
                     + (" " + envs[i].get("FLANNEL_IPV6_SUBNET", "(no v6)") if v6 else ""),
                     envs[i].get("FLANNEL_MTU", "?"),
                     " ".join(str(a) for a in c.addrs()) if c else "-"))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def ping_matrix(lab, hosts, settle, family=4):
    """
    Every container pings every other container, and every host pings every
    remote container, at its address of C{family} (4 or 6; a container without a v6
    address fails).  Failures are retried until ``settle`` seconds have
    passed (remote routes may still be arriving).  Returns {(src, dst): bool}
    where src is "c<i>" or "h<i>" and dst is "c<j>".
    """
    pairs = []
    for i in hosts:
        for j in hosts:
            if i != j:
                pairs.append(("c%d" % i, lab.containers[i].ns, j))
    for i in hosts:
        for j in hosts:
            if i != j:
                pairs.append(("h%d" % i, lab.host_ns(i), j))
    results = {}
    deadline = time.monotonic() + settle
    todo = list(pairs)
    while True:
        left = []
        for src, ns, j in todo:
            c = lab.containers[j]
            addr = c.addr if family == 4 else c.addr6
            ok = addr is not None and lab.ping(ns, addr, count=1, timeout=1)
            results[(src, "c%d" % j)] = ok
            if not ok:
                left.append((src, ns, j))
        todo = left
        if not todo or time.monotonic() > deadline:
            return results
        time.sleep(0.5)


def render_matrix(hosts, results):
    cols = ["c%d" % j for j in hosts]
    rows = ["c%d" % i for i in hosts] + ["h%d" % i for i in hosts]
    out = ["from\\to " + " ".join(c.rjust(4) for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            if (r, c) in results:
                cells.append((OK if results[(r, c)] else FAIL).rjust(4))
            else:
                cells.append("-".rjust(4))
        out.append(r.ljust(7) + " " + " ".join(cells))
    return "\n".join(out)


# -- up / down ----------------------------------------------------------------

def _state_path(prefix):
    return os.path.join(STATE_DIR, prefix + ".json")


def save_state(lab, workdir, args):
    os.makedirs(STATE_DIR, exist_ok=True)
    state = lab.state()
    state.update(workdir=workdir, backend=args.backend, network=args.network,
                 network6=args.network6 if args.ipv6 else None)
    with open(_state_path(lab.prefix), "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    return _state_path(lab.prefix)


def down(prefix=None) -> int:
    paths = [_state_path(prefix)] if prefix else sorted(glob.glob(os.path.join(STATE_DIR, "*.json")))
    if prefix and not os.path.exists(paths[0]):
        removed = cleanup_stale(prefix)
        _say("no state file for %s; removed namespaces: %s" % (prefix, " ".join(removed) or "none"))
        return 0
    if not paths:
        _say("no kept labs in %s" % STATE_DIR)
        return 0
    for path in paths:
        with open(path) as f:
            state = json.load(f)
        p = state["prefix"]
        stop_pids(state.get("pids", []))
        removed = cleanup_stale(p)
        wd = state.get("workdir")
        if wd and os.path.isdir(wd) and os.path.basename(wd).startswith("flannel-tw-lab-"):
            shutil.rmtree(wd, ignore_errors=True)
        os.unlink(path)
        _say("lab %s torn down (namespaces: %s)" % (p, " ".join(removed) or "none"))
    return 0


def up(args) -> int:
    problem = check_environment()
    if problem:
        print("flannel-tw lab: " + problem, file=sys.stderr)
        return 2
    if not 1 <= args.hosts <= 50:
        print("flannel-tw lab: --hosts must be 1..50", file=sys.stderr)
        return 2
    try:
        network = IPv4Network(args.network)
    except ValueError as e:
        print("flannel-tw lab: bad --network: %s" % e, file=sys.stderr)
        return 2
    network6 = None
    if args.ipv6:
        try:
            network6 = IPv6Network(args.network6)
            Lab.check_subnet6(args.underlay6)
        except ValueError as e:
            print("flannel-tw lab: bad --network6/--underlay6: %s" % e, file=sys.stderr)
            return 2
    if not os.path.isdir(os.path.join(repo_root(), "twisted", "plugins")):
        print("flannel-tw lab: warning: no twisted/plugins under %s" % repo_root(),
              file=sys.stderr)

    lab = Lab(subnet=args.underlay, subnet6=args.underlay6 if args.ipv6 else None)
    workdir = os.path.abspath(
        args.workdir or tempfile.mkdtemp(prefix="flannel-tw-lab-%s-" % lab.prefix))
    os.makedirs(workdir, exist_ok=True)
    hosts = list(range(1, args.hosts + 1))
    keep = False
    ok = False

    def on_term(signum, frame):
        raise _Interrupted()

    old_term = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _say("lab %s: %d hosts, backend %s, network %s, logs in %s"
             % (lab.prefix, args.hosts, args.backend,
                "%s and %s" % (network, network6) if network6 else network, workdir))
        lab.add_switch()
        for i in hosts:
            lab.add_host(i)
        config = {"Network": str(network), "Backend": {"Type": args.backend}}
        if network6 is not None:
            config.update(EnableIPv6=True, IPv6Network=str(network6))
        config = json.dumps(config)
        etcd_url = start_etcd(lab, workdir, config, keyspace=args.etcd_api)
        _say("etcd at %s (in %s), config %s in the %s keyspace"
             % (etcd_url, lab.switch_ns, config, args.etcd_api))
        procs = start_daemons(lab, workdir, etcd_url, hosts, args.ip_masq,
                              extra=["--etcd-api=%s" % args.etcd_api])
        envs = wait_subnet_files(workdir, procs, args.timeout)
        for i in hosts:
            lab.add_container(i, subnet_file(workdir, i))
        _say("")
        _say(host_table(lab, envs))
        _say("")
        results = {}
        for family in ((4, 6) if network6 else (4,)):
            got = ping_matrix(lab, hosts, args.settle, family)
            if network6:
                _say("IPv%d:" % family)
            _say(render_matrix(hosts, got))
            results.update(((src, dst + ("/v6" if family == 6 else "")), ok)
                           for (src, dst), ok in got.items())
        failed = sorted(k for k, v in results.items() if not v)
        _say("")
        if failed:
            _say("%d of %d pings failed: %s" % (len(failed), len(results),
                                                ", ".join("%s->%s" % k for k in failed)))
            _say("daemon logs: %s/h<i>.log" % workdir)
        else:
            _say("all %d pings succeeded" % len(results))
        ok = not failed
        if args.keep:
            path = save_state(lab, workdir, args)
            keep = True
            _say("")
            _say("lab %s kept (state %s). Enter a namespace with:" % (lab.prefix, path))
            for i in hosts:
                _say("  ip netns exec %s bash      # host h%d" % (lab.host_ns(i), i))
                _say("  ip netns exec %s bash     # container behind h%d"
                     % (lab.container_ns(i), i))
            _say("  ip netns exec %s bash      # switch + etcd %s" % (lab.switch_ns, etcd_url))
            _say("logs: %s" % workdir)
            _say("tear down: flannel-tw lab down %s   (or: python3 -m flannel_tw.tools.lab.run down %s)"
                 % (lab.prefix, lab.prefix))
        return 0 if ok else 1
    except (LabError, OSError) as e:
        print("flannel-tw lab: %s" % (e,), file=sys.stderr)
        print("logs kept in %s" % workdir, file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Interrupted):
        print("\nflannel-tw lab: interrupted, tearing down (logs kept in %s)" % workdir,
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        if not keep:
            try:
                lab.teardown()
            except KeyboardInterrupt:
                lab.teardown()
            if ok and not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    """Entry point of ``flannel-tw lab``; ``argv`` excludes the program name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_etcd"]:
        return etcd_helper(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    words = list(args.words)
    if words[:1] == ["down"]:
        args.down = True
        words = words[1:]
    elif words[:1] == ["up"]:
        words = words[1:]
    if args.down:
        if len(words) > 1:
            parser.error("down takes at most one lab prefix")
        if os.geteuid() != 0:
            print("flannel-tw lab down: needs root", file=sys.stderr)
            return 2
        return down(words[0] if words else None)
    if words:
        parser.error("unexpected arguments: %s" % " ".join(words))
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
