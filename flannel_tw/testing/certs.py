# -*- test-case-name: tests.unit.test_tls, tests.integration.test_tls -*-
"""
Throw-away X.509 material for tests: a CA, a server certificate for 127.0.0.1 and a
client certificate, made with the C{cryptography} package (EC P-256 keys, so it is fast).

    pki = make_pki(directory)          # writes ca.pem, server.pem, server-key.pem,
    pki.ca, pki.server_cert, ...       # client.pem, client-key.pem; returns the paths

Nothing here touches the network.
"""
import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class CA:
    """A self-signed certificate authority that can issue server and client certificates."""

    def __init__(self, cn="flannel-tw test CA"):
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self):
        return _cert_pem(self.cert)

    def issue(self, cn, ips=(), dns=(), server=False, client=False):
        """@return: C{(cert_pem, key_pem)} for a leaf certificate signed by this CA."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        names += [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)


@dataclass
class PKI:
    """Paths of the files written by L{make_pki}."""

    directory: str
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    ca_object: CA = None     #: the L{CA} behind C{ca}, to issue more certificates

    def etcd_tls(self, client_cert_auth=True):
        """The C{tls} dict for L{flannel_tw.testing.etcd.EtcdServer}."""
        return dict(cert=self.server_cert, key=self.server_key, ca=self.ca,
                    client_cert_auth=client_cert_auth)


def make_pki(directory, host="127.0.0.1", ca=None, client_ca=None):
    """
    Write a CA, a server certificate for C{host} and a client certificate into
    C{directory} (created if missing) and return their paths as a L{PKI}.

    @param ca: the L{CA} that signs the server certificate (a new one when None).
    @param client_ca: the L{CA} that signs the client certificate (default: C{ca}).
    """
    os.makedirs(directory, exist_ok=True)
    ca = ca or CA()
    client_ca = client_ca or ca
    server_pem, server_key = ca.issue("etcd-server", ips=[host], dns=["localhost"],
                                      server=True, client=True)
    client_pem, client_key = client_ca.issue("flannel-tw", client=True)
    j = lambda name: os.path.join(directory, name)  # noqa: E731
    return PKI(
        directory=directory,
        ca=_write(j("ca.pem"), ca.pem),
        server_cert=_write(j("server.pem"), server_pem),
        server_key=_write(j("server-key.pem"), server_key, 0o600),
        client_cert=_write(j("client.pem"), client_pem),
        client_key=_write(j("client-key.pem"), client_key, 0o600),
        ca_object=ca,
    )
