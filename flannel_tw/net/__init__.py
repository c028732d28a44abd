"""Kernel seams: interface lookup, TUN, netlink (pyroute2)."""
