# -*- test-case-name: tests.unit.test_wg_dev -*-
"""
The node's WireGuard private key (flanneld v0.20: C{/run/flannel/wgkey}, or env
C{WIREGUARD_KEY_FILE}): generated once (X25519), stored as base64 without a newline,
mode 0600, kept across restarts. It lives beside the subnet file, so daemons on one
filesystem with their own subnet files never share a key. A file that exists but does
not hold a key is an error, never silently replaced. The key is never logged.
"""
import base64
import binascii
import os
import tempfile

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, PublicFormat)

KEY_FILE_ENV = "WIREGUARD_KEY_FILE"
KEY_FILE_NAME = "wgkey"
KEY_LEN = 32
_MAX_FILE = 4096        # a key file is 44 bytes; anything much bigger is not one


class KeyFileError(Exception):
    """The key file exists but cannot be read or does not hold a key; it is never replaced."""


class PrivateKey:
    """
    A 32-byte X25519 private key. C{repr} and C{str} never show it.

    @ivar raw: the 32 raw bytes.
    @ivar public: the 32 raw bytes of its public key.
    """
    __slots__ = ("raw", "public")

    def __init__(self, raw):
        if not isinstance(raw, bytes) or len(raw) != KEY_LEN:
            raise ValueError("a WireGuard private key is %d bytes" % (KEY_LEN,))
        self.raw = raw
        self.public = public_key(raw)

    @classmethod
    def generate(cls):
        k = X25519PrivateKey.generate()
        return cls(k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @property
    def public_b64(self):
        return encode(self.public)

    def __repr__(self):
        return "<PrivateKey public=%s>" % (self.public_b64,)

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, PrivateKey) and other.raw == self.raw

    def __hash__(self):
        return hash(self.public)


def key_path(subnet_file, environ=None):
    """
    @param subnet_file: the daemon's subnet file, e.g. C{/run/flannel/subnet.env}.
    @param environ: a mapping like C{os.environ} (default).
    @return: C{$WIREGUARD_KEY_FILE} if set and not empty, else C{wgkey} in the subnet
        file's directory.
    """
    environ = os.environ if environ is None else environ
    override = environ.get(KEY_FILE_ENV)
    if override:
        return override
    return os.path.join(os.path.dirname(os.path.abspath(subnet_file)), KEY_FILE_NAME)


def load_or_create(path):
    """
    Read the key at C{path}, or generate one and write it there (0600, atomically: a
    temp file made 0600 whatever the umask, then renamed) when the file does not exist.
    Blocking (file I/O), called once at start.

    @return: a L{PrivateKey}.
    @raise KeyFileError: the file exists but is unreadable or not a base64 32-byte key,
        or a new one cannot be written.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    key = PrivateKey.generate()
    _write(path, encode(key.raw).encode("ascii"))
    try:
        # Another daemon racing on the same path (a shared WIREGUARD_KEY_FILE) may have
        # renamed its own key over ours: both then use the file's.
        return _read(path)
    except FileNotFoundError:
        raise KeyFileError("WireGuard key file %s vanished after it was written" % (path,))


def _read(path):
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyFileError("cannot read the WireGuard key file %s: %s" % (path, e.strerror or e))
    try:
        raw = decode(data.strip().decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(
            "the WireGuard key file %s does not hold a base64 %d-byte key (%d bytes read); "
            "it is not replaced: remove it to have a new key generated"
            % (path, KEY_LEN, len(data)))
    return PrivateKey(raw)


def _write(path, data):
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        # mkstemp creates the file 0600 (O_EXCL), whatever the umask.
        fd, tmp = tempfile.mkstemp(prefix=".wgkey.", dir=directory)
    except OSError as e:
        raise KeyFileError("cannot write the WireGuard key file %s: %s" % (path, e.strerror or e))
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KeyFileError("cannot write the WireGuard key file %s: %s" % (path, e.strerror or e))


def public_key(private_raw):
    """@return: the 32 raw bytes of the X25519 public key of C{private_raw} (32 bytes)."""
    k = X25519PrivateKey.from_private_bytes(private_raw)
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode(raw):
    """@return: C{raw} (32 bytes) as WireGuard's base64 text (what BackendData carries)."""
    return base64.b64encode(raw).decode("ascii")


def decode(text):
    """
    @return: the 32 raw bytes of a base64 WireGuard key (a peer's C{PublicKey}, the PSK).
    @raise ValueError: not base64 text or not 32 bytes.
    """
    if not isinstance(text, str):
        raise ValueError("a WireGuard key is base64 text")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("not base64")
    if len(raw) != KEY_LEN:
        raise ValueError("a WireGuard key is %d bytes, not %d" % (KEY_LEN, len(raw)))
    return raw
