# -*- test-case-name: tests.unit.test_iptables, tests.integration.test_iptables, tests.lab.test_iptables -*-
"""
flanneld v0.10's iptables rules (flannel-compat.md section 9), N = Network, S = our subnet:

  with --ip-masq, table nat, chain POSTROUTING, in this order:
    -s N -d N -j RETURN
    -s N ! -d 224.0.0.0/4 -j MASQUERADE
    ! -s N -d S -j RETURN
    ! -s N -d N -j MASQUERADE
  unless --iptables-forward-rules=false (newer flanneld's flag), table filter, chain FORWARD:
    -s N -j ACCEPT
    -d N -j ACCEPT

With IPv6 enabled (dual-stack), also flanneld v0.20's ip6tables rules
(flanneld-v0.20-v3.md section C; there is no --ip6-masq: --ip-masq covers both
families), N6 = IPv6Network, S6 = our v6 subnet, every rule with its comment:

  with --ip-masq, table nat: ``-I POSTROUTING -m comment --comment "flanneld masq"
  -j FLANNEL-POSTRTG``, and in chain FLANNEL-POSTRTG, in this order:
    -m mark --mark 0x4000/0x4000 -j RETURN
    -s N6 -d N6 -j RETURN
    -s N6 ! -d ff00::/8 -j MASQUERADE --random-fully
    ! -s N6 -d S6 -j RETURN
    ! -s N6 -d N6 -j MASQUERADE --random-fully
  (--random-fully when this ip6tables knows it: probed once with ``-C``, exit 2 = not);
  unless --iptables-forward-rules=false, table filter: ``-I FORWARD -m comment --comment
  "flanneld forward" -j FLANNEL-FWD``, and in FLANNEL-FWD ``-s N6 -j ACCEPT``,
  ``-d N6 -j ACCEPT``.

Every 5 s (on the injected reactor) each set is checked with ``iptables -C``; when a rule
of a set is missing, every rule of that set is deleted (all copies) and the set is appended
again, in order. So a restart finds its rules and appends nothing: never a duplicate. The
rules stay when the daemon stops, as with flanneld. The ip6tables sets work the same way
(flanneld v0.20 uses iptables-restore; the -C/-D/-A cycle is the v4 rules' one): their
chains are created (-N) before their rules are appended, and the jump to a chain is
inserted (-I, first in POSTROUTING/FORWARD) after the chain's rules.

This runs the ``iptables`` binary (argv lists, never a shell) through Twisted's process
support: the machine's iptables may be the nf_tables variant, which python-iptables
(libiptc, legacy tables only) cannot drive.
"""
import os
import shutil
from ipaddress import IPv4Network, IPv6Network

from twisted.internet import defer, task, utils
from twisted.logger import Logger

CHECK_INTERVAL = 5.0          # seconds (flanneld: 5)
MULTICAST = "224.0.0.0/4"
MULTICAST6 = "ff00::/8"
MASQ_CHAIN, FWD_CHAIN = "FLANNEL-POSTRTG", "FLANNEL-FWD"   # flanneld v0.20's chains (v6 here)
KUBE_PROXY_MARK = "0x4000/0x4000"
_MASQ_COMMENT = ("-m", "comment", "--comment", "flanneld masq")
_FWD_COMMENT = ("-m", "comment", "--comment", "flanneld forward")
_MAX_COPIES = 64              # deleting duplicates stops after this many per rule


class IptablesError(Exception):
    """iptables failed; the message has the command and its stderr."""


def masq_rules(network, subnet):
    """The --ip-masq rules: a list of C{(table, chain, args)}, in append order."""
    n, s = str(IPv4Network(network)), str(IPv4Network(subnet))
    return [
        ("nat", "POSTROUTING", ("-s", n, "-d", n, "-j", "RETURN")),
        ("nat", "POSTROUTING", ("-s", n, "!", "-d", MULTICAST, "-j", "MASQUERADE")),
        ("nat", "POSTROUTING", ("!", "-s", n, "-d", s, "-j", "RETURN")),
        ("nat", "POSTROUTING", ("!", "-s", n, "-d", n, "-j", "MASQUERADE")),
    ]


