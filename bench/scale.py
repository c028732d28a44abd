"""
Control-plane helpers that run inside lab namespaces (``ip netns exec NS python3 -m
bench.scale ...``), started by bench/run.py. Each prints one JSON object on stdout.
Times are CLOCK_MONOTONIC (time.monotonic()), which every namespace shares, so the
parent can compare them with its own.

    put URL PREFIX BACKEND N [FIRST] [API]
                                       write N leases fast (concurrent v2 PUTs; API v3:
                                       v3 puts, see put_v3)
    config3 URL PREFIX CONFIG          write the network config into the v3 keyspace
    probe HEALTH_PORT BACKEND N GW     wait for the lease, then for N routes
    latency URL PREFIX BACKEND HEALTH_PORT GW COUNT BASE [API]
                                       add COUNT leases one at a time, time each to its route
"""
import base64
import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

# imported here, not in _put_v3: a first import inside the timed region cost the first
# new-lease sample of every v3 run 130-570 ms (the "one-time first sample")
from flannel_tw.etcd.registry_v3 import v3_value

PUBLIC_BASE = (192 << 24) | (168 << 16) | (250 << 8)


def lease_key(i):
    """Lease i: 10.(1 + i // 256).(i % 256).0/24 (the daemon's own lease lands after them)."""
    return "10.%d.%d.0-24" % (1 + i // 256, i % 256), "10.%d.%d.0" % (1 + i // 256, i % 256)


def lease_value(i, backend):
    ip = "192.168.250.%d" % (100 + i % 150)
    if backend == "udp":
        return json.dumps({"PublicIP": ip}, separators=(",", ":"))
    if backend == "host-gw":
        return json.dumps({"PublicIP": ip, "BackendType": "host-gw"}, separators=(",", ":"))
    mac = "02:%02x:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255, 1)
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan",
                       "BackendData": {"VtepMAC": mac}}, separators=(",", ":"))


def _conn(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=10)


