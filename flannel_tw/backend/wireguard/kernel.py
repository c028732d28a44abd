# -*- test-case-name: tests.unit.test_wg_dev -*-
"""
The kernel's WireGuard: C{ip link add <name> type wireguard} and its generic netlink
family, both through pyroute2. Also the link operations both device kinds need (delete,
up). Every method here blocks (netlink round trips): callers run them in a thread.

Without the module (this machine, many container hosts) the link add fails with
EOPNOTSUPP ("unknown kind"): L{Links.add_wireguard} then says False and the caller falls
back to wireguard-go.
"""
import base64
import errno
import ipaddress

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.backend.wireguard import uapi
from flannel_tw.interfaces import IWireguardDevice
from flannel_tw.model.wgpeer import WgPeer

# The kernel's answers to "add a link of a kind it does not know": EOPNOTSUPP; older
# kernels without the rtnl_link_ops and module autoload may say EINVAL or ENOENT.
NO_MODULE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT, errno.EAFNOSUPPORT)
_ZERO = bytes(32)


class Links:
    """Link operations in one network namespace (None: this process's)."""

    def __init__(self, netns=None):
        self.netns = netns

    def _ipr(self):
        return IPRoute(netns=self.netns) if self.netns else IPRoute()

    def _index(self, ipr, name):
        found = ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def exists(self, name):
        with self._ipr() as ipr:
            return self._index(ipr, name) is not None

    def delete(self, name):
        """Delete the link C{name}; @return: whether there was one."""
        with self._ipr() as ipr:
            index = self._index(ipr, name)
            if index is None:
                return False
            try:
                ipr.link("del", index=index)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise
                return False
            return True

    def up(self, name):
        with self._ipr() as ipr:
            index = self._index(ipr, name)
            if index is None:
                raise NetlinkError(errno.ENODEV, "no link %s" % (name,))
            ipr.link("set", index=index, state="up")

    def add_wireguard(self, name):
        """
        C{ip link add <name> type wireguard}. @return: False when the kernel has no
        wireguard (the module is missing); True when the link was made.
        @raise NetlinkError: any other failure.
        """
        with self._ipr() as ipr:
            try:
                ipr.link("add", ifname=name, kind="wireguard")
            except NetlinkError as e:
                if e.code in NO_MODULE:
                    return False
                raise
        return True


def peer_request(peer):
    """A L{WgPeer} as pyroute2's C{WireGuard.set(peer=...)} dict (keys base64)."""
    psk = peer.preshared_key if peer.preshared_key is not None else _ZERO
    request = {
        "public_key": base64.b64encode(peer.public_key).decode("ascii"),
        "preshared_key": base64.b64encode(psk).decode("ascii"),
        "persistent_keepalive": peer.keepalive,
        "replace_allowed_ips": True,
        "allowed_ips": [net.with_prefixlen for net in peer.allowed_ips],
    }
    if peer.endpoint is not None:
        request["endpoint_addr"] = str(ipaddress.ip_address(peer.endpoint[0]))
        request["endpoint_port"] = peer.endpoint[1]
    return request


def removal_request(public_key):
    return {"public_key": base64.b64encode(public_key).decode("ascii"), "remove": True}


def _b64(value):
    if isinstance(value, dict):            # an undecoded key NLA
        value = value.get("value")
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii")
    return base64.b64decode(value)


def peers_from_info(messages):
    """
    The peers in pyroute2's C{WireGuard.info(name)} messages (a big device's dump comes
    in several; a peer may continue in the next) as a dict public key -> L{WgPeer}.
    pyroute2 decodes keys to base64, the endpoint to C{{'addr', 'port'}} and each
    allowed IP to an NLA whose C{'addr'} is C{"a.b.c.d/n"}.
    """
    peers = {}
    for msg in messages:
        for p in msg.get_attr("WGDEVICE_A_PEERS") or ():
            key_attr = p.get_attr("WGPEER_A_PUBLIC_KEY")
            if key_attr is None:
                continue
            key = _b64(key_attr)
            psk_attr = p.get_attr("WGPEER_A_PRESHARED_KEY")
            psk = _b64(psk_attr) if psk_attr is not None else _ZERO
            ep = p.get_attr("WGPEER_A_ENDPOINT")
            endpoint = None
            if ep is not None and ep.get("port"):
                endpoint = (str(ipaddress.ip_address(ep["addr"])), ep["port"])
            nets = []
            for a in p.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                if hasattr(a, "get") and a.get("addr"):
                    nets.append(ipaddress.ip_network(a["addr"], strict=False))
            old = peers.get(key)
            if old is not None:
                nets = list(old.allowed_ips) + nets
            peers[key] = WgPeer(
                public_key=key, endpoint=endpoint, allowed_ips=tuple(nets),
                preshared_key=None if psk == _ZERO else psk,
                keepalive=p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0)
    return peers


@implementer(IWireguardDevice)
class KernelDevice:
    """
    The kernel module's device, configured over generic netlink with pyroute2.

    @param wireguard: C{() -> a pyroute2 WireGuard-like} (C{set}, C{info}, C{close}).
    @param to_thread: C{(f, *args) -> Deferred}.
    """
    kind = "kernel"
    log = Logger()

    def __init__(self, name, links, to_thread, wireguard=None):
        self.name = name
        self._links = links
        self._to_thread = to_thread
        self._wireguard = wireguard or (
            lambda: WireGuard(netns=links.netns) if links.netns else WireGuard())
        self._closed = None

    def _with_wg(self, f):
        wg = self._wireguard()
        try:
            return f(wg)
        finally:
            wg.close()

    def configure(self, private_key, listen_port):
        try:
            uapi.encode_set(private_key=private_key, listen_port=listen_port)
        except ValueError as e:
            return defer.fail(e)
        b64 = base64.b64encode(private_key).decode("ascii")

        def work():
            self._with_wg(lambda wg: wg.set(self.name, private_key=b64, listen_port=listen_port))
            self._links.up(self.name)
        return self._to_thread(work)

    def set_peers(self, upserts, removals):
        """One thread job: a netlink set per removal, then per upsert (pyroute2 sends one peer a message)."""
        upserts, removals = list(upserts), list(removals)
        try:
            uapi.encode_set(upserts=upserts, removals=removals)
        except ValueError as e:
            return defer.fail(e)
        requests = [removal_request(k) for k in removals] + [peer_request(p) for p in upserts]

        def work(wg):
            for r in requests:
                wg.set(self.name, peer=r)
        return self._to_thread(self._with_wg, work)

    def peers(self):
        return self._to_thread(self._with_wg, lambda wg: peers_from_info(wg.info(self.name)))

    def close(self):
        if self._closed is None:
            self._closed = self._to_thread(self._links.delete, self.name)
            self._closed.addErrback(lambda f: self.log.failure(
                "deleting the wireguard link {name}", failure=f, name=self.name))
        d = defer.Deferred()
        self._closed.addBoth(lambda r: d.callback(None))
        return d
