# -*- test-case-name: tests.unit.test_udp_routes -*-
"""
The udp backend's routing table: overlay subnet -> peer (PublicIP, port), plus the
reverse index used to filter incoming datagrams. Pure: no reactor.

flanneld keeps a list searched linearly (flannel-compat.md section 6). Here a lookup
costs one dict probe per distinct prefix length in the table (longest first), so it
stays fast with thousands of peers: in practice every lease has the network's
SubnetLen, so that is a single probe.
"""
from ipaddress import IPv4Address, IPv4Network, IPv6Network

DEFAULT_PORT = 8285


def _ip_str(ip) -> str:
    if isinstance(ip, int):
        return str(IPv4Address(ip))
    return str(IPv4Address(str(ip)))


class RouteTable:
    """
    Overlay subnets -> peer addresses C{(public_ip_str, port)}.

    The table never holds our own subnet: the backend leaves it out (it never routes
    to itself).
    """

    def __init__(self, port: int = DEFAULT_PORT):
        self.port = port
        # prefixlen -> {network address int -> (subnet, peer addr tuple)}
        self._by_len = {}
        # [(mask int, dict)] ordered by prefix length, longest first
        self._levels = []
        # public ip str -> {subnet: (network int, mask int)}
        self._by_peer = {}
        # subnet -> public ip str
        self._subnets = {}
        # the IPv6 part (issue 15): the same three indexes for the peers' v6 subnets,
        # reached at the same IPv4 PublicIP
        self._by_len6 = {}
        self._levels6 = []
        self._by_peer6 = {}
        self._subnets6 = {}

    # -- updates -----------------------------------------------------------------

    def set(self, subnet: IPv4Network, public_ip, offload: bool = False) -> None:
        """
        Route C{subnet} to C{public_ip} (IPv4Address, str or int). Replaces any route
        for the same subnet (a lease whose PublicIP changed).

        @param offload: the peer speaks the offloaded wire format
            (L{flannel_tw.backend.udp.offload}); otherwise flanneld's.
        """
        subnet = IPv4Network(subnet)
        ip = _ip_str(public_ip)
        old = self._subnets.get(subnet)
        if old is not None:
            self._unindex_peer(old, subnet)
        plen = subnet.prefixlen
        level = self._by_len.get(plen)
        if level is None:
            level = self._by_len[plen] = {}
            self._rebuild_levels()
        net = int(subnet.network_address)
        mask = int(subnet.netmask)
        level[net] = (subnet, (ip, self.port), bool(offload))
        self._subnets[subnet] = ip
        self._by_peer.setdefault(ip, {})[subnet] = (net, mask)

    def remove(self, subnet: IPv4Network) -> bool:
        """Forget the route for C{subnet}. @return: whether there was one."""
        subnet = IPv4Network(subnet)
        ip = self._subnets.pop(subnet, None)
        if ip is None:
            return False
        self._unindex_peer(ip, subnet)
        plen = subnet.prefixlen
        level = self._by_len[plen]
        del level[int(subnet.network_address)]
        if not level:
            del self._by_len[plen]
            self._rebuild_levels()
        return True

    def clear(self) -> None:
        self._by_len.clear()
        self._levels = []
        self._by_peer.clear()
        self._subnets.clear()
        self._by_len6.clear()
        self._levels6 = []
        self._by_peer6.clear()
        self._subnets6.clear()

    def set6(self, subnet: IPv6Network, public_ip, offload: bool = False) -> None:
        """Route the IPv6 C{subnet} to the peer at the IPv4 C{public_ip} (as L{set})."""
        subnet = IPv6Network(subnet)
        ip = _ip_str(public_ip)
        self.remove6(subnet)
        plen = subnet.prefixlen
        level = self._by_len6.get(plen)
        if level is None:
            level = self._by_len6[plen] = {}
            self._levels6 = [(_mask6(n), self._by_len6[n])
                             for n in sorted(self._by_len6, reverse=True)]
        net = int(subnet.network_address)
        level[net] = (subnet, (ip, self.port), bool(offload))
        self._subnets6[subnet] = ip
        self._by_peer6.setdefault(ip, {})[subnet] = (net, _mask6(plen))

    def remove6(self, subnet: IPv6Network) -> bool:
        """Forget the route for the IPv6 C{subnet}. @return: whether there was one."""
        subnet = IPv6Network(subnet)
        ip = self._subnets6.pop(subnet, None)
        if ip is None:
            return False
        nets = self._by_peer6.get(ip)
        if nets is not None:
            nets.pop(subnet, None)
            if not nets:
                del self._by_peer6[ip]
        plen = subnet.prefixlen
        level = self._by_len6[plen]
        del level[int(subnet.network_address)]
        if not level:
            del self._by_len6[plen]
            self._levels6 = [(_mask6(n), self._by_len6[n])
                             for n in sorted(self._by_len6, reverse=True)]
        return True

    def subnet6_of(self, public_ip):
        """The IPv6 subnets routed to the peer at C{public_ip} (a list, maybe empty)."""
        return list(self._by_peer6.get(_ip_str(public_ip), ()))

    def _unindex_peer(self, ip, subnet):
        nets = self._by_peer.get(ip)
        if nets is not None:
            nets.pop(subnet, None)
            if not nets:
                del self._by_peer[ip]

    def _rebuild_levels(self):
        self._levels = [
            ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, self._by_len[plen])
            for plen in sorted(self._by_len, reverse=True)
        ]

    # -- queries (hot path) ------------------------------------------------------

    def lookup(self, dst_ip: int):
        """
        Longest-prefix match of the inner destination.

        @return: the peer address C{("1.2.3.4", port)} or None.
        """
        hit = self.lookup_entry(dst_ip)
        return None if hit is None else hit[1]

    def lookup_entry(self, dst_ip: int):
        """
        Longest-prefix match of the inner destination.

        @return: C{(subnet, ("1.2.3.4", port), offload)} or None.
        """
        for mask, level in self._levels:
            hit = level.get(dst_ip & mask)
            if hit is not None:
                return hit
        return None

    def lookup6_entry(self, dst_ip: int):
        """Longest-prefix match of an inner IPv6 destination (an int).

        @return: C{(subnet, ("1.2.3.4", port), offload)} or None."""
        for mask, level in self._levels6:
            hit = level.get(dst_ip & mask)
            if hit is not None:
                return hit
        return None

    def check_source6(self, peer_ip: str, inner_src: int):
        """The receive filter for an inner IPv6 packet: None when accepted;
        C{"unknown-peer"} when C{peer_ip} is not a current lease's PublicIP;
        C{"spoofed-source"} when C{inner_src} lies outside the IPv6 subnets leased to
        C{peer_ip} (none: a peer without a v6 subnet sends no IPv6)."""
        if peer_ip not in self._by_peer:
            return "unknown-peer"
        for net, mask in self._by_peer6.get(peer_ip, {}).values():
            if inner_src & mask == net:
                return None
        return "spoofed-source"

    def offload_of(self, subnet) -> bool:
        """Whether the peer routed for C{subnet} gets the offloaded format."""
        subnet = IPv4Network(subnet)
        level = self._by_len.get(subnet.prefixlen)
        hit = level.get(int(subnet.network_address)) if level else None
        return bool(hit and hit[2])

    def check_source(self, peer_ip: str, inner_src: int):
        """
        The receive filter.

        @param peer_ip: the datagram's source address (str, as the socket reports it).
        @param inner_src: the inner packet's source address as an int.
        @return: None when accepted; C{"unknown-peer"} when C{peer_ip} is not the
            PublicIP of any current lease; C{"spoofed-source"} when C{inner_src} lies
            outside every subnet leased to C{peer_ip}. (A host's own overlay address is
            the .0 of its subnet, which lies inside the subnet.)
        """
        nets = self._by_peer.get(peer_ip)
        if nets is None:
            return "unknown-peer"
        for net, mask in nets.values():
            if inner_src & mask == net:
                return None
        return "spoofed-source"

    def is_peer(self, peer_ip: str) -> bool:
        """True when C{peer_ip} is the PublicIP of a current lease."""
        return peer_ip in self._by_peer

    def source_allowed(self, peer_ip: str, inner_src: int) -> bool:
        """True when a datagram from C{peer_ip} carrying C{inner_src} passes the filter."""
        return self.check_source(peer_ip, inner_src) is None

    # -- introspection -----------------------------------------------------------

    def __len__(self):
        return len(self._subnets)

    def __contains__(self, subnet):
        return IPv4Network(subnet) in self._subnets

    def peer_of(self, subnet):
        """The PublicIP (str) routed for C{subnet}, or None."""
        return self._subnets.get(IPv4Network(subnet))

    def routes(self):
        """A dict copy: subnet -> peer address tuple (IPv4 and IPv6 subnets)."""
        out = {s: (ip, self.port) for s, ip in self._subnets.items()}
        out.update((s, (ip, self.port)) for s, ip in self._subnets6.items())
        return out


def _mask6(plen):
    return ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
