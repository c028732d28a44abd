"""Test helpers (formerly in tests/test_iptables.py), shared by
tests/integration/test_iptables.py, tests/lab/test_iptables.py, tests/unit/test_iptables.py.
(No test module imports another: what several need lives here.)"""




N, S = "10.5.0.0/16", "10.5.34.0/24"
MASQ_S = [
    "-A POSTROUTING -s 10.5.0.0/16 -d 10.5.0.0/16 -j RETURN",
    "-A POSTROUTING -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE",
    "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.34.0/24 -j RETURN",
    "-A POSTROUTING ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE",
]
FORWARD_S = ["-A FORWARD -s 10.5.0.0/16 -j ACCEPT", "-A FORWARD -d 10.5.0.0/16 -j ACCEPT"]
