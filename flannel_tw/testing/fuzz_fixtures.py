"""Test helpers (formerly in tests/test_fuzz.py), shared by
tests/integration/test_fuzz.py, tests/unit/test_fuzz.py, tests/integration/test_cni.py.
(No test module imports another: what several need lives here.)"""
import os

from hypothesis import HealthCheck, settings, strategies as st

# FLANNEL_TW_FUZZ_EXAMPLES=N runs every fuzz test with N random examples (default: the
# test's own count, derandomized so that CI runs are repeatable)
FUZZ_EXAMPLES = int(os.environ.get("FLANNEL_TW_FUZZ_EXAMPLES", "0") or 0)


def fuzz(examples):
    """hypothesis settings for a fuzz test of C{examples} examples (see FUZZ_EXAMPLES)."""
    return settings(max_examples=FUZZ_EXAMPLES or examples, deadline=None,
                    derandomize=not FUZZ_EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


# JSON values of any shape
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)

DEEP = "[" * 100000 + "]" * 100000
