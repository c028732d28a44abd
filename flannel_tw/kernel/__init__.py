"""
The kernel seams: the rtnetlink codec (rtnetlink, pure), the long-lived netlink socket
with windowed acks (nlsocket), the batch/undo engine the routed backends call (batch;
their own entries are in backend/vxlan/device.py and backend/hostgw.py), the udp
backend's TUN configuration (netlink) and device (tun), interface lookup (iface), a
monotonic clock (monoclock).
"""
