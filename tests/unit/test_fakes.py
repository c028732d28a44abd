"""
Every fake in flannel_tw.testing declares the interface of what it stands for, and is
checked against it here, so a fake cannot drift from the real thing unnoticed (the
per-seam tests also compare parameters: test_kernel_seam, test_udp_backend's FakeTun).
"""
import importlib
import inspect
import pkgutil

from twisted.trial import unittest
from zope.interface import implementedBy
from zope.interface.verify import verifyClass

import flannel_tw.testing
from flannel_tw import interfaces

# the fakes, and the interface each must provide
FAKES = {
    "flannel_tw.testing.fakes.FakeSubnetManager": interfaces.ISubnetManager,
    "flannel_tw.testing.fakes.RecordingBackend": interfaces.IBackend,
    "flannel_tw.testing.fakes.FakeKernel": interfaces.IKernel,
    "flannel_tw.testing.fakes.FakeNetlink": interfaces.INetlink,
    "flannel_tw.testing.faketun.FakeTun": interfaces.ITun,
    "flannel_tw.testing.registry.FakeRegistry": interfaces.IRegistry,
    "flannel_tw.testing.backend_fakes.CapableBackend": interfaces.IBackend,
}


def _classes():
    for info in pkgutil.iter_modules(flannel_tw.testing.__path__, "flannel_tw.testing."):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                yield "%s.%s" % (module.__name__, name), cls


class FakesTests(unittest.TestCase):
    def test_each_fake_provides_its_interface(self):
        found = dict(_classes())
        for path, interface in FAKES.items():
            self.assertIn(path, found)
            cls = found[path]
            self.assertTrue(interface.implementedBy(cls), "%s does not declare %s"
                            % (path, interface.__name__))
            verifyClass(interface, cls)

    def test_every_declared_interface_of_a_testing_class_holds(self):
        """Whatever a class in flannel_tw.testing declares, it really has."""
        checked = 0
        for path, cls in _classes():
            for interface in implementedBy(cls).flattened():
                if interface.__module__ == interfaces.__name__:
                    verifyClass(interface, cls)
                    checked += 1
        self.assertGreaterEqual(checked, len(FAKES))
