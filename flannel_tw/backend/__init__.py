"""Backends: IBackend implementations."""
