# A deployable flannel-tw daemon: run with `twistd -ny tac/flannel.tac`.
#
# Every setting comes from FLANNELD_* environment variables, exactly as the
# flags of `twistd flannel` (FLANNELD_ETCD_ENDPOINTS, FLANNELD_ETCD_PREFIX,
# FLANNELD_IFACE, FLANNELD_SUBNET_FILE, FLANNELD_IP_MASQ, ...), so a systemd unit
# can use EnvironmentFile= and this file unchanged.

from twisted.application import service
from twisted.python import usage

from flannel_tw.tap import Options, makeService, usage_exit

options = Options()
try:
    options.parseOptions([])
except usage.UsageError as e:
    usage_exit("flannel.tac", e)   # exit 64: the unit's RestartPreventExitStatus=64

application = service.Application("flannel")
makeService(options).setServiceParent(application)
