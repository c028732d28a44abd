# -*- test-case-name: tests.unit.test_tap, tests.integration.test_tap -*-
"""
``twistd flannel``: flanneld v0.10's flags (flannel-compat.md section 10), each also
taken from ``FLANNELD_<NAME>`` when not given on the command line, and
makeService(options, reactor).

Differences from flanneld, deliberately (section 13): an unknown flag or a bad value
exits non-zero with a message naming the flag (or the environment variable).
Like Go's flag package, ``-flag`` and ``--flag`` are the same, and boolean flags
take ``--flag=true|false``.
"""
import os
import re
import sys
from ipaddress import AddressValueError, IPv4Address, IPv6Address
from urllib.parse import urlsplit

from twisted.python import usage

import flannel_tw
from flannel_tw.model.config import DEFAULT_PREFIX

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
ENV_PREFIX = "FLANNELD_"

_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

# name -> (default, help). Repeatable and boolean flags are listed apart.
_PARAMS = {
    "etcd-endpoints": (DEFAULT_ENDPOINTS, "a comma-delimited list of etcd endpoints"),
    "etcd-prefix": (DEFAULT_PREFIX, "etcd prefix"),
    "etcd-keyfile": ("", "SSL key file used to secure etcd communication"),
    "etcd-certfile": ("", "SSL certification file used to secure etcd communication"),
    "etcd-cafile": ("", "SSL Certificate Authority file used to secure etcd communication"),
    "etcd-username": ("", "username for BasicAuth to etcd"),
    "etcd-password": ("", "password for BasicAuth to etcd"),
    "etcd-api": ("auto", "etcd API and keyspace: v2 (flanneld v0.10-v0.17), v3 (flanneld "
                 "v0.18+; the JSON gateway, /v3/), or auto: whichever holds the network "
                 "config, v3 when both hold the same one (flannel-tw)"),
    "subnet-file": (DEFAULT_SUBNET_FILE, "filename where env variables (subnet, MTU, ...) "
                    "will be written to"),
    "public-ip": ("", "IP accessible by other nodes for inter-host communication"),
    "public-ipv6": ("", "IPv6 accessible by other nodes for inter-host communication "
                    "(used when the network config has EnableIPv6)"),
    "subnet-lease-renew-margin": ("60", "subnet lease renewal margin, in minutes (1..1439)"),
    "healthz-ip": ("0.0.0.0", "the IP address for healthz server to listen"),
    "healthz-port": ("0", "the port for healthz server to listen (0 to disable)"),
    "v": ("0", "log level: 0 info, higher values add debug messages"),
    "metrics-port": ("0", "port for the Prometheus metrics endpoint (0 to disable; flannel-tw)"),
    "metrics-ip": ("0.0.0.0", "the IP address for the metrics endpoint to listen (flannel-tw)"),
    "log-format": ("text", "log format on stdout/the twistd log: text or json (flannel-tw)"),
    # a boolean that defaults to true (newer flanneld's flag): kept as text until validated
    "iptables-forward-rules": ("true", "add FORWARD accept rules for the flannel network "
                                       "(true/false)"),
}
_TRUE_BOOLS = {"iptables-forward-rules"}
_MULTI = {
    "iface": "interface to use (IP or name) for inter-host communication; repeatable",
    "iface-regex": "regex expression to match the first interface to use (IP or name) for "
                   "inter-host communication; repeatable",
}
_BOOLS = {
    "ip-masq": "setup IP masquerade rule for traffic destined outside of overlay network",
    "kube-subnet-mgr": "contact the Kubernetes API for subnet assignment (not supported: "
                       "flannel-tw uses etcd)",
}
_LONG_NAMES = set(_PARAMS) | set(_MULTI) | set(_BOOLS) | {"version", "help"}


EX_USAGE = 64   # sysexits.h: a bad flag or value; the unit has RestartPreventExitStatus=64


def usage_exit(prog, error, stderr=None):
    """
    Print C{prog: error} and a pointer to C{twistd flannel --help} on stderr and exit
    with L{EX_USAGE} (for C{twistd flannel} and the .tac files).
    """
    stderr = stderr or sys.stderr
    stderr.write("%s: %s\nRun 'twistd flannel --help' for the flags and their FLANNELD_* "
                 "variables.\n" % (prog, error))
    stderr.flush()
    raise SystemExit(EX_USAGE)


def _env_name(flag):
    return ENV_PREFIX + flag.upper().replace("-", "_")


