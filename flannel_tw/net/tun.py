# -*- test-case-name: tests.test_udp_backend -*-
"""
Opening the udp backend's TUN device (IFF_TUN|IFF_NO_PI, name template flannel%d)
with python-pytun (flannel-compat.md section 6).
"""
import errno
import os

from zope.interface import implementer

from flannel_tw.interfaces import ITun

READ_SIZE = 65535


class TunError(Exception):
    """The TUN device could not be opened; the message says why and what to check."""


@implementer(ITun)
class PytunDevice:
    """
    An open TUN device. The file descriptor is non-blocking: L{read} raises
    BlockingIOError when no packet is queued. Closing the fd leaves a persistent
    kernel device in place (and removes a non-persistent one, as flanneld's does).
    """

    def __init__(self, dev):
        self._dev = dev
        self.name = dev.name
        self._fd = dev.fileno()
        os.set_blocking(self._fd, False)
        self.closed = False

    def fileno(self):
        return self._fd

    def read(self):
        return os.read(self._fd, READ_SIZE)

    def readinto(self, buf):
        """Read one packet into the writable C{buf}; return its length. Non-blocking."""
        return os.readv(self._fd, (buf,))

    def write(self, packet):
        return os.write(self._fd, packet)

    def close(self):
        if not self.closed:
            self.closed = True
            self._dev.close()

    def __repr__(self):
        return "<PytunDevice %s fd=%d%s>" % (self.name, self._fd, " closed" if self.closed else "")


def open_tun(name="flannel%d"):
    """
    Open (or create) a TUN device with IFF_TUN|IFF_NO_PI.

    @param name: a device name or a kernel template such as C{"flannel%d"} (the kernel
        picks the first free number). A persistent device of that exact name is reused:
        opening it attaches to it.
    @return: L{PytunDevice} (provides L{ITun}) with a non-blocking fd.
    @raise TunError: with a clear message (no /dev/net/tun, not permitted, busy, ...).
    """
    try:
        import pytun
    except ImportError as e:  # pragma: no cover - the dependency is installed
        raise TunError("cannot open TUN device %r: python-pytun is not installed (%s)"
                       % (name, e)) from e
    if not os.path.exists("/dev/net/tun"):
        raise TunError("cannot open TUN device %r: /dev/net/tun does not exist "
                       "(load the tun kernel module: modprobe tun)" % (name,))
    try:
        dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
    except pytun.Error as e:
        raise TunError(_describe(name, e)) from e
    except OSError as e:
        raise TunError(_describe(name, e)) from e
    try:
        return PytunDevice(dev)
    except Exception:
        dev.close()
        raise


def _describe(name, e):
    code = getattr(e, "errno", None)
    if code is None and e.args and isinstance(e.args[0], int):
        code = e.args[0]
    detail = e.args[-1] if e.args else str(e)
    base = "cannot open TUN device %r: %s" % (name, detail)
    if code in (errno.EPERM, errno.EACCES):
        return base + " (flannel-tw needs root or CAP_NET_ADMIN to use /dev/net/tun)"
    if code == errno.ENOENT:
        return base + " (/dev/net/tun is missing: load the tun kernel module)"
    if code == errno.EBUSY:
        return base + " (the device is in use: is another flanneld running?)"
    if code == errno.EINVAL:
        return base + " (a non-TUN device with that name may already exist)"
    return base
