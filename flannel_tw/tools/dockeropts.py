# -*- test-case-name: tests.unit.test_dockeropts, tests.integration.test_dockeropts -*-
"""
``flannel-tw docker-opts``: mk-docker-opts.sh (flannel-compat.md section 5) in Python.
Reads subnet.env and writes the Docker daemon options, atomically. Pure apart from
file I/O and os.environ; no reactor.

Dual-stack (issue 15): mk-docker-opts.sh knows no IPv6, so with FLANNEL_IPV6_SUBNET in
subnet.env flannel-tw adds Docker's own options, ``DOCKER_OPT_IPV6="--ipv6"`` and
``DOCKER_OPT_FIXED_CIDR_V6="--fixed-cidr-v6=<network of FLANNEL_IPV6_SUBNET>"`` (in the
alphabetical order of the other variables, and in the combined one); a
FLANNEL_IPV6_SUBNET that is not an IPv6 address with a /prefix is an error (exit 1,
the output file left as it was).
"""
import getopt
import os
import re

from flannel_tw.host.subnetfile import SubnetFileError, read_env, render_docker_opts, write_atomic

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DOCKER_ENV = "/run/flannel/flannel_docker_opts.env"
DEFAULT_KEY = "DOCKER_OPTS"

USAGE = """\
usage: flannel-tw docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to %s
\t-d\tPath to Docker env file to write to. Defaults to %s
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
\t\t(with FLANNEL_IPV6_SUBNET: --ipv6 --fixed-cidr-v6=<its network> too)
\t-h, --help\tShow this help and exit
""" % (DEFAULT_SUBNET_FILE, DEFAULT_DOCKER_ENV)

_SHELL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def main(argv, stdout, stderr) -> int:
    """Run with ``argv`` = the arguments after ``docker-opts`` (no program name).

    Returns the exit status: 0 when the Docker env file was written, or after
    ``-h``/``--help`` (the usage on ``stdout``; mk-docker-opts.sh exits 1 there);
    1 after a usage error or a missing/malformed subnet.env (reported on
    ``stderr``, naming the file), in which case the output file is left as it was.
    """
    try:
        opts, args = getopt.getopt(argv, "f:d:icmk:h", ["help"])
    except getopt.GetoptError as e:
        stderr.write("flannel-tw docker-opts: %s\n%s" % (e, USAGE))
        return 1
    if args:
        stderr.write("flannel-tw docker-opts: unexpected argument %r\n%s" % (args[0], USAGE))
        return 1
    flannel_env, docker_env, key = DEFAULT_SUBNET_FILE, DEFAULT_DOCKER_ENV, DEFAULT_KEY
    individual = combined = False
    ipmasq = True
    for opt, value in opts:
        if opt in ("-h", "--help"):
            stdout.write(USAGE)
            return 0
        elif opt == "-f":
            flannel_env = value
        elif opt == "-d":
            docker_env = value
        elif opt == "-i":
            individual = True
        elif opt == "-c":
            combined = True
        elif opt == "-m":
            ipmasq = False
        elif opt == "-k":
            key = value
    if not _SHELL_NAME_RE.fullmatch(key):
        return _fail(stderr, "-k %r is not a valid variable name" % (key,))
    if not individual and not combined:
        individual = combined = True
    try:
        env = read_env(flannel_env)             # its message names the file
    except SubnetFileError as e:
        return _fail(stderr, str(e))
    try:
        text = render_docker_opts(env, individual=individual, combined=combined, key=key,
                                  ipmasq=ipmasq, existing=os.environ.get(key, ""))
    except SubnetFileError as e:
        return _fail(stderr, "%s: %s" % (flannel_env, e))
    try:
        write_atomic(docker_env, text)
    except OSError as e:
        return _fail(stderr, "cannot write %s: %s" % (docker_env, e.strerror or e))
    return 0


def _fail(stderr, message: str) -> int:
    stderr.write("flannel-tw docker-opts: %s\n" % (message,))
    return 1
