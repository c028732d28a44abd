# -*- test-case-name: tests.unit.test_netconfig, tests.integration.test_netconfig -*-
"""
``flannel-tw config get`` / ``flannel-tw config set``: read or publish the network
config, C{<prefix>/config}, in etcd's v2 keyspace (the key flanneld <= v0.17 reads) or
its v3 keyspace (flanneld v0.18+), with the daemon's own etcd settings.

    flannel-tw config get [--etcd-api=auto|v2|v3] [etcd flags]
    flannel-tw config set CONFIG_JSON | - | --file FILE [--etcd-api=auto|v2|v3] [etcd flags]

C{--etcd-api} (or C{FLANNELD_ETCD_API}) v2 or v3 reads and writes that keyspace only.
With C{auto} (the default) the command decides as the daemon does
(L{flannel_tw.model.keyspace.choose_keyspace}): C{get} prints whichever keyspace holds
the config and says which on stderr; C{set} writes where the config is (both keyspaces
when both hold the same one, so they stay equal), in v2 when there is none yet (v3 on an
etcd without v2); two different configs are refused (exit 1), nothing written.

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

The stores: L{V2ConfigStore} (L{EtcdV2Client}) and L{V3ConfigStore} (L{EtcdV3Client}).
"""
import argparse
import contextlib
import os
import sys

from twisted.internet import defer, task
from twisted.python import usage

from flannel_tw.model.config import ConfigError, parse_config

ETCD_FLAGS = ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
              "etcd-username", "etcd-password", "etcd-api")


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


