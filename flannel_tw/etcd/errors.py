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
