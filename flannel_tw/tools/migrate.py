# -*- test-case-name: tests.unit.test_migrate, tests.integration.test_migrate -*-
"""
``flannel-tw etcd migrate``: copy the network config and the leases from etcd's v2
keyspace (flanneld v0.10-v0.17) to its v3 keyspace (flanneld v0.18+, flannel-tw
C{--etcd-api=v3}), once, with the daemon's etcd flags.

    flannel-tw etcd migrate [--follow] [etcd flags]

- B{config}: C{<prefix>/config} is written to v3 when v3 has none (create-only); the
  same config already there is fine; a different one is refused (exit 1) before
  anything is written.
- B{leases}: every key under C{<prefix>/subnets} in v2 is checked (its key in flanneld's
  exact form, its value parseable, inside the config's Network with its SubnetLen, a
  usable PublicIP: L{flannel_tw.model.leasecheck}); a bad one is skipped with one line
  saying why, never copied. A good one is created in v3 only where v3 has no such key
  (a txn on C{version == 0}), so nothing v3 holds is overwritten: a lease with a TTL
  gets a newly granted etcd lease of the TTL it has left in v2, a reservation (no TTL)
  stays one (no lease), and the value is written in flanneld v0.20's form
  (L{v3_lease_value}).

Safe to run again (a second run finds everything there) and on a live cluster.
The last line sums up: C{N copied, M already there, K skipped as invalid}.

C{--follow}: after the copy, lease changes are mirrored both ways until SIGINT/SIGTERM
(L{flannel_tw.tools.follow.Follower}): for the rolling move of hosts from v2-era to
v3-era flanneld.

Exit status: 0 done (skipped invalid leases included), 1 failed (different configs,
etcd error or unreachable; the reason on stderr), 2 usage error.
"""
import argparse
import contextlib
import os
import re
import sys

from twisted.internet import defer
from twisted.python import usage

from flannel_tw.etcd.registry_v3 import v3_value
from flannel_tw.model.config import ConfigError, parse_config
from flannel_tw.model.lease import Lease, LeaseAttrs, LeaseParseError, parse_canonical_keys
from flannel_tw.model.leasecheck import lease_problem

PROG = "flannel-tw etcd migrate"
# the daemon's etcd flags; --etcd-api makes no sense here (both keyspaces are used)
ETCD_FLAGS = ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
              "etcd-username", "etcd-password")


class CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


# -- pure: what to do with one v2 lease ------------------------------------------------

_V010_VXLAN = re.compile(r'(\{"PublicIP":"[0-9.]*","PublicIPv6":null,"BackendType":"vxlan",'
                         r'"BackendData":\{)("VtepMAC":"[^"]*"\}\})\Z')


def v3_lease_value(text, attrs, vni=None):
    """
    The v3 value for a v2 lease value C{text} (already parsed into C{attrs}): flanneld
    v0.20's form, C{PublicIP}, C{"PublicIPv6":null}, C{BackendType}, C{BackendData}.
    A value in the v2 writer's form keeps its text with C{PublicIPv6} inserted
    (L{v3_value}), and a vxlan one gets v0.20's C{"VNI":vni} in front of its VtepMAC
    when C{vni} (the config's) is given; a value already carrying C{PublicIPv6} is kept
    as it is; any other (spacing, field order, case) is written anew from C{attrs}.
    """
    if '"PublicIPv6"' in text:
        return text
    converted = v3_value(text)
    if converted == text:
        converted = v3_value(attrs.to_json())
    m = _V010_VXLAN.match(converted)
    if m is not None and vni is not None:
        converted = '%s"VNI":%d,%s' % (m.group(1), vni, m.group(2))
    return converted


def plan_lease(key, value, ttl, config=None):
    """
    What to do with the v2 lease at C{key} (full key; C{value} its text or None, C{ttl}
    its seconds left or None for a reservation), given the parsed network C{config}
    (None: not checked against it).

    @return: C{("copy", name, v3_text, ttl)} with C{name} the key's last component, or
        C{("skip", reason, message)}.
    """
    name = key.rstrip("/").rsplit("/", 1)[-1]
    try:
        subnet, ipv6_subnet = parse_canonical_keys(key)      # dual-stack keys too
    except LeaseParseError as e:
        return ("skip", "bad-key", str(e))
    if value is None:
        return ("skip", "bad-value", "no value")
    try:
        attrs = LeaseAttrs.from_json(value)
    except LeaseParseError as e:
        return ("skip", "bad-value", str(e))
    ipv6 = config is not None and config.enable_ipv6   # the v6 part checked then only
    problem = lease_problem(Lease(subnet=subnet, attrs=attrs, key=name, ipv6_subnet=ipv6_subnet),
                            network=config.network if config else None,
                            subnet_len=config.subnet_len if config else None,
                            ipv6_network=config.ipv6_network if ipv6 else None,
                            ipv6_subnet_len=config.ipv6_subnet_len if ipv6 else None)
    if problem is not None:
        return ("skip",) + tuple(problem)
    if ttl is not None:
        ttl = max(int(ttl), 1)
    return ("copy", name, v3_lease_value(value, attrs, _vxlan_vni(config)), ttl)


