# A deployable flannel-tw daemon for a udp overlay: `twistd -ny tac/flannel-udp.tac`.
#
# The backend is never chosen here: every daemon takes it from the network config
# in etcd, so publish e.g.
#     {"Network": "10.1.0.0/16", "Backend": {"Type": "udp", "Port": 8285}}
# at <prefix>/config (`flannel-tw config set`, or the unit drop-in
# flannel_tw/deploy/systemd/flanneld.service.d/50-network-config.conf).
# Hosts must let UDP 8285 (or the configured Port) through between them; the
# TUN device flannel0 gets MTU = external MTU - 28 (1472 on a 1500 link).
#
# What this file adds to tac/flannel.tac are defaults that suit such a host; any
# FLANNELD_* variable in the environment (e.g. from EnvironmentFile=) wins:
#   FLANNELD_SUBNET_FILE      /run/flannel/subnet.env   (what Docker and the CNI plugin read)
#   FLANNELD_HEALTHZ_IP/PORT  127.0.0.1:8471            (/healthz, /readyz)
#   FLANNELD_METRICS_IP/PORT  127.0.0.1:9086            (Prometheus; udp packet/drop counters)
#   FLANNELD_LOG_FORMAT       text                      (json for log shippers)
# twistd's --logfile/--nodaemon decide where the log goes, as for `twistd flannel`.
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
    "FLANNELD_LOG_FORMAT": "text",
}

environ = dict(DEFAULTS)
environ.update(os.environ)
options = Options(environ=environ)
try:
    options.parseOptions([])
except usage.UsageError as e:
    usage_exit("flannel-udp.tac", e)   # exit 64: the unit's RestartPreventExitStatus=64

application = service.Application("flannel")
makeService(options).setServiceParent(application)
