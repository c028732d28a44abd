"""
The kernel seams: rtnetlink (pyroute2 and a batched codec), the TUN device,
interface lookup, a monotonic clock.
"""