def forward_rules(network):
    """The FORWARD accept rules (always): a list of C{(table, chain, args)}."""
    n = str(IPv4Network(network))
    return [
        ("filter", "FORWARD", ("-s", n, "-j", "ACCEPT")),
        ("filter", "FORWARD", ("-d", n, "-j", "ACCEPT")),
    ]


def masq6_rules(network6, subnet6, random_fully=True):
    """The ip6tables --ip-masq rules (flanneld v0.20): the FLANNEL-POSTRTG rules in order,
    then the jump from POSTROUTING (inserted first); a list of C{(table, chain, args)}."""
    n, s = str(IPv6Network(network6)), str(IPv6Network(subnet6))
    c, masq = _MASQ_COMMENT, ("-j", "MASQUERADE") + (("--random-fully",) if random_fully else ())
    return [
        ("nat", MASQ_CHAIN, ("-m", "mark", "--mark", KUBE_PROXY_MARK) + c + ("-j", "RETURN")),
        ("nat", MASQ_CHAIN, ("-s", n, "-d", n) + c + ("-j", "RETURN")),
        ("nat", MASQ_CHAIN, ("-s", n, "!", "-d", MULTICAST6) + c + masq),
        ("nat", MASQ_CHAIN, ("!", "-s", n, "-d", s) + c + ("-j", "RETURN")),
        ("nat", MASQ_CHAIN, ("!", "-s", n, "-d", n) + c + masq),
        ("nat", "POSTROUTING", c + ("-j", MASQ_CHAIN)),
    ]


def forward6_rules(network6):
    """The ip6tables FORWARD accept rules (flanneld v0.20): FLANNEL-FWD's two rules, then
    the jump from FORWARD (inserted first)."""
    n = str(IPv6Network(network6))
    return [
        ("filter", FWD_CHAIN, ("-s", n) + _FWD_COMMENT + ("-j", "ACCEPT")),
        ("filter", FWD_CHAIN, ("-d", n) + _FWD_COMMENT + ("-j", "ACCEPT")),
        ("filter", "FORWARD", _FWD_COMMENT + ("-j", FWD_CHAIN)),
    ]


def _is_jump(rule):
    """A jump into one of our chains: inserted first in its built-in chain."""
    return rule[2][-2:] in (("-j", MASQ_CHAIN), ("-j", FWD_CHAIN))


def _our_chains(rules):
    """The (table, chain) pairs of C{rules} that are our own chains, in order."""
    out = []
    for table, chain, _ in rules:
        if chain in (MASQ_CHAIN, FWD_CHAIN) and (table, chain) not in out:
            out.append((table, chain))
    return out


def rule_argv(op, rule):
    """C{("-C"|"-A"|"-D", rule)} -> iptables arguments (after the program name)."""
    table, chain, args = rule
    return ["-w", "5", "-t", table, op, chain] + list(args)


class ProcessRunner:
    """
    Runs ``iptables ARGS`` with the reactor's process support.

    Calling it returns a Deferred firing with C{(exit code, stderr text)}; fails with
    L{IptablesError} when the binary is missing.

    The binary is looked up in PATH (shutil.which: a stat per PATH entry, on the reactor
    thread) once, at the first call, and cached; it is looked up again only while it is
    missing, or after the cached path could not be run or a failed run found it gone.
    """

    def __init__(self, reactor, binary="iptables"):
        self._reactor = reactor
        self._binary = binary
        self._path = None

    def __call__(self, args):
        path = self._path
        if path is None:
            path = self._path = shutil.which(self._binary)
        if path is None:
            return defer.fail(IptablesError("cannot find the %r command" % (self._binary,)))
        try:
            d = utils.getProcessOutputAndValue(path, args, env=dict(os.environ),
                                               reactor=self._reactor)
        except OSError as e:           # posix_spawn: the binary vanished
            self._path = None
            return defer.fail(IptablesError("cannot run %s: %s" % (path, e.strerror or e)))
        return d.addCallback(self._result, path)

    def _result(self, result, path):
        _out, err, code = result
        if code != 0 and not os.access(path, os.X_OK):
            # the fork path reports a failed exec as an exit status: was the binary removed?
            self._path = None
            raise IptablesError("%s is gone" % (path,))
        return code, err.decode("utf-8", "replace").strip()


