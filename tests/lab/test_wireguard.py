"""The wireguard backend on real kernels, end to end: a real etcd in the lab's switch
namespace holding a wireguard config, one ``twistd flannel`` per host namespace (device
flannel-wg: the kernel module's where it exists, else wireguard-go, supervised by the
daemon), and a docker-like container behind each host.

- every container pings every other;
- a sniffer on the lab switch (a Python AF_PACKET socket on every bridge port) sees no
  plain inner packet (nothing from or to the overlay network, no ping payload) while
  pings succeed: only UDP between the hosts' listen ports (and etcd's TCP);
- a host restarted with a new key (its wgkey deleted) publishes the new key, the other
  hosts replace its peer, and pings work again.

Every test builds its own lab and tears it down in a cleanup, so namespaces, devices and
processes go away even when a test fails. Traffic only to addresses inside namespaces the
test created."""
import base64
import json
import os
import shutil
import signal
import sys
import tempfile

from twisted.trial import unittest

from flannel_tw.testing import skips
from flannel_tw.testing.overlay import Overlay, read_text, say, wait_for
from flannel_tw.tools.lab.run import start_daemons, start_etcd, subnet_file, wait_subnet_files
from flannel_tw.tools.lab.topology import Lab, list_netns

NETWORK = "10.5.0.0/16"
PSK = "c2VjcmV0LXByZS1zaGFyZWQta2V5LWZvci1sYWItMzI="     # 32 bytes, base64
CONFIG = json.dumps({"Network": NETWORK, "Backend": {
    "Type": "wireguard", "PSK": PSK, "PersistentKeepaliveInterval": 25}})
PORT = 51820
PATTERN = "666c616e6e656c2d7477"       # "flannel-tw" in every ping's payload


def _skip():
    reason = skips.missing(root=True, tun=True, tools=("ip", "ping"), etcd=True)
    if reason:
        return reason
    if shutil.which("wireguard-go") is None and not os.path.isdir("/sys/module/wireguard"):
        return ("needs wireguard-go (apt-get install wireguard-go) or the kernel's "
                "wireguard module")
    return None


SKIP = _skip()

# Runs in the switch namespace: every frame on every bridge port for argv[1] seconds,
# then one JSON summary of the IPv4 frames.
SNIFFER = r"""
import json, socket, struct, sys, time
from ipaddress import IPv4Address, IPv4Network
duration, network, port, pattern = (float(sys.argv[1]), IPv4Network(sys.argv[2]),
                                    int(sys.argv[3]), bytes.fromhex(sys.argv[4]))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.settimeout(0.2)
out = {"frames": 0, "ipv4": 0, "inner": [], "pattern": [], "wg_udp": 0, "etcd_tcp": 0,
       "other": []}
print("ready", flush=True)
end = time.monotonic() + duration
while time.monotonic() < end:
    try:
        frame, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    out["frames"] += 1
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        if pattern in frame:
            out["pattern"].append(["not IPv4"])
        continue
    out["ipv4"] += 1
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    proto = ip[9]
    src, dst = IPv4Address(ip[12:16]), IPv4Address(ip[16:20])
    if pattern in frame and len(out["pattern"]) < 20:
        out["pattern"].append([proto, str(src), str(dst)])
    if src in network or dst in network:
        if len(out["inner"]) < 20:
            out["inner"].append([proto, str(src), str(dst)])
        continue
    sport = dport = None
    if proto in (6, 17) and len(ip) >= ihl + 4:
        sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
    if proto == 17 and port in (sport, dport):
        out["wg_udp"] += 1
    elif proto == 6 and 2379 in (sport, dport):
        out["etcd_tcp"] += 1
    elif len(out["other"]) < 20:
        out["other"].append([proto, str(src), str(dst), sport, dport])
print(json.dumps(out), flush=True)
"""


def make_wg_overlay(testcase, hosts):
    lab = Lab()
    testcase.addCleanup(lambda: testcase.assertEqual(
        [n for n in list_netns() if n.startswith(lab.prefix)], []))
    testcase.addCleanup(lab.teardown)
    # a short directory: wireguard-go's UAPI socket lives in <subnet file dir>/wireguard,
    # and a UNIX socket path is at most 107 bytes (trial's temp paths are longer)
    workdir = tempfile.mkdtemp(prefix="fwg-", dir="/tmp")
    testcase.addCleanup(shutil.rmtree, workdir, True)
    ov = Overlay(testcase, lab, workdir)
    lab.add_switch()
    for i in hosts:
        lab.add_host(i)
    ov.etcd_url = start_etcd(lab, workdir, CONFIG)
    ov.start(list(hosts))
    say("wireguard lab %s: %s (logs %s)", lab.prefix,
        ", ".join("h%d %s c%d %s" % (i, lab.host_ip(i), i, ov.c(i).addr)
                  for i in sorted(ov.envs)), workdir)
    return ov


