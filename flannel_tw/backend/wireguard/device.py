# -*- test-case-name: tests.unit.test_wg_dev, tests.lab.test_wg_dev -*-
"""
Opening a WireGuard device the way the host allows: the kernel module when it exists,
else wireguard-go (Debian: C{apt-get install wireguard-go}) started and supervised by
this daemon, else L{WireguardUnavailable}.
"""
import os
import shutil

from twisted.internet import defer, threads
from twisted.logger import Logger

from flannel_tw.backend.wireguard.kernel import KernelDevice, Links
from flannel_tw.backend.wireguard.uapi import UapiClient
from flannel_tw.backend.wireguard.userspace import UserspaceDevice, WireguardGo

log = Logger(namespace="flannel_tw.backend.wireguard.device")

RUN_SUBDIR = "wireguard"        # <state_dir>/wireguard: this daemon's /var/run/wireguard


class WireguardUnavailable(Exception):
    """
    Neither the kernel's wireguard module nor wireguard-go can make the device. The
    message names both options and what to install.
    """


def open_device(reactor, name, state_dir, *, on_recreated=None, wireguard_go=None,
                kernel=None, to_thread=None, mode=None, netns=None, **userspace_options):
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
    @param kernel: the link operations (L{Links}-like: C{delete}, C{add_wireguard},
        C{up}); tests pass a fake. None: the real ones.
    @param to_thread: C{(f, *args) -> Deferred} for blocking netlink calls; None:
        C{deferToThread}.
    @param mode: None (kernel, else userspace), C{"kernel"} or C{"userspace"} to force one.
    @param netns: a named network namespace to make the device in instead of this
        process's (tests; the daemon itself runs in its namespace and leaves it None).
    @param userspace_options: passed to L{WireguardGo} (timeouts, backoff; tests).
    @return: Deferred firing with an L{IWireguardDevice} (the link exists, not yet
        configured: call C{configure}); fails with L{WireguardUnavailable}, or with the
        underlying error when the chosen implementation fails to start
        (L{flannel_tw.backend.wireguard.userspace.WireguardGoError}, NetlinkError).
    """
    return defer.ensureDeferred(_open(
        reactor, name, state_dir, on_recreated, wireguard_go, kernel, to_thread, mode,
        netns, userspace_options))


async def _open(reactor, name, state_dir, on_recreated, wireguard_go, links, to_thread,
                mode, netns, userspace_options):
    if mode not in (None, "kernel", "userspace"):
        raise ValueError("mode must be None, 'kernel' or 'userspace', not %r" % (mode,))
    links = links if links is not None else Links(netns)
    if to_thread is None:
        def to_thread(f, *args):
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    if await to_thread(links.delete, name):
        log.info("wireguard: deleted the existing link {name}", name=name)
    if mode != "userspace":
        if await to_thread(links.add_wireguard, name):
            log.info("wireguard: {name} is a kernel wireguard device", name=name)
            return KernelDevice(name, links, to_thread)
        if mode == "kernel":
            raise WireguardUnavailable(
                "could not create wireguard interface %s: this kernel has no wireguard "
                "(link add: operation not supported); load the module (modprobe wireguard, "
                "Linux 5.6+) or let flannel-tw use wireguard-go" % (name,))
    exe = wireguard_go or shutil.which("wireguard-go")
    unshare = shutil.which("unshare")
    if not exe or not unshare:
        missing = "wireguard-go" if not exe else "unshare (util-linux)"
        raise WireguardUnavailable(
            "cannot make the wireguard device %s: %sno %s on PATH. Either load the kernel "
            "module (modprobe wireguard; Linux 5.6+ has it) or install the userspace "
            "wireguard-go (Debian: apt-get install wireguard-go)" % (
                name, "" if mode == "userspace" else
                "this kernel has no wireguard module and ", missing))
    run_dir = os.path.join(os.path.abspath(state_dir), RUN_SUBDIR)
    argv_unshare = unshare
    if netns:
        userspace_options.setdefault("prefix", ["ip", "netns", "exec", netns])
    device = None

    def restarted():
        return device.reapply()

    process = WireguardGo(reactor, name, run_dir, exe, unshare=argv_unshare,
                          on_restarted=restarted, **userspace_options)
    await process.start()
    # the client connects through process.connect_path: short even when the socket's own
    # path is over the 107 bytes of a UNIX socket address
    device = UserspaceDevice(name, process, UapiClient(reactor, process.connect_path), links,
                             to_thread, on_recreated=on_recreated)
    log.info("wireguard: {name} is run by wireguard-go {exe} (pid {pid}; {why}), UAPI socket "
             "{sock}", name=name, exe=exe, pid=process.pid, sock=process.socket_path,
             why="forced" if mode == "userspace" else "the kernel has no wireguard module")
    return device