def normalize_argv(argv):
    """
    Go flag syntax -> getopt syntax: ``-etcd-prefix=x`` becomes ``--etcd-prefix=x``,
    glog's ``-v=N``/``--v=N``/``--v N`` become ``-v N``,
    ``--ip-masq=true`` becomes ``--ip-masq`` and ``--ip-masq=false`` is dropped (its
    name is returned in the second value so that the environment does not set it).
    """
    out, cleared = [], set()
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg in ("--v", "-v") or arg.startswith(("--v=", "-v=")):
            # glog's -v: getopt would take "--v" for a prefix of --version, "-v=10" as "=10"
            out.extend(["-v"] + arg.split("=", 1)[1:])
            continue
        if arg.startswith("-") and not arg.startswith("--"):
            name = arg[1:].split("=", 1)[0]
            if name in _LONG_NAMES and len(name) > 1:
                arg = "-" + arg
        if arg[2:] in _TRUE_BOOLS:            # a bare Go bool flag means true
            arg += "=true"
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            if name in _BOOLS:
                if value in _BOOL_TRUE:
                    arg = "--" + name
                elif value in _BOOL_FALSE:
                    cleared.add(name)
                    continue
                else:
                    raise usage.UsageError("invalid boolean value %r for flag --%s" % (value, name))
        out.append(arg)
    return out, cleared


