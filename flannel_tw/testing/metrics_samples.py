"""Test helpers (formerly in tests/test_metrics.py), shared by
tests/lab/test_metrics.py, tests/unit/test_etcd_metrics.py, tests/unit/test_metrics.py.
(No test module imports another: what several need lives here.)"""

from prometheus_client.parser import text_string_to_metric_families


def samples(registry_or_text):
    """{(name, frozenset(labels)): value} from exposition text."""
    out = {}
    for family in text_string_to_metric_families(registry_or_text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(found, metric, **labels):
    return found[(metric, frozenset(labels.items()))]