def _put(conn, prefix, i, backend):
    key, _ = lease_key(i)
    body = urllib.parse.urlencode({"value": lease_value(i, backend), "ttl": "86400"})
    conn.request("PUT", "/v2/keys%s/subnets/%s" % (prefix, key), body=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    r.read()
    if r.status not in (200, 201):
        raise RuntimeError("PUT %s: HTTP %d" % (key, r.status))


# v3: every key gets its own lease, as real daemons write them (flanneld v0.20 and
# flannel-tw grant one per create and per renewal); the daemon's list asks no TTLs
# (EtcdV3Registry(exact_list_ttls=False)), so this costs the setup only.


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _v3(conn, path, body):
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError("POST %s: HTTP %d %r" % (path, r.status, data[:200]))
    return json.loads(data)


def _grant(conn, ttl=86400):
    return _v3(conn, "/v3/lease/grant", {"TTL": str(ttl)})["ID"]


def _put_v3(conn, prefix, i, backend, lease):
    key, _ = lease_key(i)
    _v3(conn, "/v3/kv/put", {"key": _b64("%s/subnets/%s" % (prefix, key)),
                             "value": _b64(v3_value(lease_value(i, backend))),
                             "lease": str(lease)})


def config3(url, prefix, config):
    conn = _conn(url)
    try:
        _v3(conn, "/v3/kv/put", {"key": _b64(prefix.rstrip("/") + "/config"),
                                 "value": _b64(config)})
    finally:
        conn.close()
    return {"ok": True}


def put(url, prefix, backend, n, first=0, workers=32, api="v2"):
    t0 = time.monotonic()
    if api == "v3":
        def write(conn, prefix, i, backend):
            _put_v3(conn, prefix, i, backend, _grant(conn))
    else:
        write = _put
    errors = []
    idx = iter(range(first, first + n))
    lock = threading.Lock()

    def work():
        conn = _conn(url)
        while True:
            with lock:
                i = next(idx, None)
            if i is None:
                return
            try:
                write(conn, prefix, i, backend)
            except Exception as e:   # one retry on a fresh connection
                conn.close()
                conn = _conn(url)
                try:
                    write(conn, prefix, i, backend)
                except Exception as e2:
                    errors.append("%s / %s" % (e, e2))
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = {"written": n - len(errors), "errors": errors[:5], "seconds": time.monotonic() - t0}
    if api == "v3":
        res["v3_leases"] = res["written"]   # one per key
    return res


def health(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", "/healthz")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def kernel_routes():
    """
    Main-table IPv4 /24 routes to 10.x: one raw rtnetlink dump, parsed with struct
    (about 0.05 s for 10,000 routes; pyroute2's get_routes() takes about 0.8 s, which made
    the probe both slow to notice the last route and a CPU hog next to the daemon).
    """
    import struct
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        sock.bind((0, 0))
        sock.settimeout(10)
        sock.send(struct.pack("=IHHII", 16 + 12, 26, 0x301, 1, 0)       # RTM_GETROUTE dump
                  + struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0))
        count = 0
        while True:
            data = sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                n, kind = struct.unpack_from("=IH", data, off)
                if kind in (2, 3) or n < 16:        # NLMSG_ERROR, NLMSG_DONE
                    return count
                if kind == 24:                      # RTM_NEWROUTE
                    family, dst_len, _, _, table = struct.unpack_from("=BBBBB", data, off + 16)
                    ten = False
                    a, end = off + 28, off + n
                    while a + 4 <= end:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        if atype == 15:             # RTA_TABLE
                            table = struct.unpack_from("=I", data, a + 4)[0]
                        elif atype == 1:            # RTA_DST
                            ten = data[a + 4] == 10
                        a += (alen + 3) & ~3
                    if family == socket.AF_INET and dst_len == 24 and ten and table == 254:
                        count += 1
                off += (n + 3) & ~3
    finally:
        sock.close()


def route_count(port, backend):
    if backend == "udp":
        return health(port).get("routes") or 0
    return kernel_routes()


def has_route(port, backend, i, gw, ipr=None):
    """Whether lease i's subnet is routed (udp: by the daemon's table size, see latency)."""
    _, net = lease_key(i)
    dst = net[:-1] + "1"
    r = ipr.route("get", dst=dst)[0]
    via = r.get_attr("RTA_GATEWAY")
    return via is not None and via != gw


def probe(port, backend, n, gw, timeout=120.0):
    """Times (monotonic) at which /healthz first shows a lease, and n routes."""
    deadline = time.monotonic() + timeout
    out = {"lease_at": None, "routes_at": None, "routes": 0}
    while time.monotonic() < deadline:
        try:
            h = health(port)
        except (OSError, ValueError, http.client.HTTPException):
            time.sleep(0.01)
            continue
        now = time.monotonic()
        if out["lease_at"] is None and h.get("lease"):
            out["lease_at"] = now
            out["lease"] = h["lease"]
        if out["lease_at"] is not None:
            count = h.get("routes") if backend == "udp" else kernel_routes()
            out["routes"] = count or 0
            if out["routes"] >= n:
                out["routes_at"] = time.monotonic()
                return out
        time.sleep(0.02 if backend == "udp" else 0.1)
    return out


def latency(url, prefix, backend, port, gw, count, base, api="v2"):
    """Add leases base..base+count-1 one by one; seconds from each PUT's reply to its route
    (v3: each key with a lease of its own, granted before the clock starts, as a daemon
    does)."""
    from pyroute2 import IPRoute
    conn = _conn(url)
    ipr = IPRoute() if backend != "udp" else None
    got = []
    try:
        have = route_count(port, backend) if backend == "udp" else None
        for k in range(count):
            i = base + k
            if api == "v3":
                lease = _grant(conn)
                t0 = time.monotonic()
                _put_v3(conn, prefix, i, backend, lease)
            else:
                t0 = time.monotonic()
                _put(conn, prefix, i, backend)
            deadline = t0 + 10
            while time.monotonic() < deadline:
                if backend == "udp":
                    if health(port).get("routes", 0) > have:
                        have += 1
                        break
                elif has_route(port, backend, i, gw, ipr):
                    break
                time.sleep(0.001)
            else:
                got.append(None)
                continue
            got.append(time.monotonic() - t0)
            time.sleep(0.05)
    finally:
        conn.close()
        if ipr is not None:
            ipr.close()
    return {"latencies": got}


def main(argv):
    cmd = argv[0]
    if cmd == "put":
        url, prefix, backend, n = argv[1:5]
        first = int(argv[5]) if len(argv) > 5 else 0
        api = argv[6] if len(argv) > 6 else "v2"
        res = put(url, prefix, backend, int(n), first, api=api)
    elif cmd == "config3":
        url, prefix, config = argv[1:4]
        res = config3(url, prefix, config)
    elif cmd == "probe":
        port, backend, n, gw = argv[1:5]
        res = probe(int(port), backend, int(n), gw)
    elif cmd == "latency":
        url, prefix, backend, port, gw, count, base = argv[1:8]
        api = argv[8] if len(argv) > 8 else "v2"
        res = latency(url, prefix, backend, int(port), gw, int(count), int(base), api)
    else:
        raise SystemExit("unknown command %r" % cmd)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
