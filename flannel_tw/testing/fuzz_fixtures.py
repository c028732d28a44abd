"""Test helpers (formerly in tests/test_fuzz.py), shared by
tests/integration/test_fuzz.py, tests/unit/test_fuzz.py.
(No test module imports another: what several need lives here.)"""




DEEP = "[" * 100000 + "]" * 100000
