# -*- test-case-name: tests.unit.test_watch -*-
"""Retry delays (pure: no reactor): Twisted's capped, jittered exponential backoff with flannel-tw's defaults."""
from twisted.application.internet import backoffPolicy


def make_backoff(initial=1.0, maximum=30.0, factor=1.5, jitter=None):
    """
    @return: a function C{attempt -> seconds}: C{initial * factor**attempt} capped at
        C{maximum}, plus C{jitter()} (default: uniform in [0, 1)).
    """
    if jitter is None:
        return backoffPolicy(initial, maximum, factor)
    return backoffPolicy(initial, maximum, factor, jitter=jitter)
