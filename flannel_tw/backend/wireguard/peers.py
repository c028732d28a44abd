# -*- test-case-name: tests.unit.test_wg_backend -*-
"""
The wireguard backend's leases and peers as flanneld v0.20.2 has them (reference section
D), pure: no reactor, no device.

- L{lease_attrs}: our lease value (the public key in BackendData, and in BackendV6Data
  with IPv6);
- L{peer_key}: the public key in a remote lease's BackendData (hostile: checked);
- L{lease_peers}: a remote wireguard lease -> its peer on each of our devices (endpoint
  at our own ports, AllowedIPs = its subnets, our PSK and keepalive);
- L{desired}: every wanted peer by device and key (leases sharing a key share a peer).
"""
from ipaddress import IPv4Network, IPv6Network

from flannel_tw.backend.wireguard import key as wgkey
from flannel_tw.backend.wireguard.options import AUTO, IPV6, SEPARATE
from flannel_tw.model.config import go_json_fields
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.model.wgpeer import WgPeer

V4, V6 = "v4", "v6"         # the families a device serves (one device for both outside separate)
_PRIVATE4 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"),
             IPv4Network("192.168.0.0/16"))
_ULA = IPv6Network("fc00::/7")


def lease_attrs(public_ip, public_key, public_ipv6=None, enable_ipv6=False):
    """Our lease as flanneld v0.20.2 writes it (the same key in both data fields)."""
    data = {"PublicKey": wgkey.encode(public_key)}
    if not enable_ipv6:
        return LeaseAttrs(public_ip=public_ip, backend_type="wireguard", backend_data=data)
    return LeaseAttrs(public_ip=public_ip, backend_type="wireguard", backend_data=data,
                      public_ipv6=public_ipv6, backend_v6_data=dict(data))


def peer_key(data):
    """
    The raw public key in a lease's BackendData (or BackendV6Data); Go JSON: the key
    name matches without regard to case.

    @raise ValueError: saying what is wrong (never echoing a long hostile value).
    """
    if not isinstance(data, dict):
        raise ValueError("BackendData is not an object with a PublicKey")
    fields = go_json_fields(list(data.items()), ("PublicKey",))
    if "PublicKey" not in fields:
        raise ValueError("BackendData has no PublicKey")
    try:
        return wgkey.decode(fields["PublicKey"])
    except ValueError:
        raise ValueError("BackendData.PublicKey is not a base64 32-byte key") from None


def lease_peers(lease, options, own_key, devices, own_ipv6=None):
    """
    A remote wireguard lease -> C{{device name: WgPeer}}.

    @param options: our L{flannel_tw.backend.wireguard.options.WgOptions} (ports, PSK,
        keepalive and Mode are ours: flanneld sends to its own ports).
    @param own_key: our public key (raw): a lease carrying it is hostile.
    @param devices: family (L{V4}, L{V6}) -> device name; V6 present only when IPv6 is
        on (in single-device modes it names the V4 device too).
    @param own_ipv6: our public IPv6 (Mode auto's choice).
    @raise ValueError: no usable key, our own key, or no address for the endpoint.
    """
    attrs = lease.attrs
    subnet6 = getattr(lease, "ipv6_subnet", None) if V6 in devices else None
    ipv6 = getattr(attrs, "public_ipv6", None)
    common = dict(preshared_key=options.psk, keepalive=options.keepalive)

    def key(data):
        raw = peer_key(data)
        if raw == own_key:
            raise ValueError("BackendData.PublicKey is our own public key")
        return raw

    if options.mode == SEPARATE:
        out = {devices[V4]: WgPeer(key(attrs.backend_data),
                                   (str(attrs.public_ip), options.listen_port),
                                   (lease.subnet,), **common)}
        if subnet6 is not None:
            if ipv6 is None:
                raise ValueError("a dual-stack lease without a PublicIPv6")
            out[devices[V6]] = WgPeer(key(getattr(attrs, "backend_v6_data", None)),
                                      (str(ipv6), options.listen_port_v6), (subnet6,),
                                      **common)
        return out
    # one device: the key of BackendV6Data when the lease is dual-stack
    if subnet6 is not None:
        raw, allowed = key(getattr(attrs, "backend_v6_data", None)), (lease.subnet, subnet6)
    else:
        raw, allowed = key(attrs.backend_data), (lease.subnet,)
    use6 = options.mode == IPV6
    if options.mode == AUTO:
        # IPv4 to a public IPv4; else IPv6 when both sides' are global; else IPv4
        use6 = (any(attrs.public_ip in n for n in _PRIVATE4) and ipv6 is not None
                and own_ipv6 is not None and ipv6 not in _ULA and own_ipv6 not in _ULA)
    if use6 and ipv6 is None:
        raise ValueError("Mode %s needs the lease's PublicIPv6" % (options.mode,))
    endpoint = (str(ipv6) if use6 else str(attrs.public_ip), options.listen_port)
    return {devices[V4]: WgPeer(raw, endpoint, allowed, **common)}


def desired(wanted, device_names):
    """
    C{{device name: {public key: WgPeer}}} for the C{wanted} peer maps (oldest first).
    Leases sharing a key share one peer: AllowedIPs of all of them, the newest endpoint.
    """
    out = {name: {} for name in device_names}
    for peers in wanted:
        for dev, peer in peers.items():
            have = out[dev].get(peer.public_key)
            if have is not None:
                peer = WgPeer(peer.public_key, peer.endpoint,
                              tuple(sorted(set(have.allowed_ips + peer.allowed_ips),
                                           key=lambda n: (n.version, n))),
                              peer.preshared_key, peer.keepalive)
            out[dev][peer.public_key] = peer
    return out


def endpoint_text(endpoint):
    """C{1.2.3.4:51820}, C{[fd00::1]:51821} or C{(none)}."""
    if endpoint is None:
        return "(none)"
    ip, port = endpoint
    return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)
