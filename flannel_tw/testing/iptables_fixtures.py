"""Test helpers (formerly in tests/test_iptables.py), shared by
tests/integration/test_iptables.py, tests/lab/test_iptables.py, tests/unit/test_iptables.py,
tests/unit/test_ip6tables.py, tests/lab/test_ip6tables.py.
(No test module imports another: what several need lives here.)"""




N, S = "10.5.0.0/16", "10.5.34.0/24"
MASQ_S = [
    "-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN",
    "-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
    "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.34.0/24 -j RETURN",
    "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE",
]
FORWARD_S = ["-A FORWARD -s 10.5.0.0/16 -j ACCEPT", "-A FORWARD -d 10.5.0.0/16 -j ACCEPT"]

# the IPv6 rules as ``ip6tables -S`` prints them (tests/unit and tests/lab test_ip6tables)
N6, S6 = "fd00:10:5::/48", "fd00:10:5:22::/64"
C = '-m comment --comment "flanneld masq"'
F = '-m comment --comment "flanneld forward"'
MASQ6_S = [
    "-A POSTROUTING %s -j FLANNEL-POSTRTG" % C,
    "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 %s -j RETURN" % C,
    "-A FLANNEL-POSTRTG -s %s -d %s %s -j RETURN" % (N6, N6, C),
    "-A FLANNEL-POSTRTG -s %s ! -d ff00::/8 %s -j MASQUERADE --random-fully" % (N6, C),
    "-A FLANNEL-POSTRTG ! -s %s -d %s %s -j RETURN" % (N6, S6, C),
    "-A FLANNEL-POSTRTG ! -s %s -d %s %s -j MASQUERADE --random-fully" % (N6, N6, C),
]
FORWARD6_S = [
    "-A FORWARD %s -j FLANNEL-FWD" % F,
    "-A FLANNEL-FWD -s %s %s -j ACCEPT" % (N6, F),
    "-A FLANNEL-FWD -d %s %s -j ACCEPT" % (N6, F),
]
