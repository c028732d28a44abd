"""The ``twistd flannel`` plugin."""
from twisted.application.service import ServiceMaker

flannel = ServiceMaker(
    "flannel-tw", "flannel_tw.tap",
    "flannel overlay network daemon (flanneld-compatible, etcd v2)", "flannel")
