# -*- test-case-name: tests.unit.test_netconfig, tests.integration.test_netconfig -*-
"""
``flannel-tw config get`` / ``flannel-tw config set``: read or publish the network
config, C{<prefix>/config}, in etcd's v2 keyspace (the key flannel-tw and flanneld
<= v0.17 read), with the daemon's own etcd settings.

    flannel-tw config get [etcd flags]
    flannel-tw config set CONFIG_JSON | - | --file FILE [etcd flags]

The etcd flags are the daemon's (C{--etcd-endpoints}, C{--etcd-prefix},
C{--etcd-cafile}/C{-certfile}/C{-keyfile}, C{--etcd-username}/C{-password}), each also
taken from its C{FLANNELD_*} variable, and parsed and checked by the daemon's own
L{flannel_tw.tap.Options}; with no TLS file given, C{$ETCD_SSL_DIR} (default
/etc/ssl/etcd) is searched as the daemon does (L{flannel_tw.etcd.tls.tls_files}).
So in a unit's C{ExecStartPre=} it reaches the same etcd, with the same certificates,
as the daemon it precedes.

C{set} checks the JSON with L{flannel_tw.model.config.parse_config} first and writes nothing
when it is invalid; it writes only when the value differs from etcd's.

Exit status: 0 done, 1 failed (invalid config, unreadable file, etcd error or
unreachable; the reason on stderr), 2 usage error.

Only the v2 API is implemented; a v3 store (issue 14, C{--etcd-api=v3}) would be a
second class beside L{V2ConfigStore}, chosen in L{make_store}.
"""
import argparse
import contextlib
import os
import sys

from twisted.internet import defer, task
from twisted.python import usage

from flannel_tw.model.config import ConfigError, parse_config

ETCD_FLAGS = ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
              "etcd-username", "etcd-password")


class CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


def etcd_options(argv, environ):
    """
    The daemon's L{flannel_tw.tap.Options} parsed from C{argv} (etcd flags only) and
    the C{FLANNELD_ETCD_*} variables of C{environ}; the daemon's other variables are
    not looked at. Raises L{usage.UsageError} naming the flag or variable.
    """
    from flannel_tw.tap import Options, _env_name
    names = {_env_name(f) for f in ETCD_FLAGS}
    options = Options(environ={k: v for k, v in environ.items() if k in names})
    options.parseOptions(list(argv))
    return options


def make_client(reactor, options, environ):
    """An L{EtcdV2Client} as the daemon builds it (TLS files, ETCD_SSL_DIR, basic auth)."""
    from flannel_tw.etcd.client import EtcdV2Client
    from flannel_tw.etcd.tls import TLSFileError, tls_files, tls_policy
    cafile, certfile, keyfile = tls_files(options["etcd-cafile"], options["etcd-certfile"],
                                          options["etcd-keyfile"], environ)
    tls = None
    if cafile or certfile:
        try:
            tls = tls_policy(cafile, certfile, keyfile)
        except TLSFileError as e:
            raise CommandError(str(e))
    return EtcdV2Client(reactor, options["etcd-endpoints"],
                        username=options["etcd-username"] or None,
                        password=options["etcd-password"] or None, tls=tls)


class V2ConfigStore:
    """C{<prefix>/config} in the etcd v2 keyspace."""

    def __init__(self, client, prefix):
        self.client = client
        self.key = prefix.rstrip("/") + "/config"

    @defer.inlineCallbacks
    def get(self):
        """Fires with the value (str), or None when the key does not exist; fails with the
        client's errors (L{flannel_tw.etcd.client})."""
        from flannel_tw.etcd.errors import KeyNotFound
        try:
            response = yield self.client.get(self.key, quorum=True)
        except KeyNotFound:
            return None
        return response.node.value

    def set(self, value):
        """Fires with the client's Response once written."""
        return self.client.set(self.key, value)


def make_store(client, options):
    """The config store for the etcd API in use (v2 only, for now)."""
    return V2ConfigStore(client, options["etcd-prefix"])


def _parser():
    from flannel_tw.tap import _PARAMS, _env_name
    p = argparse.ArgumentParser(
        prog="flannel-tw config",
        description="Read or publish the network config <prefix>/config in etcd (v2 "
                    "keyspace) with the daemon's etcd flags; each flag can also be given "
                    "as FLANNELD_<FLAG>, and with no TLS file given $ETCD_SSL_DIR "
                    "(default /etc/ssl/etcd) is searched as the daemon does.")
    sub = p.add_subparsers(dest="command", metavar="get|set")
    get = sub.add_parser("get", help="print the network config")
    put = sub.add_parser("set", help="check a network config, then write it if it differs")
    put.add_argument("config", nargs="?", metavar="CONFIG_JSON|-",
                     help="the config as JSON text, or - to read it from stdin")
    put.add_argument("--file", "-f", help="read the config from this file")
    for sp in (get, put):
        group = sp.add_argument_group("etcd (the daemon's flags; see twistd flannel --help)")
        for flag in ETCD_FLAGS:
            group.add_argument("--" + flag, dest=flag, metavar="VALUE",
                               help="%s (%s)" % (_PARAMS[flag][1], _env_name(flag)))
    return p


