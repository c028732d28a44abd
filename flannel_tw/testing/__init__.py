"""Test helpers that ship with the package (fakes, a real etcd server runner, the namespace lab)."""
