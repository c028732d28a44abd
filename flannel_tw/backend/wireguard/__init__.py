"""
The wireguard backend (issue 17; flanneld v0.20's C{backend/wireguard}): an encrypted
overlay. The device layer (L{device.open_device}) drives either the kernel module
(L{kernel}, generic netlink) or wireguard-go (L{userspace}, supervised, configured over
its UAPI socket by L{uapi}); the key file is L{key}'s.
"""