def _normalize(argv):
    """Go-style ``-etcd-prefix=x`` as the daemon accepts it -> ``--etcd-prefix=x``."""
    out = []
    for arg in argv:
        if arg.startswith("-etcd-"):
            arg = "-" + arg
        out.append(arg)
    return out


def parse(argv, environ, stdin, stdout=None, stderr=None):
    """
    Parse the command line: C{(args, options, value)} where C{value} is the checked
    config text for C{set} (None for C{get}).

    @raise usage.UsageError: a bad flag or value (exit 2).
    @raise CommandError: an unreadable file or an invalid config (exit 1).
    """
    parser = _parser()
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(_normalize(argv))
    except SystemExit as e:
        raise _ArgparseExit(e.code)
    if args.command is None:
        raise usage.UsageError("give a command: get or set")
    flags = ["--%s=%s" % (f, getattr(args, f)) for f in ETCD_FLAGS
             if getattr(args, f) is not None]
    options = etcd_options(flags, environ)
    value = None
    if args.command == "set":
        if (args.config is None) == (args.file is None):
            raise usage.UsageError("config set: give the config as one argument, - (stdin) "
                                   "or --file FILE")
        if args.file is not None:
            try:
                with open(args.file, "rb") as f:
                    raw = f.read()
            except OSError as e:
                raise CommandError("cannot read %s: %s" % (args.file, e.strerror or e))
            where = args.file
        elif args.config == "-":
            raw = stdin.read()
            where = "stdin"
        else:
            raw = args.config
            where = "the argument"
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CommandError("invalid network config in %s: not UTF-8 (%s)" % (where, e))
        value = raw.strip()
        try:
            parse_config(value)
        except ConfigError as e:
            raise CommandError("invalid network config in %s: %s; nothing written"
                               % (where, e))
    return args, options, value


class _ArgparseExit(Exception):
    """argparse printed help (code 0) or a usage error (code 2)."""

    def __init__(self, code):
        self.code = code if isinstance(code, int) else 2


@defer.inlineCallbacks
def execute(reactor, args, options, value, stdout, stderr, environ):
    """Run a parsed command against etcd. Fires with the exit status."""
    from flannel_tw.etcd.errors import EtcdError, EtcdProtocolError, EtcdUnavailable
    client = None
    try:
        client = make_client(reactor, options, environ)
        store = make_store(client, options)
        where = "%s (etcd %s)" % (store.key, ", ".join(options["etcd-endpoints"]))
        current = yield store.get()
        if args.command == "get":
            if current is None:
                raise CommandError("no network config at %s" % (where,))
            stdout.write(current + "\n")
            try:
                parse_config(current)
            except ConfigError as e:
                stderr.write("flannel-tw config: warning: the daemon refuses this config: "
                             "%s\n" % (e,))
            return 0
        if current == value:
            stdout.write("flannel-tw config: %s unchanged\n" % (where,))
            return 0
        response = yield store.set(value)
        stdout.write("flannel-tw config: wrote %s (%s, etcd index %s)\n"
                     % (where, response.action, response.node.modified_index))
        return 0
    except CommandError as e:
        stderr.write("flannel-tw config: %s\n" % (e,))
        return 1
    except (EtcdError, EtcdUnavailable, EtcdProtocolError) as e:
        stderr.write("flannel-tw config: etcd: %s\n" % (e,))
        return 1
    finally:
        if client is not None:
            yield client.close()


def run(reactor, argv, stdout, stderr, environ=None, stdin=None):
    """The whole command on a running reactor. Fires with the exit status."""
    environ = os.environ if environ is None else environ
    stdin = sys.stdin if stdin is None else stdin
    try:
        args, options, value = parse(argv, environ, stdin, stdout, stderr)
    except _ArgparseExit as e:
        return defer.succeed(e.code)
    except usage.UsageError as e:
        stderr.write("flannel-tw config: %s\n(see: flannel-tw config --help)\n" % (e,))
        return defer.succeed(2)
    except CommandError as e:
        stderr.write("flannel-tw config: %s\n" % (e,))
        return defer.succeed(1)
    return execute(reactor, args, options, value, stdout, stderr, environ)


def main(argv, stdout=None, stderr=None):
    """C{flannel-tw config ...}: runs its own reactor (task.react) and exits with the status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def exit_with(code):
        raise SystemExit(code)   # task.react exits 0 on any plain result

    task.react(lambda reactor: run(reactor, argv, stdout, stderr).addCallback(exit_with))