def _vxlan_vni(config):
    """The VNI of a vxlan config (None: not vxlan, or no config)."""
    if config is None or config.backend_type != "vxlan":
        return None
    from flannel_tw.backend.vxlan.backend import parse_options
    try:
        return parse_options(config.backend).vni
    except ValueError:
        return None


def v2_lease_value(text):
    """The v2 value for a v3 lease value: flanneld v0.20's C{"PublicIPv6":null} right
    after C{PublicIP} taken out again (the v2 writer's form); anything else unchanged."""
    m = _V3_HEAD.match(text)
    if m is None or '"BackendV6Data"' in text:   # a dual-stack value keeps its PublicIPv6
        return text
    return text[:m.end(1)] + text[m.end():]


_V3_HEAD = re.compile(r'(\{"PublicIP":"[0-9.]*"),"PublicIPv6":null')


def same_config(a, b):
    """Whether two config texts say the same (equal text, or equal once parsed, Backend
    included)."""
    if a.strip() == b.strip():
        return True
    try:
        pa, pb = parse_config(a), parse_config(b)
    except ConfigError:
        return False
    return pa == pb and pa.backend == pb.backend


# -- the command -----------------------------------------------------------------------

class _ArgparseExit(Exception):
    def __init__(self, code):
        self.code = code if isinstance(code, int) else 2


def _parser():
    from flannel_tw.tap import _PARAMS, _env_name
    p = argparse.ArgumentParser(
        prog="flannel-tw etcd",
        description="Move flannel's keys from etcd's v2 keyspace to its v3 keyspace, with "
                    "the daemon's etcd flags (each also as FLANNELD_<FLAG>; with no TLS "
                    "file given $ETCD_SSL_DIR is searched as the daemon does).")
    sub = p.add_subparsers(dest="command", metavar="migrate")
    mig = sub.add_parser("migrate", help="copy the config and the leases from v2 to v3 "
                                         "(create-only: nothing in v3 is overwritten)")
    mig.add_argument("--follow", action="store_true",
                     help="after the copy, keep mirroring lease changes both ways until "
                          "stopped (SIGINT/SIGTERM), for a rolling move")
    group = mig.add_argument_group("etcd (the daemon's flags; see twistd flannel --help)")
    for flag in ETCD_FLAGS:
        group.add_argument("--" + flag, dest=flag, metavar="VALUE",
                           help="%s (%s)" % (_PARAMS[flag][1], _env_name(flag)))
    return p


def parse(argv, environ, stdout=None, stderr=None):
    """C{(args, options)}; raises L{usage.UsageError} (exit 2) or L{_ArgparseExit}."""
    from flannel_tw.tools.netconfig import _normalize, etcd_options
    try:
        with contextlib.redirect_stdout(stdout or sys.stdout), \
                contextlib.redirect_stderr(stderr or sys.stderr):
            args = _parser().parse_args(_normalize(argv))
    except SystemExit as e:
        raise _ArgparseExit(e.code)
    if args.command is None:
        raise usage.UsageError("give a command: migrate")
    flags = ["--%s=%s" % (f, getattr(args, f)) for f in ETCD_FLAGS
             if getattr(args, f) is not None]
    env = {k: v for k, v in environ.items() if k != "FLANNELD_ETCD_API"}
    return args, etcd_options(flags, env)


@defer.inlineCallbacks
def _create_config(client, key, text):
    """Create C{key} in v3 unless it exists; fires with the revision, or None when a
    value appeared meanwhile."""
    from flannel_tw.etcd.v3client import as_int, b64
    answer = yield client.txn(
        [{"key": b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}],
        [{"request_put": {"key": b64(key), "value": b64(text)}}])
    if not answer.get("succeeded"):
        return None
    return as_int((answer.get("header") or {}).get("revision"))


