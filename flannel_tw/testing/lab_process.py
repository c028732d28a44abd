"""Test helpers (formerly in tests/test_process.py), shared by
tests/lab/test_health.py, tests/lab/test_process.py.

``twistd -n flannel`` and ``twistd -ny tac/flannel.tac`` as real processes, each in a
host namespace of the lab, against a real etcd in the lab's switch namespace
(alloc backend: these tests are about the control plane, not the data path)."""



CONFIG = '{"Network": "10.7.0.0/16", "Backend": {"Type": "alloc"}}'


