"""
Watching the daemon: /healthz and /readyz, Prometheus metrics, log formats.
"""