@defer.inlineCallbacks
def migrate(reactor, options, environ, stdout, follow=None):
    """The one-shot copy. Fires with C{(copied, present, skipped)}; raises
    L{CommandError} or the etcd client's errors. With C{follow} (a callable), it is
    called after the copy with a L{Follower} set up from the copy (the clients are
    then closed once the Deferred it returns fires)."""
    from flannel_tw.etcd.errors import EtcdProtocolError, NodeExist
    from flannel_tw.etcd.registry import EtcdV2Registry
    from flannel_tw.etcd.registry_v3 import EtcdV3Registry
    from flannel_tw.tools.netconfig import V2ConfigStore, V3ConfigStore, make_client

    prefix = options["etcd-prefix"]
    v2client = make_client(reactor, options, environ, "v2")
    v3client = make_client(reactor, options, environ, "v3")
    try:
        v2conf, v3conf = V2ConfigStore(v2client, prefix), V3ConfigStore(v3client, prefix)
        try:
            v2text = yield v2conf.get()
        except EtcdProtocolError as e:
            if e.status == 404:
                raise CommandError("etcd serves no v2 keyspace (started without "
                                   "--enable-v2?): nothing to migrate")
            raise
        v3text = yield v3conf.get()
        config = None
        if v2text is not None:
            try:
                config = parse_config(v2text)
            except ConfigError as e:
                stdout.write("%s: warning: the v2 config does not parse (%s); leases are "
                             "checked without it\n" % (PROG, e))
        if v2text is not None and v3text is not None and not same_config(v2text, v3text):
            raise CommandError(
                "the v3 keyspace already holds a different network config at %s (v2: %s; "
                "v3: %s); nothing written. Make them equal (flannel-tw config set "
                "--etcd-api=v3 ...) or remove the v3 one, then run again"
                % (v3conf.key, v2text, v3text))
        if v2text is None:
            stdout.write("%s: config: none in v2 (%s)%s\n" % (
                PROG, v2conf.key, "" if v3text is None else "; v3 has one"))
        elif v3text is not None:
            stdout.write("%s: config: already in v3 (%s)\n" % (PROG, v3conf.key))
        else:
            revision = yield _create_config(v3client, v3conf.key, v2text)
            if revision is None:
                v3text = yield v3conf.get()
                if v3text is not None and not same_config(v2text, v3text):
                    raise CommandError("a different network config appeared in v3 at %s "
                                       "meanwhile: %s" % (v3conf.key, v3text))
                stdout.write("%s: config: already in v3 (%s)\n" % (PROG, v3conf.key))
            else:
                stdout.write("%s: config: copied to v3 (%s, etcd revision %d)\n"
                             % (PROG, v3conf.key, revision))

        v2reg, v3reg = EtcdV2Registry(v2client, prefix), EtcdV3Registry(v3client, prefix)
        follower = None
        if follow is not None:   # the v3 cursor is taken before the copy: nothing is missed
            from flannel_tw.tools.follow import Follower
            v3records, v3revision = yield v3reg.list()
            follower = Follower(reactor, v2reg, v3reg, config, stdout)
        records, v2index = yield v2reg.list()
        copied = present = skipped = 0
        for record in sorted(records, key=lambda r: r.key):
            plan = plan_lease(record.key, record.value, record.ttl, config)
            if plan[0] == "skip":
                skipped += 1
                stdout.write("%s: skipped %r (%s): %s\n" % (PROG, record.key, plan[1], plan[2]))
                continue
            _, name, value, ttl = plan
            try:
                created = yield v3reg.create(name, value, ttl)
            except NodeExist:
                present += 1
                stdout.write("%s: %s already in v3, left alone\n" % (PROG, v3reg.key(name)))
                continue
            if follower is not None:
                follower.mirrored("v3", name, record.modified_index, created.modified_index)
            copied += 1
            stdout.write("%s: copied %s (%s)\n" % (
                PROG, v3reg.key(name),
                "reservation, no TTL" if ttl is None else "TTL %ds" % ttl))
        stdout.write("%s: %d copied, %d already there, %d skipped as invalid\n"
                     % (PROG, copied, present, skipped))
        if follower is not None:
            yield follower.seed(records, v3records)
            yield follow(follower, v2index + 1, v3revision + 1)
        return copied, present, skipped
    finally:
        yield v2client.close()
        yield v3client.close()


@defer.inlineCallbacks
def execute(reactor, args, options, stdout, stderr, environ, started=None):
    """Run a parsed command. Fires with the exit status. With --follow, C{started} (if
    given) is called with the L{Follower} once it follows; SIGINT/SIGTERM (the reactor's
    shutdown) or L{Follower.stop} ends it."""
    from flannel_tw.etcd.errors import EtcdError, EtcdProtocolError, EtcdUnavailable
    from flannel_tw.tools.netconfig import CommandError as NetconfigError

    def follow(follower, v2index, v3revision):
        trigger = reactor.addSystemEventTrigger("before", "shutdown", follower.stop)
        done = follower.follow(v2index, v3revision)
        if started is not None:
            started(follower)

        def finished(result):
            try:
                reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass
            return result
        return done.addBoth(finished)

    try:
        yield migrate(reactor, options, environ, stdout, follow if args.follow else None)
        return 0
    except (CommandError, NetconfigError) as e:
        stderr.write("%s: %s\n" % (PROG, e))
        return 1
    except (EtcdError, EtcdUnavailable, EtcdProtocolError) as e:
        stderr.write("%s: etcd: %s\n" % (PROG, e))
        return 1


def run(reactor, argv, stdout, stderr, environ=None, started=None):
    """The whole command (argv after C{etcd}) on a running reactor; fires with the exit
    status."""
    environ = os.environ if environ is None else environ
    try:
        args, options = parse(argv, environ, stdout, stderr)
    except _ArgparseExit as e:
        return defer.succeed(e.code)
    except usage.UsageError as e:
        stderr.write("%s: %s\n(see: flannel-tw etcd migrate --help)\n" % (PROG, e))
        return defer.succeed(2)
    return execute(reactor, args, options, stdout, stderr, environ, started)


def main(argv, stdout=None, stderr=None):
    """C{flannel-tw etcd ...}: its own reactor (task.react), exits with the status."""
    from flannel_tw.tools.netconfig import react_exit
    react_exit(run, argv, stdout, stderr)