def wireguard_go_pids(root):
    """The wireguard-go processes below the daemon C{root} (it starts them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append((int(entry), comm))
    out, todo = [], [root]
    while todo:
        for pid, comm in children.get(todo.pop(), ()):
            todo.append(pid)
            if comm.startswith("wireguard-go"):
                out.append(pid)
    return out


def lease_key_of(ov, i):
    status, body = ov.etcd("GET", ov.lease_key(i))
    assert status == 200, body
    return json.loads(json.loads(body)["node"]["value"])["BackendData"]["PublicKey"]


class WireguardOverlayTests(unittest.TestCase):
    skip = SKIP

    def setUp(self):
        self.ov = make_wg_overlay(self, [1, 2, 3])

    def test_every_container_pings_every_other(self):
        ov = self.ov
        pairs = [(i, j) for i in (1, 2, 3) for j in (1, 2, 3) if i != j]
        for i, j in pairs:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        failed = [(i, j) for i, j in pairs if ov.ping(ov.c(i).ns, ov.c(j).addr).returncode]
        self.assertEqual(failed, [])
        # the overlay goes through flannel-wg, MTU 1500 - 80, and the leases carry keys
        route = ov.lab.exec(ov.lab.host_ns(1), ["ip", "route", "get", str(ov.c(2).addr)])
        self.assertIn("dev flannel-wg", route.stdout)
        for i in (1, 2, 3):
            self.assertEqual(ov.envs[i]["FLANNEL_MTU"], "1420")
            self.assertEqual(len(lease_key_of(ov, i)), 44)
        self.assertEqual(len({lease_key_of(ov, i) for i in (1, 2, 3)}), 3)
        # a full-size packet crosses unfragmented
        size = 1420 - 28
        cp = ov.lab.exec(ov.c(1).ns, ["ping", "-n", "-c", "2", "-W", "2", "-M", "do",
                                      "-s", str(size), str(ov.c(3).addr)], check=False)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        # the PSK and the private keys appear in no log line of any daemon
        logs = "".join(read_text(os.path.join(ov.workdir, "h%d.%s" % (i, ext)))
                       for i in (1, 2, 3) for ext in ("log", "out"))
        self.assertIn("wireguard backend", logs)
        secrets = [PSK, base64.b64decode(PSK).hex()]
        for i in (1, 2, 3):
            private = read_text(os.path.join(ov.workdir, "h%d" % i, "wgkey"))
            secrets += [private, base64.b64decode(private).hex()]
        for secret in secrets:
            self.assertNotIn(secret, logs)

    def test_no_plain_inner_packet_on_the_underlay(self):
        ov = self.ov
        for i, j in [(1, 2), (2, 3), (3, 1)]:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        proc, path = ov.spawn_py(ov.lab.switch_ns, "sniffer", SNIFFER, 6, NETWORK, PORT,
                                 PATTERN, ready="ready")
        replies = 0
        for i, j in [(1, 2), (2, 1), (1, 3), (3, 2)]:
            cp = ov.lab.exec(ov.c(i).ns, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                                          "-p", PATTERN, str(ov.c(j).addr)], check=False)
            self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
            replies += cp.stdout.count("bytes from")
        # the control: a ping between the hosts' own underlay addresses is not in the
        # overlay, so its payload crosses in the clear, and the sniffer must see it
        h1, h2 = str(ov.lab.host_ip(1)), str(ov.lab.host_ip(2))
        cp = ov.lab.exec(ov.lab.host_ns(1), ["ping", "-n", "-c", "1", "-W", "2", "-p",
                                             PATTERN, h2], check=False)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertTrue(wait_for(lambda: proc.poll() is not None, 20), read_text(path))
        summary = json.loads(read_text(path).splitlines()[-1])
        say("sniffer on the lab switch: %s", summary)
        self.assertEqual(replies, 12)
        self.assertEqual(summary["inner"], [])          # nothing from/to 10.5.0.0/16
        # the ping payload in the clear: only the control's (on both bridge ports)
        self.assertEqual(sorted(set(map(tuple, summary["pattern"]))),
                         [(1, h1, h2), (1, h2, h1)])
        self.assertGreaterEqual(summary["wg_udp"], 24)  # 12 requests + 12 replies, at least
        # besides WireGuard's UDP (and etcd's TCP) only the control's ICMP
        self.assertEqual({(o[0], o[1], o[2]) for o in summary["other"]},
                         {(1, h1, h2), (1, h2, h1)})

    def test_restart_with_new_key_rekeys_the_peers(self):
        ov = self.ov
        for i, j in [(1, 2), (3, 2), (2, 1)]:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        old = lease_key_of(ov, 2)
        pids = {i: ov.procs[i].pid for i in (1, 3)}
        ov.procs[2].send_signal(signal.SIGTERM)
        ov.procs[2].wait(timeout=15)
        keyfile = os.path.join(ov.workdir, "h2", "wgkey")
        self.assertTrue(os.path.exists(keyfile))
        os.unlink(keyfile)
        os.unlink(subnet_file(ov.workdir, 2))
        procs = start_daemons(ov.lab, ov.workdir, ov.etcd_url, [2])
        ov.procs.update(procs)
        env = wait_subnet_files(ov.workdir, procs, 30)[2]
        self.assertEqual(env["FLANNEL_SUBNET"], ov.envs[2]["FLANNEL_SUBNET"])  # lease reused
        new = lease_key_of(ov, 2)
        self.assertNotEqual(new, old)
        with open(keyfile) as f:
            self.assertEqual(len(f.read()), 44)
        for i, j in [(1, 2), (2, 1), (3, 2), (2, 3)]:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        for i in (1, 3):
            log = read_text(os.path.join(ov.workdir, "h%d.log" % i))
            self.assertIn("peer %s endpoint %s:%d" % (new, ov.lab.host_ip(2), PORT), log)
            self.assertIn("removed peer %s" % (old,), log)
            self.assertIsNone(ov.procs[i].poll())
            self.assertEqual(ov.procs[i].pid, pids[i])


CONFIGURE = r"""
import json, subprocess, sys
from ipaddress import ip_interface, ip_network
from flannel_tw.kernel.netlink import configure_link
subprocess.run(["ip", "tuntap", "add", "flannel-wg", "mode", "tun"], check=True)
subprocess.run(["ip", "addr", "add", "10.5.9.0/32", "dev", "flannel-wg"], check=True)
configure_link("flannel-wg", ip_interface("10.5.1.0/32"), 1420, ip_network("10.5.0.0/16"))
configure_link("flannel-wg", ip_interface("10.5.1.0/32"), 1420, ip_network("10.5.0.0/16"))
configure_link("flannel-wg", ip_interface("fc00:0:0:1::/128"), 1420, ip_network("fc00::/48"))
out = {}
for fam in ("-4", "-6"):
    out["addr" + fam] = json.loads(subprocess.run(
        ["ip", "-j", fam, "addr", "show", "dev", "flannel-wg"], capture_output=True,
        text=True, check=True).stdout)
    out["route" + fam] = json.loads(subprocess.run(
        ["ip", "-j", fam, "route", "show", "dev", "flannel-wg"], capture_output=True,
        text=True, check=True).stdout)
