# -*- test-case-name: tests.unit.test_etcd_client, tests.integration.test_etcd_client -*-
"""Typed etcd v2 errors. Pure (no reactor)."""
from twisted.internet.defer import CancelledError


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

# etcd v2's error codes (etcd's error/error.go): 1xx command, 2xx post form, 3xx raft,
# 4xx etcd (watcher, event index), 500 client internal.
KNOWN_CODES = frozenset([100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110,
                         200, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212,
                         300, 301, 400, 401, 402, 403, 404, 500])
# Server-side codes: the member cannot serve (raft internal error, no leader / election
# in progress; etcd sends them with HTTP 500). The request goes to the next endpoint.
SERVER_CODES = frozenset([300, 301])

# Every label value of the client's error counter (flannel_etcd_errors_total{kind}): a
# fixed set, whatever the remote side sends.
ERROR_KINDS = (("transport", "server_error", "too_large", "bad_encoding", "silent",
                "unavailable", "protocol", "index_went_back", "other", "etcd_other")
               + tuple("etcd_%d" % code for code in sorted(KNOWN_CODES)))


def etcd_error_kind(code) -> str:
    """The error-counter kind of an etcd error code: C{etcd_<code>} for etcd's own codes,
    C{etcd_other} for anything else."""
    return "etcd_%d" % code if code in KNOWN_CODES else "etcd_other"


def failure_kind(failure):
    """
    How the etcd clients count a failed request for metrics: C{(kind, answered)}, where
    C{kind} is from the fixed label set and C{answered} says whether etcd itself answered
    (an etcd API error or an index that went back is an answer); None for a cancelled
    request, which is not counted.
    """
    if failure.check(EtcdError):
        return etcd_error_kind(failure.value.error_code), True
    if failure.check(EtcdUnavailable):
        return "unavailable", False
    if failure.check(EtcdProtocolError):
        return "protocol", False
    if failure.check(EtcdIndexWentBack):
        return "index_went_back", True
    if failure.check(CancelledError):
        return None
    return "other", False


def error_from_body(body: dict) -> EtcdError:
    """Build the most specific EtcdError subclass for an etcd error body."""
    code = int(body.get("errorCode", 0))
    cls = _BY_CODE.get(code, EtcdError)
    return cls(code, str(body.get("message", "")), str(body.get("cause", "")), int(body.get("index", 0) or 0))


_CLIENT_CERT_REJECTED = ("bad certificate", "unknown ca", "certificate required",
                         "certificate unknown", "unsupported certificate", "access denied",
                         "certificate revoked", "certificate expired")


def describe_transport_error(err, tls_files=None) -> str:
    """
    A one-line description of a transport failure for logs and /healthz: the reasons
    inside Twisted's ResponseNeverReceived/RequestTransmissionFailed are unwrapped, and a
    TLS handshake failure says which side refused and which file to check.

    @param tls_files: optional dict with C{ca}, C{cert}, C{key} paths (None when unused).
    """
    reasons = getattr(err, "reasons", None)
    if reasons:
        parts = []
        for r in reasons:
            part = describe_transport_error(getattr(r, "value", r), tls_files)
            if part not in parts:
                parts.append(part)
        return "; ".join(parts)
    tls_files = tls_files or {}
    cls = type(err)
    if cls.__module__.startswith("OpenSSL") or cls.__name__ == "SSLError":
        detail = []
        for item in (err.args[0] if err.args and isinstance(err.args[0], list) else err.args):
            text = item[-1] if isinstance(item, tuple) and item else item
            if text and str(text) not in detail:
                detail.append(str(text))
        why = ", ".join(detail) or cls.__name__
        if "certificate verify failed" in why:
            return ("TLS handshake failed: etcd's certificate is not trusted by %s (%s)"
                    % ("CA file " + tls_files["ca"] if tls_files.get("ca")
                       else "the system CA roots (no --etcd-cafile)", why))
        if any(marker in why for marker in _CLIENT_CERT_REJECTED):
            return ("TLS handshake failed: etcd rejected our client certificate %s (%s)"
                    % (tls_files.get("cert") or "(none given: set --etcd-certfile and "
                       "--etcd-keyfile)", why))
        return "TLS handshake failed: %s" % (why,)
    if isinstance(err, EtcdMemberError):
        return str(err)
    if cls.__name__ == "VerificationError":  # service_identity: name mismatch
        return "TLS: etcd's certificate does not match its address: %s" % (err,)
    text = str(err).strip()
    return "%s: %s" % (cls.__name__, text) if text else cls.__name__


class EtcdUnavailable(Exception):
    """No endpoint answered; ``errors`` maps endpoint -> the transport error seen, and
    ``descriptions`` endpoint -> a readable line (L{describe_transport_error})."""

    def __init__(self, errors: dict, tls_files=None):
        self.errors = dict(errors)
        self.descriptions = {ep: describe_transport_error(err, tls_files)
                             for ep, err in self.errors.items()}
        detail = "; ".join("%s: %s" % (ep, text) for ep, text in self.descriptions.items())
        super().__init__("etcd cluster is unavailable or misconfigured; " + detail)


class EtcdProtocolError(Exception):
    """An answer that is neither a node response nor an etcd error body (bad JSON, bad status).

    ``status`` is the HTTP status code (or None) and ``body`` the start of the raw body (bytes).
    """

    def __init__(self, message: str, status=None, body: bytes = b""):
        self.status = status
        self.body = body
        super().__init__(message)


class EtcdIndexWentBack(Exception):
    """
    A watch at C{wait_index} reached an etcd whose index (X-Etcd-Index) is below the
    index we already saw: the cluster was wiped or restored from an older backup. etcd v2
    would hold such a watch open until its index catches up, silently, so the caller must
    re-list instead (as for 401 EventIndexCleared).
    """

    def __init__(self, wait_index: int, etcd_index: int):
        self.wait_index = wait_index
        self.etcd_index = etcd_index
        super().__init__("etcd's index went back to %d while we wait for %d: the cluster was "
                         "wiped or restored" % (etcd_index, wait_index))


class EtcdMemberError(Exception):
    """
    One member answered, but cannot serve: HTTP 5xx, etcd's server-side codes
    (L{SERVER_CODES}: raft internal error, no leader), a body over the size cap, a
    C{Content-Encoding} we did not ask for, or a watch silent past the watch timeout
    whose member then failed its health check. Like a transport failure, the client
    moves on to the next endpoint; when every endpoint fails, it is one of the
    L{EtcdUnavailable} C{errors}.

    ``kind`` is the error-counter kind (one of L{ERROR_KINDS}), ``status`` the HTTP
    status (or None) and ``code`` the etcd error code (or None).
    """

    def __init__(self, message: str, status=None, code=None, kind="server_error"):
        self.status = status
        self.code = code
        self.kind = kind
        super().__init__(message)


class EtcdResponseTooLarge(EtcdMemberError):
    """A response body went past the client's cap (C{limit} bytes); reading stopped there."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__("etcd's answer is larger than %d bytes; stopped reading it" % (limit,),
                         kind="too_large")
