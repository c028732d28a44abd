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

Every 5 s (on the injected reactor) each set is checked with ``iptables -C``; when a rule
of a set is missing, every rule of that set is deleted (all copies) and the set is appended
again, in order. So a restart finds its rules and appends nothing: never a duplicate. The
rules stay when the daemon stops, as with flanneld.

This runs the ``iptables`` binary (argv lists, never a shell) through Twisted's process
support: the machine's iptables may be the nf_tables variant, which python-iptables
(libiptc, legacy tables only) cannot drive.
"""
import os
import shutil
from ipaddress import IPv4Network

from twisted.internet import defer, task, utils
from twisted.logger import Logger

CHECK_INTERVAL = 5.0          # seconds (flanneld: 5)
MULTICAST = "224.0.0.0/4"
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
    flanneld's rules for C{network} and our C{subnet}; masquerading only with C{ip_masq}.

    @param runner: C{args -> Deferred (code, stderr)}; default L{ProcessRunner}.
    """

    log = Logger()

    def __init__(self, reactor, network, subnet, ip_masq, runner=None,
                 interval=CHECK_INTERVAL, forward=True):
        self._reactor = reactor
        self.network = IPv4Network(network)
        self.subnet = IPv4Network(subnet)
        self.ip_masq = bool(ip_masq)
        self.forward = bool(forward)
        self._run = runner if runner is not None else ProcessRunner(reactor)
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

    def update(self, subnet):
        """
        Our lease moved: replace the masq set that names the old subnet.

        @return: Deferred firing with None (errors logged).
        """
        subnet = IPv4Network(subnet)
        if subnet == self.subnet:
            return defer.succeed(None)
        old = self.rule_sets()
        self.subnet = subnet
        if not self.ip_masq:
            return defer.succeed(None)
        self.log.info("Updating the masquerade rules for our new subnet {subnet}", subnet=subnet)
        d = self._lock.run(self._delete_set, old[0])
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
            missing = yield self._missing(rules)
            if not missing:
                continue
            if len(missing) == len(rules):
                # none of the set is there (a first start, or someone flushed the chain)
                self.log.info("Adding iptables rules: {rules}",
                              rules="; ".join(" ".join(rule_argv("-A", r)[1:]) for r in rules))
            else:
                self.log.info("Some iptables rules are missing ({rule}); deleting and "
                              "recreating rules", rule=" ".join(rule_argv("-A", missing[0])[3:]))
            yield self._delete_set(rules)
            for rule in rules:
                yield self._iptables(rule_argv("-A", rule))
            restored += 1
            self.restored += 1
        if self._last_error is not None:
            self.log.info("iptables rules in place again")
            self._last_error = None
        return restored

    @defer.inlineCallbacks
    def _missing(self, rules):
        missing = []
        for rule in rules:
            code, err = yield self._run(rule_argv("-C", rule))
            if code == 1:
                missing.append(rule)
            elif code != 0:
                raise IptablesError("iptables %s: exit %d: %s"
                                    % (" ".join(rule_argv("-C", rule)), code, err))
        return missing

    @defer.inlineCallbacks
    def _delete_set(self, rules):
        """Delete every copy of each rule (iptables -D deletes one per call)."""
        for rule in rules:
            for _ in range(_MAX_COPIES):
                code, _err = yield self._run(rule_argv("-D", rule))
                if code != 0:
                    break

    @defer.inlineCallbacks
    def _iptables(self, args):
        code, err = yield self._run(args)
        if code != 0:
            raise IptablesError("iptables %s: exit %d: %s" % (" ".join(args), code, err))
