# A deployable flannel-tw daemon for a vxlan overlay: `twistd -ny tac/flannel-vxlan.tac`.
#
# The backend is never chosen here: every daemon takes it from the network config
# in etcd, so publish e.g.
#     {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
# at <prefix>/config. Hosts must let UDP 8472 (the kernel's VXLAN port, or the
# configured Port) through between them; containers get MTU = external MTU - 50.
# If this build has no vxlan backend the daemon says so ("unknown backend type")
# and keeps waiting for a config it can run.
#
# Defaults for such a host; any FLANNELD_* variable in the environment wins:
#   FLANNELD_SUBNET_FILE      /run/flannel/subnet.env
#   FLANNELD_HEALTHZ_IP/PORT  127.0.0.1:8471
#   FLANNELD_METRICS_IP/PORT  127.0.0.1:9086
#   FLANNELD_LOG_FORMAT       json   (one JSON object per line)
# The vxlan device and its routes stay in place when the daemon stops, so traffic
# keeps flowing across a restart (flanneld's running.md); keep VNI and
# FLANNELD_IFACE the same across restarts.
import os

from twisted.application import service
from twisted.python import usage

from flannel_tw.tap import Options, makeService, usage_exit

DEFAULTS = {
    "FLANNELD_SUBNET_FILE": "/run/flannel/subnet.env",
    "FLANNELD_HEALTHZ_IP": "127.0.0.1",
    "FLANNELD_HEALTHZ_PORT": "8471",
    "FLANNELD_METRICS_IP": "127.0.0.1",
    "FLANNELD_METRICS_PORT": "9086",
    "FLANNELD_LOG_FORMAT": "json",
}

environ = dict(DEFAULTS)
environ.update(os.environ)
options = Options(environ=environ)
try:
    options.parseOptions([])
except usage.UsageError as e:
    usage_exit("flannel-vxlan.tac", e)   # exit 64: the unit's RestartPreventExitStatus=64

application = service.Application("flannel")
makeService(options).setServiceParent(application)
