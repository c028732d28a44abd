"""
The vxlan backend: the kernel device flannel.<VNI> with static neighbour,
FDB and route entries per peer.
"""
