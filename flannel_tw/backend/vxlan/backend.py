# -*- test-case-name: tests.unit.test_vxlan -*-
"""
The vxlan backend (flannel-compat.md section 7), flanneld v0.10's "L3" scheme: the
kernel's vxlan device C{flannel.<VNI>} encapsulates; we only write static entries.

- prepare(): parse C{VNI} (default 1), C{Port} (0: the kernel's 8472), C{GBP},
  C{DirectRouting} (Go JSON: keys match without regard to case); make the device
  (link = ext iface, local = IfaceAddr, learning off), reusing a compatible one; publish
  C{{"BackendType":"vxlan","BackendData":{"VtepMAC":"<mac>"}}}; MTU = ext MTU - 50.
- start(): C{<lease .0>/32} on the device, up.
- per remote vxlan lease: C{neigh <.0> lladdr VtepMAC nud permanent}, FDB
  C{VtepMAC dst PublicIP self permanent}, C{route <subnet> via <.0> dev flannel.N onlink};
  with DirectRouting and a peer with no gateway in between, C{<subnet> via PublicIP}
  instead. Removed with the lease; replaced when VtepMAC or PublicIP change.
"""
import re
from ipaddress import IPv4Address
from typing import NamedTuple

from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.backend.routed import PeerBackend
from flannel_tw.model.config import go_json_fields
from flannel_tw.interfaces import IBackend, IReconcilingBackend
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.backend.vxlan.device import VxlanKernel, VxlanPeer, VxlanSpec

DEFAULT_VNI = 1
ENCAP_OVERHEAD = 50        # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
MAX_VNI = (1 << 24) - 1
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


class VxlanOptions(NamedTuple):
    vni: int = DEFAULT_VNI
    port: int = 0
    gbp: bool = False
    direct_routing: bool = False


def parse_options(backend) -> VxlanOptions:
    """
    The vxlan options of a Backend config object, as Go's encoding/json fills flanneld's
    struct: keys match without regard to case (an exact match wins), null keeps the
    default, unknown keys are ignored.

    @raise ValueError: naming the key, for a wrong type or an out-of-range value.
    """
    fields = go_json_fields(list((backend or {}).items()),
                            ("VNI", "Port", "GBP", "DirectRouting"))
    opts = {}
    for key, attr, top in (("VNI", "vni", MAX_VNI), ("Port", "port", 65535)):
        if key in fields:
            value = fields[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("Backend.%s must be an integer, got %r" % (key, value))
            if not 0 <= value <= top:
                raise ValueError("Backend.%s must be from 0 to %d, got %d" % (key, top, value))
            opts[attr] = value
    for key, attr in (("GBP", "gbp"), ("DirectRouting", "direct_routing")):
        if key in fields:
            value = fields[key]
            if not isinstance(value, bool):
                raise ValueError("Backend.%s must be true or false, got %r" % (key, value))
            opts[attr] = value
    return VxlanOptions(**opts)


def lease_attrs(public_ip, mac) -> LeaseAttrs:
    """Our lease as flanneld v0.10 writes it: BackendData {"VtepMAC": "<lower-case mac>"}."""
    return LeaseAttrs(public_ip=IPv4Address(public_ip), backend_type="vxlan",
                      backend_data={"VtepMAC": mac.lower()})


def peer_from_lease(lease) -> VxlanPeer:
    """
    A remote vxlan lease -> L{VxlanPeer}.

    @raise ValueError: the BackendData has no usable VtepMAC.
    """
    data = lease.attrs.backend_data
    mac = None
    if isinstance(data, dict):
        fields = go_json_fields(list(data.items()), ("VtepMAC",))
        mac = fields.get("VtepMAC")
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac.lower().replace("-", ":")):
        raise ValueError("lease BackendData has no valid VtepMAC: %r" % (data,))
    return VxlanPeer(subnet=lease.subnet, public_ip=lease.attrs.public_ip,
                     mac=mac.lower().replace("-", ":"))


@implementer(IBackend, IReconcilingBackend)
class VxlanBackend(PeerBackend):
    """L{IBackend} for the vxlan type. C{device}, C{index}, C{mac} are valid after prepare()."""

    name = "vxlan"
    kernel_class = VxlanKernel

    def __init__(self, reactor, ext_iface, kernel=None, to_thread=None):
        PeerBackend.__init__(self, reactor, ext_iface, kernel, to_thread)
        self.options = None
        self.device = None
        self.index = None
        self.mac = None

    def prepare(self, config):
        """
        @return: Deferred firing with our L{LeaseAttrs}; fails with ValueError (bad
            options) or L{flannel_tw.kernel.batch.KernelError} (no device).
        """
        try:
            self.options = parse_options(config.backend)
        except ValueError as e:
            return defer.fail(e)
        spec = VxlanSpec(vni=self.options.vni, link_index=self.ext_iface.index,
                         local=self.ext_iface.addr, port=self.options.port,
                         gbp=self.options.gbp)
        self.mtu = self.ext_iface.mtu - ENCAP_OVERHEAD
        d = self._serial(self._kernel, self.kernel.ensure_vxlan, spec)

        def made(result):
            self.index, self.mac, what = result
            self.device = spec.name
            self.log.info("vxlan backend: device {dev} {what}: VNI {vni}, dev {iface}, "
                          "local {local}, port {port}, VtepMAC {mac}, MTU {mtu}",
                          dev=spec.name, what=what, vni=spec.vni, iface=self.ext_iface.name,
                          local=spec.local, port=spec.port or 8472, mac=self.mac,
                          mtu=self.mtu)
            return lease_attrs(self.ext_iface.public_ip, self.mac)
        return d.addCallback(made)

    def start(self, config, lease):
        """Give the device C{<lease .0>/32} and bring it up. Deferred."""
        if self.index is None:
            return defer.fail(RuntimeError("vxlan backend: start() before prepare()"))
        self._own(config, lease)
        address = lease.subnet.network_address
        d = self._serial(self._kernel, self.kernel.configure_vxlan, self.index, address)
        d.addCallback(lambda _: self.log.info("vxlan backend: {dev} has {address}/32, up",
                                              dev=self.device, address=address))
        return d

    reconfigure = start       # a moved lease: the new .0/32 replaces the old address

    def stop(self):
        """The device and the entries stay (flanneld leaves them). Deferred."""
        return defer.succeed(None)

    # -- PeerBackend ------------------------------------------------------------

    def _peer(self, lease):
        return peer_from_lease(lease)

    def _apply_batch(self, changes):
        return self.kernel.apply_vxlan_peers(self.index, self.ext_iface.index, changes,
                                             self.options.direct_routing)

    def _remove_stale(self, leases):
        keep_macs = []
        for lease in leases:
            try:
                keep_macs.append(peer_from_lease(lease).mac)
            except ValueError:
                pass
        return self.kernel.remove_stale(self.network, [l.subnet for l in leases],
                                        self.index, self.ext_iface.index, keep_macs)
