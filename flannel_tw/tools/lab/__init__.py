"""
The namespace lab: hosts as network namespaces joined by a bridge, each with a
docker-like container, used by ``flannel-tw lab`` (flannel_tw.tools.lab.run) and by
the test suite (flannel_tw.tools.lab.topology).
"""
from flannel_tw.tools.lab.topology import Container, Lab, LabError, cleanup_stale

__all__ = ["Container", "Lab", "LabError", "cleanup_stale"]
