# -*- test-case-name: tests.integration.test_daemon -*-
"""Backend type name -> factory C{(reactor, ext_iface) -> IBackend}."""


class UnknownBackend(ValueError):
    """The config names a backend type this build does not have."""


def _alloc(reactor, ext_iface):
    from flannel_tw.backend.alloc import AllocBackend
    return AllocBackend(reactor, ext_iface)


def _udp(reactor, ext_iface):
    from flannel_tw.backend.udp.backend import UdpBackend
    return UdpBackend(reactor, ext_iface)


def _vxlan(reactor, ext_iface):
    from flannel_tw.backend.vxlan.backend import VxlanBackend
    return VxlanBackend(reactor, ext_iface)


def _hostgw(reactor, ext_iface):
    from flannel_tw.backend.hostgw import HostGwBackend
    return HostGwBackend(reactor, ext_iface)


FACTORIES = {"alloc": _alloc, "udp": _udp, "vxlan": _vxlan, "host-gw": _hostgw}


def make_backend(name, reactor, ext_iface, factories=None):
    """@raise UnknownBackend: with the known names listed."""
    factories = FACTORIES if factories is None else factories
    try:
        factory = factories[name.lower()]
    except KeyError:
        raise UnknownBackend("unknown backend type: %r (this build has: %s)"
                             % (name, ", ".join(sorted(factories))))
    return factory(reactor, ext_iface)
