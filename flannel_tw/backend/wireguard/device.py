# -*- test-case-name: tests.unit.test_wg_dev, tests.lab.test_wg_dev -*-
"""
Opening a WireGuard device the way the host allows: the kernel module when it exists,
else wireguard-go (Debian: C{apt-get install wireguard-go}) started and supervised by
this daemon, else L{WireguardUnavailable}.
"""
from twisted.internet import defer


class WireguardUnavailable(Exception):
    """
    Neither the kernel's wireguard module nor wireguard-go can make the device. The
    message names both options and what to install.
    """


def open_device(reactor, name, state_dir, *, on_recreated=None, wireguard_go=None,
                kernel=None, to_thread=None, mode=None):
    """
    Make the WireGuard device C{name} in this process's network namespace. An existing
    link of that name is deleted first (flanneld does). The kernel module is tried first;
    when it is missing (link add: EOPNOTSUPP / unknown kind), wireguard-go is started in a
    private mount namespace whose C{/var/run/wireguard} is C{<state_dir>/wireguard}, so
    daemons in other network namespaces on the same filesystem never share a UAPI socket.
    Which one is used is logged.

    @param reactor: IReactorTime + IReactorProcess + IReactorUNIX.
    @param name: the interface name, e.g. C{"flannel-wg"}.
    @param state_dir: this daemon's own directory (the subnet file's), e.g. C{/run/flannel}.
    @param on_recreated: C{(device) -> None or Deferred}, called after wireguard-go died,
        was restarted and had its key, port and peers re-sent: the link is new, so the
        caller re-adds what is not the device's business (addresses, MTU, routes).
        Never called for the kernel device.
    @param wireguard_go: the wireguard-go executable; None: found on C{PATH}.
    @param kernel: the kernel-module driver (tests pass a fake); None: the real one.
    @param to_thread: C{(f, *args) -> Deferred} for blocking netlink calls; None:
        C{deferToThread}.
    @param mode: None (kernel, else userspace), C{"kernel"} or C{"userspace"} to force one.
    @return: Deferred firing with an L{IWireguardDevice} (the link exists, not yet
        configured: call C{configure}); fails with L{WireguardUnavailable}, or with the
        underlying error when the chosen implementation fails to start.
    """
    return defer.fail(NotImplementedError("open_device: not yet"))
