"""
The udp backend: flannel0 (TUN) and a UDP socket on 8285, flanneld's wire format,
offload frames between flannel-tw hosts. The modules follow the data's path:

  - backend: the lifecycle (prepare: TUN, port, socket tuning; start, reconfigure,
    lease events, stop);
  - send: TUN -> peers (the drain loop, route lookup, UDP GSO runs, frames, user-space
    segmentation towards peers without offload);
  - port and receive: socket -> TUN (the UDP port that drains the socket in batches
    with UDP GRO, and the datagram protocol that checks and delivers);
  - tun_io: the TUN as a reactor reader, and the counted TUN writes;
  - dispatch: the TUN reader and the port dispatched straight from the epoll
    reactor's poll loop (issue 16);
  - offload (frame format, lease data, reassembly) and vnet (virtio-net header,
    checksums, segmentation, IPv4 and IPv6);
  - packet (IPv4 checks, ICMP), packet6 (IPv6 checks, ICMPv6: flannel-tw hosts carry
    IPv6 too, issue 15), routes (the route table, both families), counters (drop
    reasons). These and offload, vnet are pure: no reactor.
"""
