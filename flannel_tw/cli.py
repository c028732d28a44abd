# -*- test-case-name: tests.test_cli -*-
"""
``flannel-tw``: the helper commands around the daemon.

    flannel-tw docker-opts [-f subnet.env] [-d out] [-i] [-c] [-k KEY] [-m]
    flannel-tw lab [--hosts N] [--backend udp] [--keep] | flannel-tw lab down
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
        from flannel_tw.dockeropts import main as docker_opts
        return docker_opts(rest, stdout, stderr)
    if command == "lab":
        from flannel_tw.lab.run import main as lab
        return lab(rest)
    if command == "cni":
        from flannel_tw.cni import main as cni
        return cni(rest)
    if command in ("version", "--version"):
        stdout.write("flannel-tw %s\n" % flannel_tw.__version__)
        return 0
    stderr.write("flannel-tw: unknown command %r\n\n%s" % (command, USAGE))
    return 2


def entry():
    sys.exit(main())


if __name__ == "__main__":
    entry()
