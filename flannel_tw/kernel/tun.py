# -*- test-case-name: tests.unit.test_udp_backend -*-
"""
Opening the udp backend's TUN device (IFF_TUN|IFF_NO_PI, name template flannel%d)
with python-pytun (flannel-compat.md section 6); and, for the offloaded mode, with
IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6) through ioctls of our own
(python-pytun does not expose IFF_VNET_HDR).
"""
import errno
import fcntl
import os
import struct

from zope.interface import implementer

from flannel_tw.interfaces import ITun

READ_SIZE = 65535

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04


class TunError(Exception):
    """The TUN device could not be opened; the message says why and what to check."""


@implementer(ITun)
class PytunDevice:
    """
    An open TUN device. The file descriptor is non-blocking: L{read} raises
    BlockingIOError when no packet is queued. Closing the fd leaves a persistent
    kernel device in place (and removes a non-persistent one, as flanneld's does).
    """

    vnet_hdr = False     # packets carry no virtio_net_hdr

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


@implementer(ITun)
class VnetTunDevice(PytunDevice):
    """
    A TUN device opened with IFF_VNET_HDR and TUN offloads: every read starts with a
    10-byte little-endian virtio_net_hdr and may be a GSO super-packet of up to 64 KB;
    every write must start with such a header.
    """

    vnet_hdr = True

    def __init__(self, fd, name):
        self._dev = None
        self.name = name
        self._fd = fd
        os.set_blocking(fd, False)
        self.closed = False

    def close(self):
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def __repr__(self):
        return "<VnetTunDevice %s fd=%d%s>" % (self.name, self._fd,
                                                " closed" if self.closed else "")


def open_vnet_tun(name="flannel%d", offloads=TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6):
    """
    Open (or attach to) a TUN device with IFF_TUN|IFF_NO_PI|IFF_VNET_HDR, a 10-byte
    little-endian vnet header, and TUNSETOFFLOAD(C{offloads}).

    @return: L{VnetTunDevice} with a non-blocking fd.
    @raise TunError: as L{open_tun}.
    """
    if len(name.encode()) >= 16:
        raise TunError("cannot open TUN device %r: name longer than 15 bytes" % (name,))
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(_describe(name, e)) from e
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        ifr = fcntl.ioctl(fd, TUNSETIFF, ifr)
        real = ifr[:16].split(b"\0", 1)[0].decode()
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
        try:
            fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
        except OSError:
            import sys
            if sys.byteorder != "little":
                raise
        fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
        return VnetTunDevice(fd, real)
    except OSError as e:
        os.close(fd)
        raise TunError(_describe(name, e)) from e
    except BaseException:
        os.close(fd)
        raise


def open_tun(name="flannel%d", vnet_hdr=False):
    """
    Open (or create) a TUN device with IFF_TUN|IFF_NO_PI.

    @param name: a device name or a kernel template such as C{"flannel%d"} (the kernel
        picks the first free number). A persistent device of that exact name is reused:
        opening it attaches to it.
    @param vnet_hdr: open it with IFF_VNET_HDR and offloads instead (L{open_vnet_tun}).
    @return: L{PytunDevice} (provides L{ITun}) with a non-blocking fd.
    @raise TunError: with a clear message (no /dev/net/tun, not permitted, busy, ...).
    """
    if vnet_hdr:
        return open_vnet_tun(name)
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
