"""
The commands around the daemon: flannel-tw (cli), docker-opts, cni, config,
install-units, and the namespace lab.
"""
