"""Test helpers (formerly in tests/test_process.py), shared by
tests/lab/test_health.py, tests/lab/test_process.py.
(No test module imports another: what several need lives here.)"""



CONFIG = '{"Network": "10.7.0.0/16", "Backend": {"Type": "alloc"}}'


