# -*- test-case-name: tests.unit.test_udp_ipv6 -*-
"""
The udp backend's IPv6 lease part (issue 15): which peers get IPv6 packets. Pure: no
reactor.

flannel-tw's udp backend carries inner IPv6 packets over the same IPv4 wire; flanneld's
cannot (it reads every packet as IPv4), yet a flanneld v0.15+ host in a dual-stack
network has an IPv6 subnet in its lease. So a flannel-tw lease says it in its
BackendV6Data, and only leases that say it get IPv6.
"""

V6_DATA_VERSION = 1     # BackendV6Data {"FlannelTW":{"UDPv6":1}}


def lease_backend_v6_data(ipv6: bool):
    """Our lease's BackendV6Data: C{{"FlannelTW":{"UDPv6":1}}} when we carry IPv6."""
    return {"FlannelTW": {"UDPv6": V6_DATA_VERSION}} if ipv6 else None


def peer_carries_ipv6(attrs) -> bool:
    """Whether a lease's attrs advertise that its udp backend carries IPv6 (see
    L{lease_backend_v6_data}); anything else (flanneld, junk) means IPv4 only."""
    data = getattr(attrs, "backend_v6_data", None)
    tw = data.get("FlannelTW") if isinstance(data, dict) else None
    v = tw.get("UDPv6") if isinstance(tw, dict) else None
    return type(v) is int and v == V6_DATA_VERSION


def v6_route(lease, ipv6, own_subnet6):
    """
    The IPv6 subnet of a peer's C{lease} (its v6 part, checked by the watcher) to route
    to its IPv4 PublicIP, or None: when we do not carry IPv6 (C{ipv6} False), the lease
    has no v6 subnet or does not say its backend carries IPv6 (L{peer_carries_ipv6}),
    or the subnet overlaps ours (C{own_subnet6}).
    """
    subnet6 = lease.ipv6_subnet
    if subnet6 is None or not ipv6 or not peer_carries_ipv6(lease.attrs):
        return None
    if own_subnet6 is not None and subnet6.overlaps(own_subnet6):
        return None
    return subnet6
