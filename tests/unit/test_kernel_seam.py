"""
The kernel seam: the real kernel classes (the batch engine with each routed backend's
part, and the udp backend's TUN configuration module) and their fakes in
flannel_tw.testing.fakes provide the same interfaces, with the same signatures.

verifyObject checks argument names only loosely (a fake may rename a parameter or
change a default and still pass), so each method's signature is also compared: the
interface's, the real one's and the fake's must have the same parameters, in the same
order, with the same defaults.
"""
import inspect

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from flannel_tw.backend.hostgw import HostGwKernel
from flannel_tw.backend.vxlan.device import VxlanKernel
from flannel_tw.interfaces import IHostGwKernel, IKernel, INetlink, IVxlanKernel
from flannel_tw.kernel import netlink
from flannel_tw.kernel.batch import Kernel
from flannel_tw.testing.fakes import FakeKernel, FakeNetlink


def declared(interface, name):
    """The signature an interface declares for C{name}: C{[(param, default or absent)]}."""
    info = interface[name].getSignatureInfo()
    out = [(p, info["optional"].get(p, inspect.Parameter.empty)) for p in info["positional"]]
    if info["varargs"]:
        out.append(("*" + info["varargs"], inspect.Parameter.empty))
    if info["kwargs"]:
        out.append(("**" + info["kwargs"], inspect.Parameter.empty))
    return out


def implemented(obj, name):
    """The signature of C{obj.name} (bound: no self) in the same shape as L{declared}."""
    out = []
    for p in inspect.signature(getattr(obj, name)).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append((prefix + p.name, p.default))
    return out


def drift(interface, obj):
    """Every method of C{interface} whose signature on C{obj} differs from the declared one."""
    return ["%s%s: declared %r, has %r" % (type(obj).__name__, "." + name,
                                           declared(interface, name), implemented(obj, name))
            for name in interface.names(all=True)
            if declared(interface, name) != implemented(obj, name)]


class SignatureCheckTests(unittest.TestCase):
    """The drift check itself catches what verifyObject lets through."""

    def test_a_renamed_parameter_or_changed_default_is_drift(self):
        class Renamed(FakeNetlink):
            def configure_tun(self, ifname, address, mtu, route, gso=None, address6=None,
                              route6=None):
                pass

        class Defaulted(FakeNetlink):
            def configure_tun(self, ifname, address, mtu, route, gso_max_size=65536,
                              address6=None, route6=None):
                pass
        for fake in (Renamed(), Defaulted()):
            verifyObject(INetlink, fake)        # passes: it checks counts, not names
            self.assertEqual(len(drift(INetlink, fake)), 1, type(fake).__name__)

    def test_a_missing_parameter_is_drift(self):
        class Short(FakeNetlink):
            def configure_tun(self, ifname, address, mtu, route):
                pass
        self.assertEqual(len(drift(INetlink, Short())), 1)


class KernelSeamTests(unittest.TestCase):
    """Real and fake kernels: verifyObject, then the signatures."""

    def check(self, interface, obj):
        self.assertTrue(verifyObject(interface, obj))
        self.assertEqual(drift(interface, obj), [])

    def test_engine(self):
        self.check(IKernel, Kernel())

    def test_vxlan_kernel_and_fake(self):
        self.check(IVxlanKernel, VxlanKernel())
        self.check(IVxlanKernel, FakeKernel())

    def test_hostgw_kernel_and_fake(self):
        self.check(IHostGwKernel, HostGwKernel())
        self.check(IHostGwKernel, FakeKernel())

    def test_lab_kernel(self):
        """The namespace tests' kernel (both backends' code, one-entry shorthands)."""
        from flannel_tw.testing.kernel_fixtures import LabKernel
        self.check(IVxlanKernel, LabKernel())
        self.check(IHostGwKernel, LabKernel())

    def test_netlink_module_and_fake(self):
        self.check(INetlink, netlink)
        self.check(INetlink, FakeNetlink())

    def test_backends_default_to_their_kernel(self):
        from flannel_tw.backend.hostgw import HostGwBackend
        from flannel_tw.backend.vxlan.backend import VxlanBackend
        from flannel_tw.testing.kernel_fixtures import IFACE
        self.assertTrue(IVxlanKernel.providedBy(VxlanBackend(None, IFACE).kernel))
        self.assertTrue(IHostGwKernel.providedBy(HostGwBackend(None, IFACE).kernel))