class TrafficRules:
    """
    flanneld's rules for C{network} and our C{subnet}; masquerading only with C{ip_masq};
    with C{network6} (and C{subnet6} for the masquerade), the ip6tables rules too.

    @param runner: C{args -> Deferred (code, stderr)}; default L{ProcessRunner}.
    @param runner6: the same for ip6tables; default L{ProcessRunner} of ``ip6tables``.
    """

    log = Logger()

    def __init__(self, reactor, network, subnet, ip_masq, runner=None,
                 interval=CHECK_INTERVAL, forward=True, network6=None, subnet6=None,
                 runner6=None):
        self._reactor = reactor
        self.network = IPv4Network(network)
        self.subnet = IPv4Network(subnet)
        self.ip_masq = bool(ip_masq)
        self.forward = bool(forward)
        self.network6 = IPv6Network(network6) if network6 is not None else None
        self.subnet6 = IPv6Network(subnet6) if subnet6 is not None else None
        self._run = runner if runner is not None else ProcessRunner(reactor)
        self._run6 = None
        if self.network6 is not None:
            self._run6 = runner6 if runner6 is not None else ProcessRunner(reactor, "ip6tables")
        #: whether ip6tables knows MASQUERADE --random-fully (None: not probed yet)
        self.random_fully6 = None
        self.interval = interval
        self._lock = defer.DeferredLock()
        self._loop = None
        self.restored = 0          # times a set was found incomplete and re-appended
        self._last_error = None

    def rule_sets(self):
        """The sets checked and restored as units: C{[masq (with ip_masq), forward
        (unless forward is off)]}."""
        sets = []
        if self.ip_masq:
            sets.append(masq_rules(self.network, self.subnet))
        if self.forward:
            sets.append(forward_rules(self.network))
        return sets

    def rule_sets6(self):
        """The ip6tables sets: C{[masq6 (with ip_masq and a v6 subnet), forward6 (unless
        forward is off)]}; none without C{network6}."""
        sets = []
        if self.network6 is None:
            return sets
        if self.ip_masq and self.subnet6 is not None:
            sets.append(masq6_rules(self.network6, self.subnet6, self.random_fully6 is not False))
        if self.forward:
            sets.append(forward6_rules(self.network6))
        return sets

    # -- the daemon's calls -----------------------------------------------------

    def start(self):
        """
        Ensure the rules now, then every C{interval} s.

        @return: Deferred firing with None once the first check is done (its errors are
            logged, not raised: the periodic check retries).
        """
        d = self.check()
        if self._loop is None:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self._reactor
            self._loop.start(self.interval, now=False)
        return d.addCallback(lambda _: None)

    def update(self, subnet, subnet6=None):
        """
        Our lease moved: replace the masq sets that name the old subnet (v4) or the old
        C{subnet6} (v6; None keeps the v6 subnet).

        @return: Deferred firing with None (errors logged).
        """
        subnet = IPv4Network(subnet)
        subnet6 = IPv6Network(subnet6) if subnet6 is not None else self.subnet6
        if subnet == self.subnet and subnet6 == self.subnet6:
            return defer.succeed(None)
        old, old6 = self.rule_sets(), self.rule_sets6()
        moved, moved6 = subnet != self.subnet, subnet6 != self.subnet6
        self.subnet, self.subnet6 = subnet, subnet6
        if not self.ip_masq:
            return defer.succeed(None)
        self.log.info("Updating the masquerade rules for our new subnet {subnet}",
                      subnet=subnet if subnet6 is None else "%s and %s" % (subnet, subnet6))

        @defer.inlineCallbacks
        def delete_old():
            if moved:
                yield self._delete_set(self._run, old[0])
            if moved6 and old6 and old6[0][0][0] == "nat":
                yield self._delete_set(self._run6, old6[0])
        d = self._lock.run(delete_old)
        d.addErrback(self._report)
        return d.addCallback(lambda _: self.check()).addCallback(lambda _: None)

    def stop(self):
        """Stop the periodic check. The rules stay (flanneld leaves them)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- checking ---------------------------------------------------------------

    def check(self):
        """
        Check every set; delete and re-append a set with a missing rule.

        @return: Deferred firing with the number of sets restored (errors are logged and
            count as none restored).
        """
        d = self._lock.run(self._check_all)
        return d.addErrback(self._report)

    def _report(self, failure):
        message = failure.getErrorMessage()
        if message != self._last_error:
            self._last_error = message
            self.log.error("Failed to ensure iptables rules: {error}", error=message)
        return 0

    @defer.inlineCallbacks
    def _check_all(self):
        restored = 0
        for rules in self.rule_sets():
            restored += yield self._ensure(self._run, "iptables", rules)
        if self.network6 is not None:
            if self.random_fully6 is None:
                self.random_fully6 = yield self._probe_random_fully(self._run6)
            for rules in self.rule_sets6():
                restored += yield self._ensure(self._run6, "ip6tables", rules)
        if self._last_error is not None:
            self.log.info("iptables rules in place again")
            self._last_error = None
        return restored

    @defer.inlineCallbacks
    def _probe_random_fully(self, run):
        """Whether C{run}'s binary knows MASQUERADE --random-fully: a check of a rule
        that uses it answers 0 or 1 (there or not), 2 for an unknown option."""
        args = ["-w", "5", "-t", "nat", "-C", "POSTROUTING", "-j", "MASQUERADE",
                "--random-fully"]
        code, err = yield run(args)
        if code in (0, 1):
            return True
        if code == 2:
            self.log.info("ip6tables has no MASQUERADE --random-fully ({error}); masquerading "
                          "without it", error=err)
            return False
        raise IptablesError("ip6tables %s: exit %d: %s" % (" ".join(args), code, err))

    @defer.inlineCallbacks
    def _ensure(self, run, prog, rules):
        """Check one set; when a rule is missing delete the set and add it again.
        Deferred firing with 1 when restored, else 0."""
        missing = yield self._missing(run, prog, rules)
        if not missing:
            return 0
        if len(missing) == len(rules):
            # none of the set is there (a first start, or someone flushed the chain)
            self.log.info("Adding {prog} rules: {rules}", prog=prog,
                          rules="; ".join(" ".join(_add_argv(r)[1:]) for r in rules))
        else:
            self.log.info("Some {prog} rules are missing ({rule}); deleting and recreating "
                          "rules", prog=prog, rule=" ".join(_add_argv(missing[0])[3:]))
        yield self._delete_set(run, rules)
        for table, chain in _our_chains(rules):
            code, err = yield run(["-w", "5", "-t", table, "-N", chain])
            if code != 0 and "exists" not in err:
                raise IptablesError("%s -t %s -N %s: exit %d: %s"
                                    % (prog, table, chain, code, err))
        for rule in rules:
            yield self._iptables(run, prog, _add_argv(rule))
        self.restored += 1
        return 1

    @defer.inlineCallbacks
    def _missing(self, run, prog, rules):
        missing = []
        for rule in rules:
            code, err = yield run(rule_argv("-C", rule))
            if code == 1 or (code != 0 and missing and _is_jump(rule)):
                # (legacy iptables fails a check of a jump to a missing chain with 2)
                missing.append(rule)
            elif code != 0:
                raise IptablesError("%s %s: exit %d: %s"
                                    % (prog, " ".join(rule_argv("-C", rule)), code, err))
        return missing

    @defer.inlineCallbacks
    def _delete_set(self, run, rules):
        """Delete every copy of each rule (iptables -D deletes one per call)."""
        for rule in rules:
            for _ in range(_MAX_COPIES):
                code, _err = yield run(rule_argv("-D", rule))
                if code != 0:
                    break

    @defer.inlineCallbacks
    def _iptables(self, run, prog, args):
        code, err = yield run(args)
        if code != 0:
            raise IptablesError("%s %s: exit %d: %s" % (prog, " ".join(args), code, err))


def _add_argv(rule):
    """How a rule is added: a jump into our chain first in its chain (-I), others
    appended (-A)."""
    return rule_argv("-I" if _is_jump(rule) else "-A", rule)
