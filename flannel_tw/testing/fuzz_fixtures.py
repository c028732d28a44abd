"""Test helpers (formerly in tests/test_fuzz.py), shared by
tests/integration/test_fuzz.py, tests/unit/test_fuzz.py.

Hostile input: hypothesis drives the UDP receive path (UdpReceiver.datagramReceived with a
FakeTun, and real datagrams on loopback) and every etcd JSON parser (parse_config,
LeaseAttrs.from_json, the client's response parsing, the subnet manager's watch and
list over StubTreq). Malformed leases in a real etcd are skipped with one warning each,
and a datagram flood from a stranger is dropped cheaply and counted.

The example counts keep this module under about 30 s; raise FLANNEL_TW_FUZZ_EXAMPLES
for a longer run."""




DEEP = "[" * 100000 + "]" * 100000
