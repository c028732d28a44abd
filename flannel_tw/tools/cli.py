# -*- test-case-name: tests.unit.test_install_units, tests.integration.test_dockeropts -*-
"""
``flannel-tw``: the helper commands around the daemon.

    flannel-tw docker-opts [-f subnet.env] [-d out] [-i] [-c] [-k KEY] [-m]
    flannel-tw lab [--hosts N] [--backend udp] [--keep] | flannel-tw lab down
    flannel-tw plugin-cache
    flannel-tw install-units [--dest DIR] [--tls] [--network-config] [--docker] [--cni-dir DIR] ...
    flannel-tw config get | set CONFIG_JSON|- | set --file F   [etcd flags]
    flannel-tw etcd migrate [--follow]   [etcd flags]
    flannel-tw version

The daemon itself runs as ``twistd -n flannel [flags]``.
"""
import sys

import flannel_tw

USAGE = """usage: flannel-tw COMMAND [ARGS]

commands:
  docker-opts   turn subnet.env into Docker daemon options (mk-docker-opts.sh)
  lab           build a local overlay of network namespaces and ping across it (root)
  cni           the CNI plugin (invoked by a container runtime with CNI_* variables)
  plugin-cache  rebuild Twisted's plugin cache (after installing or upgrading, as the
                user that owns the install) and check that 'twistd flannel' is found
  install-units write flanneld.service, its drop-ins and the CNI plugin with this
                install's absolute paths (see: flannel-tw install-units --help)
  config        read or publish the network config <prefix>/config in etcd, with the
                daemon's etcd flags and FLANNELD_* variables (flannel-tw config --help)
  etcd migrate  copy the config and the leases from etcd's v2 keyspace to v3, create-only;
                --follow mirrors lease changes both ways (flannel-tw etcd migrate --help)
  version       print the version

The daemon runs as: twistd -n flannel [flags]   (see: twistd flannel --help)
"""


def main(argv=None, stdout=None, stderr=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if not argv or argv[0] in ("-h", "--help", "help"):
        (stdout if argv else stderr).write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "docker-opts":
        from flannel_tw.tools.dockeropts import main as docker_opts
        return docker_opts(rest, stdout, stderr)
    if command == "lab":
        from flannel_tw.tools.lab.run import main as lab
        return lab(rest)
    if command == "cni":
        from flannel_tw.tools.cni import main as cni
        return cni(rest)
    if command == "install-units":
        from flannel_tw.tools.install import main as install_units
        return install_units(rest, stdout, stderr)
    if command == "config":
        from flannel_tw.tools.netconfig import main as netconfig
        return netconfig(rest, stdout, stderr)
    if command == "etcd":
        from flannel_tw.tools.migrate import main as etcd
        return etcd(rest, stdout, stderr)
    if command == "plugin-cache":
        return plugin_cache(stdout, stderr)
    if command in ("version", "--version"):
        stdout.write("flannel-tw %s\n" % flannel_tw.__version__)
        return 0
    stderr.write("flannel-tw: unknown command %r\n\n%s" % (command, USAGE))
    return 2


def plugin_cache(stdout, stderr):
    """
    Rebuild Twisted's plugin cache (C{twisted/plugins/dropin.cache}) and check
    that the C{flannel} plugin is in it.  Twisted rebuilds a stale cache on its
    own only when the directory is writable by the user running C{twistd}; a
    root-owned install run by another user would otherwise log the failure at
    every start.  Returns 0, or 1 when the plugin is missing or the cache could
    not be written.
    """
    import os
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins
    import twisted.plugins

    names = sorted(p.tapname for p in getPlugins(IServiceMaker))
    if "flannel" not in names:
        stderr.write("flannel-tw: the 'flannel' twistd plugin is not installed "
                     "(twisted/plugins/flannel_plugin.py missing from %s)\n"
                     % ", ".join(twisted.plugins.__path__))
        return 1
    for d in twisted.plugins.__path__:
        if os.path.exists(os.path.join(d, "flannel_plugin.py")):
            cache = os.path.join(d, "dropin.cache")
            if not os.path.exists(cache):
                stderr.write("flannel-tw: could not write %s\n" % (cache,))
                return 1
            stdout.write("twistd plugin 'flannel' in %s (cache %s)\n" % (d, cache))
    return 0


def entry():
    sys.exit(main())


if __name__ == "__main__":
    entry()
