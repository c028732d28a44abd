# -*- test-case-name: tests.test_etcd_client -*-
"""Typed etcd v2 errors. Pure."""


class EtcdError(Exception):
    """An etcd API error body: str() is flanneld's format ``code: message (cause) [index]``."""

    code = None

    def __init__(self, code: int, message: str, cause: str = "", index: int = 0):
        self.error_code = code
        self.message = message
        self.cause = cause
        self.index = index
        super().__init__(code, message, cause, index)

    def __str__(self):
        return "%d: %s (%s) [%d]" % (self.error_code, self.message, self.cause, self.index)


class KeyNotFound(EtcdError):
    code = 100


class TestFailed(EtcdError):
    code = 101


class NodeExist(EtcdError):
    code = 105


class EventIndexCleared(EtcdError):
    code = 401


_BY_CODE = {cls.code: cls for cls in (KeyNotFound, TestFailed, NodeExist, EventIndexCleared)}


def error_from_body(body: dict) -> EtcdError:
    """Build the most specific EtcdError subclass for an etcd error body."""
    code = int(body.get("errorCode", 0))
    cls = _BY_CODE.get(code, EtcdError)
    return cls(code, str(body.get("message", "")), str(body.get("cause", "")), int(body.get("index", 0) or 0))


class EtcdUnavailable(Exception):
    """No endpoint answered; ``errors`` maps endpoint -> the transport error seen."""

    def __init__(self, errors: dict):
        self.errors = dict(errors)
        detail = "; ".join("%s: %s" % (ep, err) for ep, err in self.errors.items())
        super().__init__("etcd cluster is unavailable or misconfigured; " + detail)


class EtcdProtocolError(Exception):
    """An answer that is neither a node response nor an etcd error body (bad JSON, bad status).

    ``status`` is the HTTP status code (or None) and ``body`` the start of the raw body (bytes).
    """

    def __init__(self, message: str, status=None, body: bytes = b""):
        self.status = status
        self.body = body
        super().__init__(message)
