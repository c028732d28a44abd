# -*- test-case-name: tests.unit.test_vxlan, tests.unit.test_routed_dualstack, tests.lab.test_dualstack_routed -*-
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

IPv6 (issue 15, flanneld v0.20's vxlan v6), when the config has EnableIPv6:
- prepare() also makes C{flannel-v6.<VNI>} (same VNI, port, GBP, learning off; local = the
  ext iface's IPv6 address; a random locally administered MAC; accept_ra 0) and publishes
  C{"PublicIPv6"} and C{"BackendV6Data":{"VNI":n,"VtepMAC":"<its mac>"}};
- start(): C{<v6 subnet addr>/128} on it, other non-link-local IPv6 addresses removed;
- per remote dual-stack lease: C{neigh <v6 subnet addr> lladdr <v6 VtepMAC>}, FDB
  C{<v6 VtepMAC> dst <PublicIPv6>}, C{route <v6 subnet> via <v6 subnet addr> onlink dev
  flannel-v6.<VNI>}; with DirectRouting and PublicIPv6 directly reachable,
  C{<v6 subnet> via PublicIPv6 dev <ext>} instead;
- the mixed-stack rules of L{flannel_tw.backend.routed}: an unusable IPv6 part (missing or
  bad BackendV6Data, no PublicIPv6) is skipped with one warning while the IPv4 part is
  routed; flanneld v0.20 skips the whole event there, IPv4 included.
"""
import re
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple, Optional

from twisted.internet import defer
from zope.interface import implementer

from flannel_tw.backend.routed import PeerBackend
from flannel_tw.model.config import go_json_fields
from flannel_tw.interfaces import IBackend, IReconcilingBackend
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.backend.vxlan.device import VxlanKernel, VxlanPeer, VxlanSpec, random_mac

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


def lease_attrs(public_ip, mac, public_ipv6=None, mac6=None, vni=DEFAULT_VNI) -> LeaseAttrs:
    """
    Our lease with flanneld v0.20's BackendData {"VNI": n, "VtepMAC": "<lower-case mac>"}
    (the v3 keyspace stores it so; the v2 registry writes v0.10's {"VtepMAC": ...} for an
    IPv4-only lease, L{flannel_tw.etcd.registry.v2_value}); dual-stack (C{public_ipv6}
    and C{mac6} given) as flanneld v0.20 adds it: PublicIPv6 and BackendV6Data
    {"VNI": n, "VtepMAC": "<flannel-v6.N's mac>"}.
    """
    v6 = public_ipv6 is not None and mac6 is not None
    return LeaseAttrs(public_ip=IPv4Address(public_ip), backend_type="vxlan",
                      backend_data={"VNI": vni, "VtepMAC": mac.lower()},
                      public_ipv6=IPv6Address(public_ipv6) if v6 else None,
                      backend_v6_data={"VNI": vni, "VtepMAC": mac6.lower()} if v6 else None)


def _vtep_mac(data, what):
    mac = None
    if isinstance(data, dict):
        fields = go_json_fields(list(data.items()), ("VtepMAC",))
        mac = fields.get("VtepMAC")
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac.lower().replace("-", ":")):
        raise ValueError("lease %s has no valid VtepMAC: %r" % (what, data))
    return mac.lower().replace("-", ":")


def peer_from_lease(lease) -> VxlanPeer:
    """
    A remote vxlan lease -> its IPv4 L{VxlanPeer}.

    @raise ValueError: the BackendData has no usable VtepMAC.
    """
    return VxlanPeer(subnet=lease.subnet, public_ip=lease.attrs.public_ip,
                     mac=_vtep_mac(lease.attrs.backend_data, "BackendData"))


def peer6_from_lease(lease) -> VxlanPeer:
    """
    A remote dual-stack vxlan lease -> its IPv6 L{VxlanPeer} (v6 subnet, PublicIPv6, the
    VtepMAC of BackendV6Data).

    @raise ValueError: no IPv6 subnet, no PublicIPv6, or no usable BackendV6Data VtepMAC.
    """
    if lease.ipv6_subnet is None:
        raise ValueError("the lease has no IPv6 subnet")
    if lease.attrs.public_ipv6 is None:
        raise ValueError("the lease has no PublicIPv6")
    return VxlanPeer(subnet=lease.ipv6_subnet, public_ip=lease.attrs.public_ipv6,
                     mac=_vtep_mac(lease.attrs.backend_v6_data, "BackendV6Data"))


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
        self.device6 = None     # flannel-v6.<VNI>, with EnableIPv6
        self.index6 = None
        self.mac6 = None

    def prepare(self, config):
        """
        @return: Deferred firing with our L{LeaseAttrs}; fails with ValueError (bad
            options) or L{flannel_tw.kernel.batch.KernelError} (no device). EnableIPv6
            without an IPv6 address chosen: a warning, IPv4 only.
        """
        try:
            self.options = parse_options(config.backend)
        except ValueError as e:
            return defer.fail(e)
        specs = [VxlanSpec(vni=self.options.vni, link_index=self.ext_iface.index,
                           local=self.ext_iface.addr, port=self.options.port,
                           gbp=self.options.gbp)]
        if getattr(config, "enable_ipv6", False) and self.ext_iface.addr6 is None:
            # e.g. an IPv4 --iface without --public-ipv6 (flanneld v0.20 then publishes no
            # PublicIPv6 either): IPv4 only here, peers skip our IPv6 part with a warning
            self.log.warn("vxlan backend: EnableIPv6 is set but {iface} has no IPv6 address "
                          "chosen: no flannel-v6.{vni}, this host routes IPv4 only",
                          iface=self.ext_iface.name, vni=self.options.vni)
        elif getattr(config, "enable_ipv6", False):
            specs.append(VxlanSpec(vni=self.options.vni, link_index=self.ext_iface.index,
                                   local=self.ext_iface.addr6, port=self.options.port,
                                   gbp=self.options.gbp, mac=random_mac()))
        self.mtu = self.ext_iface.mtu - ENCAP_OVERHEAD
        d = self._serial(self._kernel, self._ensure_devices, specs)

        def made(results):
            for spec, (index, mac, what) in zip(specs, results):
                if spec.v6:
                    self.index6, self.mac6, self.device6 = index, mac, spec.name
                else:
                    self.index, self.mac, self.device = index, mac, spec.name
                self.log.info("vxlan backend: device {dev} {what}: VNI {vni}, dev {iface}, "
                              "local {local}, port {port}, VtepMAC {mac}, MTU {mtu}",
                              dev=spec.name, what=what, vni=spec.vni,
                              iface=self.ext_iface.name, local=spec.local,
                              port=spec.port or 8472, mac=mac, mtu=self.mtu)
            if self.index6 is None:
                return lease_attrs(self.ext_iface.public_ip, self.mac, vni=self.options.vni)
            return lease_attrs(self.ext_iface.public_ip, self.mac,
                               self.ext_iface.public_ipv6 or self.ext_iface.addr6, self.mac6,
                               self.options.vni)
        return d.addCallback(made)

    def _ensure_devices(self, specs):
        return [self.kernel.ensure_vxlan(spec) for spec in specs]

    def start(self, config, lease):
        """Give the device C{<lease .0>/32} (and flannel-v6 C{<v6 subnet addr>/128}) and
        bring it up. Deferred."""
        if self.index is None:
            return defer.fail(RuntimeError("vxlan backend: start() before prepare()"))
        self._own(config, lease)
        if self.index6 is None:
            self.network6 = self.own_subnet6 = None     # IPv4 only here (said at prepare)
        address = lease.subnet.network_address
        d = self._serial(self._kernel, self.kernel.configure_vxlan, self.index, address)
        d.addCallback(lambda _: self.log.info("vxlan backend: {dev} has {address}/32, up",
                                              dev=self.device, address=address))
        if self.index6 is not None and self.own_subnet6 is not None:
            address6 = self.own_subnet6.network_address
            d6 = self._serial(self._kernel, self.kernel.configure_vxlan, self.index6, address6)
            d6.addCallback(lambda _: self.log.info("vxlan backend: {dev} has {address}/128, up",
                                                   dev=self.device6, address=address6))
            d = defer.gatherResults([d, d6], consumeErrors=True)
            d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)
        return d

    reconfigure = start       # a moved lease: the new .0/32 replaces the old address

    def stop(self):
        """The device and the entries stay (flanneld leaves them). Deferred."""
        return defer.succeed(None)

    # -- PeerBackend ------------------------------------------------------------

    def _peer(self, lease):
        return peer_from_lease(lease)

    def _peer6(self, lease):
        problem = self.v6_problem(lease)
        if problem is not None:
            raise ValueError(problem)
        return peer6_from_lease(lease)

    def _apply_batch(self, changes):
        return self.kernel.apply_vxlan_peers(self.index, self.ext_iface.index, changes,
                                             self.options.direct_routing, index6=self.index6)

    def _remove_stale(self, leases):
        keep_macs = []
        for lease in leases:
            try:
                keep_macs.append(peer_from_lease(lease).mac)
            except ValueError:
                pass
        removed = self.kernel.remove_stale(self.network, [l.subnet for l in leases],
                                           self.index, self.ext_iface.index, keep_macs)
        if self.network6 is not None and self.index6 is not None:
            peers6 = []
            for lease in leases:
                try:
                    peers6.append(self._peer6(lease))
                except ValueError:
                    pass
            removed += self.kernel.remove_stale(self.network6, [p.subnet for p in peers6],
                                                self.index6, self.ext_iface.index,
                                                [p.mac for p in peers6])
        return removed
