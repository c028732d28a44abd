"""
The data, pure: the network config, lease keys and values, which leases may be
routed, lease events. Nothing here imports the reactor.
"""
