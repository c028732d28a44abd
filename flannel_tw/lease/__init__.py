"""
The lease policy: wait for the config, acquire (reuse, previous subnet, allocate),
renew (the keeper) and watch the other hosts' leases, over the registry seam
(etcd v2 today).
"""
