"""etcd client (v2 HTTP API on treq)."""