print(json.dumps(out))
"""


class ConfigureLinkTests(unittest.TestCase):
    """flannel_tw.kernel.netlink.configure_link on a real kernel (a TUN device, as wireguard-go makes)."""

    skip = skips.missing(root=True, tun=True, tools=("ip",))

    def test_address_mtu_up_and_scope_link_routes(self):
        lab = Lab()
        self.addCleanup(lab.teardown)
        lab.add_switch()
        lab.add_host(1)
        from flannel_tw.tools.lab.run import _child_env, repo_root
        import sys
        cp = lab.exec(lab.host_ns(1), [sys.executable, "-c", CONFIGURE], env=_child_env(),
                      cwd=repo_root())
        out = json.loads(cp.stdout)
        link = out["addr-4"][0]
        self.assertEqual(link["mtu"], 1420)
        self.assertIn("UP", link["flags"])
        self.assertEqual([(a["local"], a["prefixlen"]) for a in link["addr_info"]],
                         [("10.5.1.0", 32)])            # the old 10.5.9.0 is gone
        v6 = [(a["local"], a["prefixlen"]) for a in out["addr-6"][0]["addr_info"]
              if not a["local"].startswith("fe80")]
        self.assertEqual(v6, [("fc00:0:0:1::", 128)])
        self.assertEqual([(r["dst"], r.get("scope")) for r in out["route-4"]],
                         [("10.5.0.0/16", "link")])
        # IPv6 routes have no scope (the kernel keeps none): a route with no gateway
        self.assertIn(("fc00::/48", None), [(r["dst"], r.get("gateway"))
                                           for r in out["route-6"]])


class WireguardGoRestartTests(unittest.TestCase):
    skip = SKIP

    def test_killed_wireguard_go_is_restarted_and_the_overlay_heals(self):
        ov = make_wg_overlay(self, [1, 2])
        ov.assert_reaches(ov.c(1).ns, ov.c(2).addr)
        pids = wireguard_go_pids(ov.procs[1].pid)
        if not pids:
            raise unittest.SkipTest("h1 uses the kernel's wireguard module, not wireguard-go")
        self.assertEqual(len(pids), 1)
        os.kill(pids[0], signal.SIGKILL)
        log = os.path.join(ov.workdir, "h1.log")
        self.assertTrue(wait_for(lambda: "was recreated" in read_text(log), 20),
                        read_text(log)[-3000:])
        for i, j in [(1, 2), (2, 1)]:
            ov.assert_reaches(ov.c(i).ns, ov.c(j).addr)
        self.assertIsNone(ov.procs[1].poll())
        new = wireguard_go_pids(ov.procs[1].pid)
        self.assertEqual(len(new), 1)
        self.assertNotEqual(new, pids)
        route = ov.lab.exec(ov.lab.host_ns(1), ["ip", "route", "get", str(ov.c(2).addr)])
        self.assertIn("dev flannel-wg", route.stdout)


class DualStackTests(unittest.TestCase):
    """EnableIPv6 with the default Mode (separate): flannel-wg and flannel-wg-v6."""

    skip = SKIP

    def test_separate_mode_pings_v4_and_v6(self):
        from flannel_tw.testing.dualstack import DualStackLab, dualstack_config
        workdir = tempfile.mkdtemp(prefix="fwg-", dir="/tmp")
        self.addCleanup(shutil.rmtree, workdir, True)
        ds = DualStackLab(self, [1, 2], dualstack_config("wireguard"), workdir=workdir)
        ds.start([1, 2])
        ds.assert_matrix()
        for dev, dst in (("flannel-wg", ds.c(2).addr), ("flannel-wg-v6", ds.c(2).addr6)):
            route = ds.lab.exec(ds.lab.host_ns(1), ["ip", "route", "get", str(dst)])
            self.assertIn("dev %s" % dev, route.stdout)
        # the lease: PublicIPv6 and the same key in BackendV6Data
        status, body = ds.lab.exec(ds.lab.switch_ns, [
            sys.executable, "-c", ETCD_GET, "http://%s:2379/v2/keys/coreos.com/network/subnets"
            % ds.lab.gateway]).stdout.split("\n", 1)
        values = [json.loads(n["value"]) for n in json.loads(body)["node"]["nodes"]]
        self.assertEqual(len(values), 2)
        for v in values:
            self.assertEqual(v["BackendData"], v["BackendV6Data"])
            self.assertIn(v["PublicIPv6"], (str(ds.lab.host_ip6(1)), str(ds.lab.host_ip6(2))))

    def test_separate_mode_on_etcd_v3(self):
        """The config and the leases in etcd's v3 keyspace (--etcd-api=v3)."""
        from flannel_tw.testing.dualstack import DualStackLab, dualstack_config
        workdir = tempfile.mkdtemp(prefix="fwg-", dir="/tmp")
        self.addCleanup(shutil.rmtree, workdir, True)
        ds = DualStackLab(self, [1, 2], dualstack_config("wireguard"), workdir=workdir,
                          keyspace="v3")
        ds.start([1, 2])
        ds.assert_matrix()
        for i in (1, 2):
            self.assertIn("Using etcd's v3 keyspace", ds.log(i))

    def test_auto_mode_one_device_for_both(self):
        from flannel_tw.testing.dualstack import DualStackLab, dualstack_config
        workdir = tempfile.mkdtemp(prefix="fwg-", dir="/tmp")
        self.addCleanup(shutil.rmtree, workdir, True)
        ds = DualStackLab(self, [1, 2], dualstack_config("wireguard", backend_options={
            "Mode": "auto"}), workdir=workdir)
        ds.start([1, 2])
        ds.assert_matrix()
        for dst in (ds.c(2).addr, ds.c(2).addr6):
            route = ds.lab.exec(ds.lab.host_ns(1), ["ip", "route", "get", str(dst)])
            self.assertIn("dev flannel-wg ", route.stdout)
        links = ds.lab.exec(ds.lab.host_ns(1), ["ip", "-o", "link"]).stdout
        self.assertNotIn("flannel-wg-v6", links)


ETCD_GET = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=5) as r:
    print(r.status); print(r.read().decode())
"""
