"""Subnet manager: config wait, lease acquire/renew, lease watch."""
