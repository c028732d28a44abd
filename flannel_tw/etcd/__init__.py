"""etcd client (v2 HTTP API on Twisted's Agent)."""
