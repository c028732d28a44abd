"""Namespace lab building blocks for tests."""