def make_client(reactor, options, environ, api="v2"):
    """An L{EtcdV2Client} (or, for C{api} v3, an L{EtcdV3Client}) as the daemon builds it
    (TLS files, ETCD_SSL_DIR, v2 basic auth or v3 token auth)."""
    from flannel_tw.etcd.client import EtcdV2Client
    from flannel_tw.etcd.v3client import EtcdV3Client
    from flannel_tw.etcd.tls import TLSFileError, tls_files, tls_policy
    cafile, certfile, keyfile = tls_files(options["etcd-cafile"], options["etcd-certfile"],
                                          options["etcd-keyfile"], environ)
    tls = None
    if cafile or certfile:
        try:
            tls = tls_policy(cafile, certfile, keyfile)
        except TLSFileError as e:
            raise CommandError(str(e))
    client = EtcdV3Client if api == "v3" else EtcdV2Client
    return client(reactor, options["etcd-endpoints"],
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

    @defer.inlineCallbacks
    def write(self, value):
        """Fires with what etcd said, for the report line, once written."""
        response = yield self.set(value)
        return "%s, etcd index %s" % (response.action, response.node.modified_index)


class V3ConfigStore:
    """Key C{<prefix>/config} in the etcd v3 keyspace (no lease, as flanneld's)."""

    api = "v3"

    def __init__(self, client, prefix):
        self.client = client
        self.key = prefix.rstrip("/") + "/config"

    @defer.inlineCallbacks
    def get(self):
        """Fires with the value (str), or None when the key does not exist."""
        from flannel_tw.etcd.errors import EtcdProtocolError
        from flannel_tw.etcd.v3client import unb64
        answer = yield self.client.range(self.key)
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        try:
            return unb64(kvs[0].get("value")).decode("utf-8")
        except UnicodeDecodeError as e:
            raise EtcdProtocolError("the value of %s is not UTF-8: %s" % (self.key, e))

    @defer.inlineCallbacks
    def write(self, value):
        answer = yield self.client.put(self.key, value)
        return "put, etcd revision %s" % ((answer.get("header") or {}).get("revision"),)


V2ConfigStore.api = "v2"


def make_store(client, options, api="v2"):
    """The config store of C{api}'s keyspace over C{client}."""
    store = V3ConfigStore if api == "v3" else V2ConfigStore
    return store(client, options["etcd-prefix"])


def _parser():
    from flannel_tw.tap import _PARAMS, _env_name
    p = argparse.ArgumentParser(
        prog="flannel-tw config",
        description="Read or publish the network config <prefix>/config in etcd (v2 or v3 "
                    "keyspace, --etcd-api; auto: where it is, v2 when nowhere) with the "
                    "daemon's etcd flags; each flag can also be given "
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


class _Stores:
    """Each keyspace's client and store, built on first use, and closed together."""

    def __init__(self, reactor, options, environ):
        self._reactor, self._options, self._environ = reactor, options, environ
        self._stores = {}

    def __getitem__(self, api):
        if api not in self._stores:
            client = make_client(self._reactor, self._options, self._environ, api)
            self._stores[api] = make_store(client, self._options, api)
        return self._stores[api]

    @defer.inlineCallbacks
    def close(self):
        for store in self._stores.values():
            yield store.client.close()


@defer.inlineCallbacks
def _read(store):
    """The store's value, or None when it holds none (an etcd without v2 holds no v2 value)."""
    from flannel_tw.etcd.errors import EtcdProtocolError
    try:
        value = yield store.get()
    except EtcdProtocolError as e:
        if store.api == "v2" and e.status == 404:
            return None
        raise
    return value


@defer.inlineCallbacks
def _choose(stores, options, command):
    """
    For --etcd-api=auto: C{(apis, text, note)}, the keyspaces to act on, the config
    there (None if none) and what to say about the choice; raises L{CommandError} on two
    different configs.
    """
    from flannel_tw.model.keyspace import KeyspaceConflict, choose_keyspace
    v2 = yield _read(stores["v2"])
    v3 = yield _read(stores["v3"])
    try:
        choice = choose_keyspace(v2, v3, "%s" % stores["v2"].key, "key %s" % stores["v3"].key)
    except KeyspaceConflict as e:
        raise CommandError("%s; nothing written" % (e,) if command == "set" else str(e))
    if choice is None:
        if command == "get":
            return [], None, None
        # nowhere yet: v2 (the default), v3 on an etcd that serves no v2
        v2_served = yield _serves_v2(stores["v2"])
        api = "v2" if v2_served else "v3"
        return [api], None, ("no config in either keyspace; writing v2" if v2_served else
                             "no config in either keyspace and etcd serves no v2; writing v3")
    if v2 is not None and v3 is not None and command == "set":
        return ["v2", "v3"], choice.text, "both keyspaces hold it; writing both"
    return [choice.api], choice.text, choice.reason


@defer.inlineCallbacks
def _serves_v2(store):
    from flannel_tw.etcd.errors import EtcdProtocolError, KeyNotFound
    try:
        yield store.client.get(store.key.rsplit("/", 1)[0] or "/", quorum=True)
    except KeyNotFound:
        return True
    except EtcdProtocolError as e:
        if e.status == 404:
            return False
        raise
    return True


@defer.inlineCallbacks
def execute(reactor, args, options, value, stdout, stderr, environ):
    """Run a parsed command against etcd. Fires with the exit status."""
    from flannel_tw.etcd.errors import EtcdError, EtcdProtocolError, EtcdUnavailable
    stores = _Stores(reactor, options, environ)
    api = options["etcd-api"]
    try:
        endpoints = ", ".join(options["etcd-endpoints"])
        key = options["etcd-prefix"].rstrip("/") + "/config"
        if api == "auto":
            apis, current, note = yield _choose(stores, options, args.command)
            currents = {a: current for a in apis}
            if note:     # get: stdout is the config alone
                (stderr if args.command == "get" else stdout).write(
                    "flannel-tw config: %s\n" % (note,))
        else:
            apis = [api]
            currents = {api: (yield stores[api].get())}
        if args.command == "get":
            current = currents[apis[0]] if apis else None
            if current is None:
                raise CommandError("no network config at %s (etcd %s)%s"
                                   % (key, endpoints, " in either keyspace (v2, v3)"
                                      if api == "auto" else " in the %s keyspace" % api))
            stdout.write(current + "\n")
            try:
                parse_config(current)
            except ConfigError as e:
                stderr.write("flannel-tw config: warning: the daemon refuses this config: "
                             "%s\n" % (e,))
            return 0
        for which in apis:
            where = "%s in the %s keyspace (etcd %s)" % (key, which, endpoints)
            if currents[which] == value:
                stdout.write("flannel-tw config: %s unchanged\n" % (where,))
                continue
            said = yield stores[which].write(value)
            stdout.write("flannel-tw config: wrote %s (%s)\n" % (where, said))
        return 0
    except CommandError as e:
        stderr.write("flannel-tw config: %s\n" % (e,))
        return 1
    except (EtcdError, EtcdUnavailable, EtcdProtocolError) as e:
        stderr.write("flannel-tw config: etcd: %s\n" % (e,))
        return 1
    finally:
        yield stores.close()


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


def react_exit(run, argv, stdout=None, stderr=None):
    """
    Run a command C{run(reactor, argv, stdout, stderr)} (a Deferred firing with the exit
    status) on its own reactor (task.react) and exit with that status.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def exit_with(code):
        raise SystemExit(code)   # task.react exits 0 on any plain result

    task.react(lambda reactor: run(reactor, argv, stdout, stderr).addCallback(exit_with))


def main(argv, stdout=None, stderr=None):
    """C{flannel-tw config ...}: runs its own reactor (task.react) and exits with the status."""
    react_exit(run, argv, stdout, stderr)
