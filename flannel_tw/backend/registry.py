# -*- test-case-name: tests.integration.test_daemon -*-
"""
Backend type name -> factory C{(reactor, ext_iface) -> IBackend}; the factories named in
L{WANTS_SUBNET_FILE} also get C{subnet_file=} (the wireguard key lives beside it).
"""


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


def _wireguard(reactor, ext_iface, subnet_file=None):
    from flannel_tw.backend.wireguard.backend import DEFAULT_SUBNET_FILE, WireguardBackend
    return WireguardBackend(reactor, ext_iface, subnet_file=subnet_file or DEFAULT_SUBNET_FILE)


FACTORIES = {"alloc": _alloc, "udp": _udp, "vxlan": _vxlan, "host-gw": _hostgw,
             "wireguard": _wireguard}
WANTS_SUBNET_FILE = frozenset({"wireguard"})


def make_backend(name, reactor, ext_iface, factories=None, subnet_file=None):
    """
    @param subnet_file: the daemon's --subnet-file, for the backends in
        L{WANTS_SUBNET_FILE} (None: their default, /run/flannel/subnet.env).
    @raise UnknownBackend: with the known names listed.
    """
    factories = FACTORIES if factories is None else factories
    try:
        factory = factories[name.lower()]
    except KeyError:
        raise UnknownBackend("unknown backend type: %r (this build has: %s)"
                             % (name, ", ".join(sorted(factories))))
    if subnet_file is not None and name.lower() in WANTS_SUBNET_FILE:
        return factory(reactor, ext_iface, subnet_file=subnet_file)
    return factory(reactor, ext_iface)
