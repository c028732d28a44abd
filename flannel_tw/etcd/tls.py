# -*- test-case-name: tests.unit.test_tls, tests.integration.test_tls -*-
"""TLS to etcd: CA, client certificate and key, as an Agent policy (IPolicyForHTTPS)."""
import os
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


class TLSFileError(ValueError):
    """A certificate or key file that cannot be read or parsed; names the file."""


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError("cannot read %s %s: %s" % (what, path, e.strerror or e))


@implementer(IPolicyForHTTPS)
class EtcdTLSPolicy:
    """Verifies etcd against C{ca} (or the system roots) and presents the client certificate."""

    def __init__(self, trust_root=None, client_cert=None, files=None):
        self._trust_root = trust_root
        self._client_cert = client_cert
        #: C{{"ca": path, "cert": path, "key": path}} (None when unused), for error messages.
        self.files = dict(files or {})

    def creatorForNetloc(self, hostname, port):
        kwargs = {}
        if self._trust_root is not None:
            kwargs["trustRoot"] = self._trust_root
        if self._client_cert is not None:
            kwargs["clientCertificate"] = self._client_cert
        return ssl.optionsForClientTLS(hostname.decode("ascii"), **kwargs)


def tls_policy(cafile=None, certfile=None, keyfile=None):
    """@raise TLSFileError: naming the file that is missing, unreadable or malformed."""
    trust_root = client_cert = None
    if cafile:
        data = _read(cafile, "CA file")
        try:
            trust_root = ssl.Certificate.loadPEM(data)
        except Exception as e:
            raise TLSFileError("CA file %s is not a PEM certificate: %s" % (cafile, e))
    if certfile or keyfile:
        if not (certfile and keyfile):
            raise TLSFileError("a client certificate needs both a cert file and a key file")
        cert = _read(certfile, "client certificate file")
        key = _read(keyfile, "client key file")
        try:
            client_cert = ssl.PrivateCertificate.loadPEM(key + b"\n" + cert)
        except Exception as e:
            raise TLSFileError("client certificate %s / key %s cannot be loaded: %s"
                               % (certfile, keyfile, e))
    return EtcdTLSPolicy(trust_root, client_cert,
                         files={"ca": cafile or None, "cert": certfile or None,
                                "key": keyfile or None})


DEFAULT_SSL_DIR = "/etc/ssl/etcd"


def tls_files(cafile, certfile, keyfile, environ):
    """
    The (ca, cert, key) paths to use: the flags when any is given; otherwise, as the
    seed's drop-in describes, ``$ETCD_SSL_DIR`` (default /etc/ssl/etcd) when it holds
    ``ca.pem`` and a client certificate and key (``client.pem``/``client-key.pem``,
    or ``cert.pem``/``key.pem``). Paths not found are None.
    """
    if cafile or certfile or keyfile:
        return cafile or None, certfile or None, keyfile or None
    ssl_dir = environ.get("ETCD_SSL_DIR") or DEFAULT_SSL_DIR
    ca = os.path.join(ssl_dir, "ca.pem")
    if not os.path.isfile(ca):
        return None, None, None
    for cert, key in (("client.pem", "client-key.pem"), ("cert.pem", "key.pem"),
                      ("etcd-client.pem", "etcd-client-key.pem")):
        cert, key = os.path.join(ssl_dir, cert), os.path.join(ssl_dir, key)
        if os.path.isfile(cert) and os.path.isfile(key):
            return ca, cert, key
    return ca, None, None
