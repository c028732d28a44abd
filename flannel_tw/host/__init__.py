"""
What the daemon leaves on the host for others: subnet.env, iptables rules,
systemd notifications.
"""