class Options(usage.Options):
    """The ``twistd flannel`` options."""

    synopsis = "[flannel options]"
    longdesc = ("Run the flannel overlay network daemon (flanneld-compatible). Every flag can "
                "also be given as FLANNELD_<FLAG> in the environment, e.g. "
                "FLANNELD_ETCD_ENDPOINTS. Verbosity: -v=N or --v=N (or FLANNELD_V), 0 (the "
                "default) logs info and up, 1..10 adds debug messages.")

    def __init__(self, environ=None):
        usage.Options.__init__(self)
        self.environ = os.environ if environ is None else environ
        self._given = set()
        self.from_env = {}
        #: texts of settings accepted but insecure or unused (see _insecure_settings)
        self.warnings = []
        for name, (default, _) in _PARAMS.items():
            self[name] = default
        for name in _MULTI:
            self[name] = []
        for name in _BOOLS:
            self[name] = False

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        try:
            options, cleared = normalize_argv(list(options))
            self._given |= cleared
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd (our parent is its ServerOptions), which would print the whole
            # --help and exit 1: a unit with Restart=always would loop on a bad flag.
            usage_exit("twistd flannel", e)

    def _set(self, name, value):
        self._given.add(name)
        self[name] = value

    def opt_version(self):
        """Print the version and exit."""
        sys.stderr.write("flannel-tw %s\n" % flannel_tw.__version__)
        sys.stderr.flush()
        raise SystemExit(0)

    def opt_iface(self, value):
        """interface to use (IP or name) for inter-host communication; repeatable"""
        self._given.add("iface")
        self["iface"].append(value)

    def opt_iface_regex(self, value):
        """regex expression to match the first interface to use (IP or name); repeatable"""
        self._given.add("iface-regex")
        self["iface-regex"].append(value)

    def opt_ip_masq(self):
        """setup IP masquerade rule for traffic destined outside of overlay network"""
        self._set("ip-masq", True)

    def opt_kube_subnet_mgr(self):
        """contact the Kubernetes API for subnet assignment (not supported here)"""
        self._set("kube-subnet-mgr", True)

    def postOptions(self):
        self._apply_environment()
        self._validate()

    def _apply_environment(self):
        for name in list(_PARAMS) + list(_MULTI) + list(_BOOLS):
            env = _env_name(name)
            if name in self._given or env not in self.environ:
                continue
            value = self.environ[env]
            if name in _MULTI:
                self[name] = [value] if value else []
            elif name in _BOOLS:
                if value in _BOOL_TRUE:
                    self[name] = True
                elif value in _BOOL_FALSE or value == "":
                    self[name] = False
                else:
                    raise usage.UsageError("invalid boolean value %r in %s" % (value, env))
            else:
                self[name] = value
            self.from_env[name] = env

    def _where(self, name):
        env = self.from_env.get(name)
        return env if env else "--" + name

    def _int(self, name, low, high):
        raw = self[name]
        try:
            value = int(str(raw).strip(), 10)
        except ValueError:
            raise usage.UsageError("%s: %r is not an integer" % (self._where(name), raw))
        if not low <= value <= high:
            raise usage.UsageError("%s: %d is out of range %d..%d"
                                   % (self._where(name), value, low, high))
        return value

    def _validate(self):
        if self["kube-subnet-mgr"]:
            raise usage.UsageError("%s: the Kubernetes subnet manager is not supported by "
                                   "flannel-tw; use etcd" % self._where("kube-subnet-mgr"))
        margin_raw = self["subnet-lease-renew-margin"]
        try:
            margin = int(str(margin_raw), 10)
        except ValueError:
            raise usage.UsageError("%s: %r is not an integer"
                                   % (self._where("subnet-lease-renew-margin"), margin_raw))
        if not 1 <= margin <= 1439:
            raise usage.UsageError("Invalid subnet-lease-renew-margin option, out of acceptable "
                                   "range (%s=%d; must be 1..1439 minutes)"
                                   % (self._where("subnet-lease-renew-margin"), margin))
        self["subnet-lease-renew-margin"] = margin
        self["healthz-port"] = self._int("healthz-port", 0, 65535)
        self["v"] = self._int("v", 0, 10)
        self["metrics-port"] = self._int("metrics-port", 0, 65535)
        for name in _TRUE_BOOLS:
            raw = self[name]
            if isinstance(raw, str):
                if raw in _BOOL_TRUE:
                    self[name] = True
                elif raw in _BOOL_FALSE:
                    self[name] = False
                else:
                    raise usage.UsageError("%s: invalid boolean value %r"
                                           % (self._where(name), raw))
        if self["etcd-api"] not in ("auto", "v2", "v3"):
            raise usage.UsageError("%s: %r is not auto, v2 or v3"
                                   % (self._where("etcd-api"), self["etcd-api"]))
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("%s: %r is not one of text, json"
                                   % (self._where("log-format"), self["log-format"]))
        for name in ("healthz-ip", "public-ip", "metrics-ip"):
            if self[name]:
                try:
                    IPv4Address(self[name])
                except (AddressValueError, ValueError):
                    raise usage.UsageError("%s: %r is not an IPv4 address"
                                           % (self._where(name), self[name]))
        if self["public-ipv6"]:
            try:
                if "%" in self["public-ipv6"]:      # a scope (zone): Go's ParseIP has none
                    raise ValueError(self["public-ipv6"])
                public6 = IPv6Address(self["public-ipv6"])
            except (AddressValueError, ValueError):
                raise usage.UsageError("%s: %r is not an IPv6 address"
                                       % (self._where("public-ipv6"), self["public-ipv6"]))
            from flannel_tw.model.leasecheck import public_ipv6_problem
            why = public_ipv6_problem(public6)
            if why is not None:     # every peer would skip the v6 part of our lease
                raise usage.UsageError("%s: %s is %s, not an address other hosts can send "
                                       "to" % (self._where("public-ipv6"),
                                               self["public-ipv6"], why))
        endpoints = [e.strip() for e in self["etcd-endpoints"].split(",") if e.strip()]
        if not endpoints:
            raise usage.UsageError("%s: no etcd endpoint given" % self._where("etcd-endpoints"))
        for ep in endpoints:
            parts = urlsplit(ep)
            try:
                parts.port
            except ValueError:
                parts = None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise usage.UsageError("%s: %r is not an http:// or https:// URL"
                                       % (self._where("etcd-endpoints"), ep))
        self["etcd-endpoints"] = endpoints
        prefix = self["etcd-prefix"]
        if not prefix.startswith("/"):
            raise usage.UsageError("%s: %r must start with /" % (self._where("etcd-prefix"), prefix))
        for pattern in self["iface-regex"]:
            try:
                re.compile(pattern)
            except re.error as e:
                raise usage.UsageError("%s: bad regular expression %r: %s"
                                       % (self._where("iface-regex"), pattern, e))
        for name in ("etcd-keyfile", "etcd-certfile", "etcd-cafile"):
            if self[name] and not os.path.isfile(self[name]):
                raise usage.UsageError("%s: file %r does not exist" % (self._where(name), self[name]))
        for given, other in (("etcd-keyfile", "etcd-certfile"), ("etcd-certfile", "etcd-keyfile")):
            if self[given] and not self[other]:
                raise usage.UsageError("%s given without --%s: a client certificate needs "
                                       "both the certificate and its key"
                                       % (self._where(given), other))
        if self["etcd-password"] and not self["etcd-username"]:
            raise usage.UsageError("--etcd-password given without --etcd-username")
        self.warnings = self._insecure_settings(endpoints)
        if not self["subnet-file"]:
            raise usage.UsageError("%s: must not be empty" % self._where("subnet-file"))

    def _insecure_settings(self, endpoints):
        """
        Settings that are accepted but do not do what they say, as warning texts (the
        daemon logs each once at start-up): basic auth towards http:// endpoints (the
        password travels in clear), TLS files with http:// endpoints (not used for them).
        """
        warnings = []
        plain = [ep for ep in endpoints if urlsplit(ep).scheme == "http"]
        if self["etcd-username"] and plain:
            warnings.append(
                "%s: etcd basic auth over http://, password sent in clear to %s; use "
                "https:// endpoints" % (self._where("etcd-username"), ", ".join(plain)))
        tls = [self._where(n) for n in ("etcd-cafile", "etcd-certfile", "etcd-keyfile")
               if self[n]]
        if tls and plain:
            if len(plain) == len(endpoints):
                warnings.append("%s unused: every etcd endpoint is http:// (TLS needs "
                                "https://)" % ", ".join(tls))
            else:
                warnings.append("%s not used for %s (TLS needs https://)"
                                % (", ".join(tls), ", ".join(plain)))
        return warnings


def _param_method(name, default, doc):
    def opt(self, value):
        self._set(name, value)
    opt.__doc__ = "%s [default: %s]" % (doc, default or '""')
    return opt


def _add_param_methods():
    for name, (default, doc) in _PARAMS.items():
        setattr(Options, "opt_" + name.replace("-", "_"), _param_method(name, default, doc))


_add_param_methods()
Options.opt_h = Options.opt_help


def makeService(options, reactor=None):
    """The daemon as an IService for twistd, built by L{flannel_tw.wiring.build_daemon}."""
    if reactor is None:
        from twisted.internet import reactor
    from flannel_tw.wiring import build_daemon
    return build_daemon(options, reactor)
